"""Rank-0 side effects of a training run: wandb (offline unless WANDB_MODE=online), a plain
progress line for cluster logs (tqdm on a terminal), image panels written as PNGs next to the run,
every logged scalar appended to ``metrics.jsonl`` and drawn as ``loss_curves.png`` when the run
closes (a resumed run appends, so the curves span restarts). Every other rank gets the same
object doing nothing."""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("gaga.train")


class RunLogger:
    def __init__(self, enabled: bool, run_dir: Path, run_name: str, project: str, config: dict[str, Any],
                 total_steps: int, start_step: int, group: str | None = None) -> None:
        self.enabled = enabled
        self.run_dir = run_dir
        self.total_steps = total_steps
        self._wandb = None
        self._bar = None
        if not enabled:
            return
        run_dir.mkdir(parents=True, exist_ok=True)
        try:
            import wandb

            os.environ.setdefault("WANDB_MODE", "offline")
            os.environ.setdefault("WANDB_SILENT", "true")
            self._wandb = wandb.init(project=project, name=run_name, id=run_name, resume="allow", group=group,
                                     dir=str(run_dir), config=config, reinit="finish_previous")
        except Exception as exc:  # logging must never stop training
            log.warning("wandb unavailable (%s); logging to stdout only", exc)
        if sys.stdout.isatty():
            from tqdm import tqdm

            self._bar = tqdm(total=total_steps, initial=start_step, desc=run_name, dynamic_ncols=True)

    @property
    def metrics_path(self) -> Path:
        return self.run_dir / METRICS_FILE

    def log(self, step: int, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        append_line(self.metrics_path, json.dumps({"step": step, **metrics}))
        if self._wandb is not None:
            self._wandb.log(metrics, step=step)
        if self._bar is not None:
            self._bar.n = step
            self._bar.set_postfix(loss=f"{metrics.get('loss/total', float('nan')):.4f}",
                                  pairs_s=f"{metrics.get('perf/pairs_per_s', 0):.1f}")
        else:
            # a log record, not print(): Ray Train forwards a worker's stdout twice, its records once
            log.info(progress_line(step, self.total_steps, metrics))

    def log_image(self, step: int, name: str, image: np.ndarray, caption: str = "") -> Path | None:
        """Write ``image`` (H×W×3 uint8) as ``<run_dir>/images/<name>_<step>.png`` and to wandb."""
        if not self.enabled:
            return None
        from PIL import Image

        path = self.run_dir / "images" / f"{name}_{step:07d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(path)
        if self._wandb is not None:
            import wandb

            self._wandb.log({f"images/{name}": wandb.Image(image, caption=caption)}, step=step)
        return path

    def summary(self, values: dict[str, Any]) -> None:
        if self.enabled and self._wandb is not None:
            self._wandb.summary.update(values)

    def close(self) -> None:
        if self.enabled and self.metrics_path.is_file():
            try:
                write_curves(self.metrics_path, self.run_dir / CURVES_FILE)
            except Exception as exc:  # a plot must never fail a finished run
                log.warning("could not draw %s: %s", CURVES_FILE, exc)
        if self._bar is not None:
            self._bar.close()
        if self._wandb is not None:
            self._wandb.finish()


METRICS_FILE = "metrics.jsonl"
CURVES_FILE = "loss_curves.png"


def append_line(path: Path, line: str) -> None:
    """Append one line so that the file never keeps half of it: one write call, and if it fails
    (disk full) the file is cut back to where it was. A torn tail left by an earlier crash is
    ended with a newline first, so the new line stays whole."""
    data = (line.rstrip("\n") + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        size = os.fstat(fd).st_size
        if size:
            with open(path, "rb") as fh:
                fh.seek(size - 1)
                if fh.read(1) != b"\n":
                    data = b"\n" + data
        try:
            if os.write(fd, data) != len(data):
                raise OSError("short write")
        except OSError:
            os.ftruncate(fd, size)
            raise
    finally:
        os.close(fd)


def read_history(path: Path) -> dict[str, list[tuple[int, float]]]:
    """metrics.jsonl → {metric: [(step, value), ...]} sorted by step; a step logged again after
    a restart keeps its last value. Lines that are not whole JSON objects (a tail torn by a crash
    or a full disk) are skipped with a warning."""
    by_step: dict[str, dict[int, float]] = {}
    for number, line in enumerate(Path(path).read_text(errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            step = int(row["step"])
        except (ValueError, KeyError, TypeError):
            log.warning("%s: line %d is not a whole record (torn by a crash?): skipped", path, number)
            continue
        for key, value in row.items():
            if key != "step" and isinstance(value, (int, float)) and math.isfinite(value):
                by_step.setdefault(key, {})[step] = float(value)
    return {k: sorted(v.items()) for k, v in by_step.items()}


def write_curves(metrics_path: Path, png_path: Path) -> Path:
    """Loss terms (log scale), each validation metric and the throughput against the step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    history = read_history(metrics_path)
    losses = [k for k in history if k.startswith("loss/") and any(v > 0 for _, v in history[k])]
    panels = [("losses", losses, "log")]
    panels += [(f"validation {k.split('/', 1)[1]}", [k], "linear") for k in history if k.startswith("val/")]
    panels.append(("throughput (pairs/s)", [k for k in history if k == "perf/pairs_per_s"], "linear"))
    panels = [p for p in panels if p[1]]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.4), squeeze=False)
    for ax, (title, keys, scale) in zip(axes[0], panels):
        for key in keys:
            steps, values = zip(*history[key])
            ax.plot(steps, values, marker="." if len(steps) < 30 else None, label=key.split("/", 1)[-1])
        ax.set_yscale(scale)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(png_path, dpi=90)
    plt.close(fig)
    return png_path


def progress_line(step: int, total: int, m: dict[str, float]) -> str:
    parts = [f"[{time.strftime('%H:%M:%S')}] step {step}/{total}"]
    if "loss/total" in m:
        parts.append(f"loss {m['loss/total']:.4f}")
    parts += [f"{k} {v:.4f}" for k, v in m.items() if k.startswith("val/")]
    for key, fmt in (("perf/pairs_per_s", "{:.2f} pairs/s"), ("perf/step_ms", "{:.0f} ms/step"),
                     ("perf/data_wait_frac", "data {:.0%}"), ("lr", "lr {:.2e}"), ("perf/peak_mem_gib", "mem {:.1f} GiB")):
        if key in m:
            parts.append(fmt.format(m[key]))
    return " | ".join(parts)

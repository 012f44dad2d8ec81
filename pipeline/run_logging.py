"""Rank-0 side effects of a training run: wandb (offline unless WANDB_MODE=online), a plain
progress line for cluster logs (tqdm on a terminal), image panels written as PNGs next to the run.
Every other rank gets the same object doing nothing."""

from __future__ import annotations

import logging
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

    def log(self, step: int, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
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
        if self._bar is not None:
            self._bar.close()
        if self._wandb is not None:
            self._wandb.finish()


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

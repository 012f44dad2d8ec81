"""Ablation sweeps on Ray Tune: named cells of config overrides, each trained (the training job,
Ray Train) then evaluated (the evaluation job), results laid out like the paper's Table 3.

A spec (``pipeline/presets/sweeps/table3.yaml``, ``--spec table3``)::

    name: table3
    preset: smoke                  # every cell starts from this preset ...
    overrides: [train.steps=40]    # ... plus these, then its own overrides
    max_concurrent_trials: 1       # cells running at once (multi-GPU cells must not oversubscribe)
    storage_path: outputs/sweeps
    cells:
      full: {}
      one_plane: {model.lifting: one_plane}

Every cell resolves to a full ExperimentConfig before anything starts (an unknown key fails with
the valid ones). A cell's name is its key: run name ``<sweep>-<cell>``, storage folder, wandb
group ``<sweep>`` and table row. Finished cells leave ``<storage>/<sweep>/cells/<cell>.json``;
rerunning the sweep skips them, and an interrupted cell's training resumes from its checkpoint
(same run name). A failing cell is recorded and the others go on.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from . import storage
from .config import ExperimentConfig, load_config
from .configtools import PRESET_DIR, ConfigError, from_dict, to_dict
from .configtools import replace as replace_config
from .run_files import absolute_storage

log = logging.getLogger("gaga.sweep")


@dataclass(frozen=True)
class SweepSpec:
    name: str
    cells: dict[str, dict[str, Any]]
    preset: str = "smoke"
    overrides: tuple[str, ...] = ()
    max_concurrent_trials: int = 1
    storage_path: str = "outputs/sweeps"
    paper_table: str = "table3"  # which paper table the rows are compared with
    cpus_per_trial: float = 0.01  # the trial driver itself (Tune needs a non-empty bundle); its training workers ask for their own
    description: str = ""


@dataclass
class Cell:
    name: str
    overrides: list[str]  # "key=value", sweep-wide first
    config: ExperimentConfig = field(repr=False)

    @property
    def run_name(self) -> str:
        return self.config.train.run_name


def _format(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def spec_path(spec: str | Path) -> Path:
    """A sweep spec by name (``pipeline/presets/sweeps/<name>.yaml``, e.g. ``table3``) or path."""
    path = Path(spec)
    if not path.suffix:
        path = PRESET_DIR / "sweeps" / f"{spec}.yaml"
    if not path.is_file():
        names = sorted(p.stem for p in (PRESET_DIR / "sweeps").glob("*.yaml"))
        raise ConfigError(f"sweep spec {str(spec)!r} not found ({path}); specs: {', '.join(names)}")
    return path


def load_spec(spec: str | Path) -> SweepSpec:
    path = spec_path(spec)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from None
    if "name" not in data:
        data["name"] = Path(path).stem
    try:
        spec = from_dict(SweepSpec, data)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    if not spec.cells:
        raise ConfigError(f"{path}: no cells")
    return spec


def with_absolute_paths(spec: SweepSpec) -> SweepSpec:
    """Tune runs each trial in its own working directory: local paths must not be relative."""
    from dataclasses import replace

    return replace(spec, storage_path=absolute_storage(spec.storage_path))


def resolve_cells(spec: SweepSpec, extra: list[str] | None = None) -> list[Cell]:
    """Every cell's full config, checked before anything runs (ConfigError names the cell and key).
    Cells train into the sweep's storage (``<storage>/<sweep>-<cell>``); local data paths are made
    absolute."""
    cells = []
    for name, overrides in spec.cells.items():
        cell_overrides = [f"{k}={_format(v)}" for k, v in (overrides or {}).items()]
        texts = [*spec.overrides, *(extra or []), *cell_overrides,
                 f"train.run_name={spec.name}-{name}", f"name={spec.name}-{name}",
                 f"train.storage_path={absolute_storage(spec.storage_path)}"]
        try:
            cfg = load_config(spec.preset, texts)
        except ConfigError as exc:
            raise ConfigError(f"sweep {spec.name!r}, cell {name!r}: {exc}") from exc
        data = {f"data.{k}": absolute_storage(getattr(cfg.data, k)) for k in
                ("train_shards", "val_shards", "test_self_shards", "test_cross_shards")}
        cfg = replace_config(cfg, **data)
        cells.append(Cell(name, [*spec.overrides, *(extra or []), *cell_overrides], cfg))
    return cells


def _cell_result_url(spec: SweepSpec, cell: str) -> str:
    return storage.join(spec.storage_path, spec.name, "cells", f"{cell}.json")


def run_cell(cfg_dict: dict[str, Any], cell: str, sweep: str, result_url: str) -> dict[str, Any]:
    """Train then evaluate one cell (idempotent: a finished cell's stored result is returned)."""
    from .config import config_from_dict
    from .eval.run import run_evaluation
    from .train import run_training

    if storage.exists(result_url):
        return json.loads(storage.read_text(result_url))
    cfg = config_from_dict(cfg_dict)
    t0 = time.perf_counter()
    trained = run_training(cfg, group=sweep)
    t1 = time.perf_counter()
    report = run_evaluation(cfg, trained.checkpoint_path, output=storage.join(storage.parent(result_url), cell, "eval"))
    result = {
        "cell": cell, "run_name": trained.run_name, "checkpoint": trained.checkpoint_path,
        "self": report["self"], "cross": report["cross"], "warnings": report["warnings"],
        "train_seconds": t1 - t0, "eval_seconds": time.perf_counter() - t1,
        "train_metrics": {k: v for k, v in trained.metrics.items() if isinstance(v, (int, float))},
    }
    storage.write_text(result_url, json.dumps(result, indent=1, default=str))
    return result


def _trainable(config: dict[str, Any], sweep: str, configs: dict[str, dict], results: dict[str, str]) -> None:
    """The Tune function trainable: one grid point = one cell."""
    from ray import tune

    cell = config["cell"]
    try:
        result = run_cell(configs[cell], cell, sweep, results[cell])
        metrics = {"cell": cell, "status": "ok", **_flat(result)}
    except Exception as exc:  # a failed cell is reported; the sweep goes on
        log.exception("cell %s failed", cell)
        metrics = {"cell": cell, "status": "failed", "error": f"{type(exc).__name__}: {exc}"}
    tune.report(metrics)


def _flat(result: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for split in ("self", "cross"):
        for key, value in (result.get(split) or {}).items():
            if isinstance(value, (int, float)):
                out[f"{split}_{key}"] = value
    return out


def run_sweep(spec: SweepSpec, extra: list[str] | None = None) -> dict[str, Any]:
    """All cells on Ray Tune (on the connected cluster: the entry point runs ``ray.init``); writes
    table3.{md,csv,json} and bar charts; returns the table."""
    from ray import tune

    spec = with_absolute_paths(spec)
    cells = resolve_cells(spec, extra)
    results_urls = {c.name: _cell_result_url(spec, c.name) for c in cells}
    param_space = {"cell": tune.grid_search([c.name for c in cells])}
    experiment = f"{spec.name}-tune"
    storage_path, filesystem = storage.ray_storage(spec.storage_path)
    trainable = tune.with_parameters(_trainable, sweep=spec.name, configs={c.name: to_dict(c.config) for c in cells},
                                     results=results_urls)
    trainable = tune.with_resources(trainable, {"CPU": spec.cpus_per_trial})
    run_config = tune.RunConfig(name=experiment, storage_path=storage_path, storage_filesystem=filesystem)
    tune_config = tune.TuneConfig(max_concurrent_trials=spec.max_concurrent_trials)
    tuner = tune.Tuner(trainable, param_space=param_space, tune_config=tune_config, run_config=run_config)
    grid = tuner.fit()
    statuses = {}
    for result in grid:
        metrics = result.metrics or {}
        if "cell" in metrics:
            statuses[metrics["cell"]] = metrics
    rows = collect_rows(spec, cells, statuses)
    files = write_table(spec, rows)
    return {"rows": rows, "files": files}


def collect_rows(spec: SweepSpec, cells: list[Cell], statuses: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for cell in cells:
        url = _cell_result_url(spec, cell.name)
        row: dict[str, Any] = {"cell": cell.name, "overrides": " ".join(cell.overrides[len(spec.overrides):]) or "(none)"}
        if storage.exists(url):
            result = json.loads(storage.read_text(url))
            row.update(status="ok", **_flat(result), run_name=result["run_name"],
                       note="; ".join(result.get("warnings") or []))
        else:
            status = statuses.get(cell.name, {})
            row.update(status=status.get("status", "not run"), error=status.get("error", ""))
        rows.append(row)
    return rows


def write_table(spec: SweepSpec, rows: list[dict[str, Any]]) -> dict[str, str]:
    """table3.md / .csv / .json with the paper's rows beside ours, and one bar chart per metric."""
    from .eval import paper_results as paper
    from .eval.report import csv_text

    keys = list(paper.TABLE_KEYS)
    paper_rows = [{"cell": key, "name": v["name"], **{k: v.get(k) for k in keys}} for key, v in paper.TABLE3.items()]
    base = storage.join(spec.storage_path, spec.name)
    files = {}
    table = {"sweep": spec.name, "preset": spec.preset, "overrides": list(spec.overrides), "ours": rows,
             "paper": paper_rows, "paper_source": paper.SOURCE}
    files["json"] = storage.join(base, f"{spec.paper_table}.json")
    storage.write_text(files["json"], json.dumps(table, indent=1, default=str))
    files["csv"] = storage.join(base, f"{spec.paper_table}.csv")
    storage.write_text(files["csv"], csv_text([{**r, "source": "ours"} for r in rows] +
                                              [{**r, "source": "paper"} for r in paper_rows],
                                              ["source", "cell", *keys, "status", "overrides", "note"]))
    files["md"] = storage.join(base, f"{spec.paper_table}.md")
    storage.write_text(files["md"], markdown(spec, rows, paper_rows))
    for key in keys:
        png = bar_chart(key, rows, paper_rows)
        if png:
            files[f"chart_{key}"] = storage.join(base, "charts", f"{key}.png")
            storage.write_bytes(files[f"chart_{key}"], png)
    return files


def _cell_text(value: Any, key: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.2f}" if key.endswith(("psnr", "akd")) else f"{value:.3f}"


def markdown(spec: SweepSpec, rows: list[dict[str, Any]], paper_rows: list[dict[str, Any]]) -> str:
    from .eval import paper_results as paper

    keys = list(paper.TABLE_KEYS)
    head = "| | cell | " + " | ".join(paper.column_titles()) + " |"
    sep = "|---" * (len(keys) + 2) + "|"
    lines = [f"# {spec.name}: ablations (paper Table 3 layout)", "",
             f"Preset `{spec.preset}`, sweep overrides `{' '.join(spec.overrides) or '(none)'}`.", "",
             head, sep]
    for r in rows:
        values = " | ".join(_cell_text(r.get(k), k) for k in keys) if r["status"] == "ok" else f"{r['status']}: {r.get('error', '')}"
        lines.append(f"| ours | {r['cell']} | {values} |")
    for r in paper_rows:
        lines.append(f"| paper | {r['name']} | " + " | ".join(_cell_text(r.get(k), k) for k in keys) + " |")
    notes = sorted({r.get("note") for r in rows if r.get("note")})
    lines += ["", f"Paper rows: {paper.SOURCE}."]
    if notes:
        lines += ["", "**Our rows are not comparable with the paper's:** " + " / ".join(notes)]
    lines += ["", "| cell | overrides | run |", "|---|---|---|"]
    lines += [f"| {r['cell']} | `{r['overrides']}` | {r.get('run_name', '–')} |" for r in rows]
    return "\n".join(lines) + "\n"


def bar_chart(key: str, rows: list[dict[str, Any]], paper_rows: list[dict[str, Any]]) -> bytes | None:
    """One metric across cells, ours beside the paper's; None when no cell has a value."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["cell"] for r in rows]
    ours = [r.get(key) if r["status"] == "ok" else None for r in rows]
    if all(v is None for v in ours):
        return None
    by_cell = {r["cell"]: r.get(key) for r in paper_rows}
    theirs = [by_cell.get(n) for n in names]
    fig, ax = plt.subplots(figsize=(1.4 * len(names) + 2, 3.2))
    x = range(len(names))
    ax.bar([i - 0.2 for i in x], [v if v is not None else 0 for v in ours], 0.4, label="ours")
    ax.bar([i + 0.2 for i in x], [v if v is not None else 0 for v in theirs], 0.4, label="paper")
    ax.set_xticks(list(x), names, rotation=20, ha="right")
    ax.set_title(key.replace("_", " "))
    ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return buf.getvalue()


def dry_run(spec: SweepSpec, extra: list[str] | None = None) -> str:
    """The cells, their resolved overrides and run names, one per line (validates every cell)."""
    lines = [f"sweep {spec.name}: preset {spec.preset}, {len(spec.cells)} cells, "
             f"max_concurrent_trials {spec.max_concurrent_trials}, storage {spec.storage_path}"]
    for cell in resolve_cells(spec, extra):
        done = " (done)" if storage.exists(_cell_result_url(spec, cell.name)) else ""
        lines.append(f"  {cell.name:20s} run {cell.run_name:28s} {' '.join(cell.overrides) or '(none)'}{done}")
    return "\n".join(lines)

"""Evaluation job (paper Table 1): a Ray Data batch-inference pipeline over the test shards.

1. **index** (CPU tasks): every tar of the test_self / test_cross prefixes → (key, clips, frames);
   the driver picks the pairs (all, or ``eval.max_pairs_per_clip`` per clip) and the grid pairs.
2. **read** (CPU tasks, ``eval.cpus_per_reader``): the chosen samples, images still encoded.
3. **render** (actor pool, ``map_batches``; one GPU per actor when the cluster has GPUs):
   :class:`pipeline.eval.stages.RenderStage` — reconstruct each source once, render every pair
   (source shape + driver expression/jaw/eyes/camera).
4. **metrics** (CPU actor pool): :class:`pipeline.eval.stages.MetricStage` — alignment, PSNR,
   SSIM, LPIPS, CSIM, AED, APD, AKD per frame.
5. **report** (driver): aggregates, Table 1 beside the paper's rows, per-clip/per-frame CSVs,
   grid image; written next to the checkpoint (or ``eval.output_dir``) and to wandb (offline
   unless WANDB_MODE=online). Every output says which metric networks ran, which fell back, and
   when the model, its backbone or the FLAME are not the real thing.

Call :func:`run_evaluation` on a running Ray cluster (``pipeline.ray_cluster.ensure_ray``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from preprocessing.face_tools import require_face_tools

from .. import storage
from ..config import ExperimentConfig
from ..configtools import to_dict
from ..ray_data import configure_data_context
from . import paper_results as paper
from . import report as eval_report
from .checkpoints import CheckpointInfo, inspect_checkpoint
from .data import index_shard, read_selected, select_pairs
from .stages import MetricStage, RenderStage, metric_fallback_warnings, metric_network_names

log = logging.getLogger("gaga.eval")

RESULT_FILES = ("results.json", "results.csv", "results.md", "per_clip.csv", "per_frame.csv", "grid.png")


@dataclass(frozen=True)
class Pools:
    render_actors: int
    render_gpus: float
    render_cpus: float
    metric_actors: int
    metric_cpus: float
    reader_cpus: float


def eval_pools(cfg: ExperimentConfig, cluster: dict[str, float], pairs: int) -> Pools:
    """Render actors: one per GPU (or ``eval.render_actors``), one on a CPU-only cluster; metric
    actors: the CPUs left after one reader and the renderers (at least one), never more than pairs."""
    ev = cfg.eval
    gpus, cpus = float(cluster.get("GPU", 0)), float(cluster.get("CPU", 1))
    render = max(1, min(ev.render_actors or (max(1, int(gpus)) if gpus >= 1 else 1), pairs))
    left = cpus - render * ev.cpus_per_render_actor - ev.cpus_per_reader
    metric = max(1, min(ev.metric_actors or max(1, int(left / ev.cpus_per_metric_actor + 1e-9)), pairs))
    render_cpus, metric_cpus, reader_cpus = ev.cpus_per_render_actor, ev.cpus_per_metric_actor, ev.cpus_per_reader
    # on a small cluster the minimum pools may ask for more CPUs than exist: every actor would
    # then hold its CPU while the reader waits for one forever. Shrink the (logical) reservations.
    wanted = render * render_cpus + metric * metric_cpus + reader_cpus
    if wanted > cpus:
        scale = cpus / wanted
        render_cpus, metric_cpus, reader_cpus = render_cpus * scale, metric_cpus * scale, reader_cpus * scale
    return Pools(render_actors=render, render_gpus=1.0 if gpus >= 1 else 0.0, render_cpus=render_cpus,
                 metric_actors=metric, metric_cpus=metric_cpus, reader_cpus=reader_cpus)


def default_output(info: CheckpointInfo) -> str:
    """``<checkpoint dir>/eval`` for ours, ``<folder>/eval_<stem>`` beside a released file."""
    if info.kind == "ours":
        return storage.join(info.path, "eval")
    stem = storage.basename(info.path).rsplit(".", 1)[0]
    return storage.join(storage.parent(info.path), f"eval_{stem}")


def evaluate_rows(cfg: ExperimentConfig, checkpoint: str, splits: dict[str, str]) -> tuple[list[dict[str, Any]], dict]:
    """Stages 1–4 on the current Ray cluster: {"self"|"cross": shard prefix} → per-frame metric
    rows (with grid panels) and run facts (pairs, pools, shards)."""
    import ray

    options = storage.S3Options.from_env()
    configure_data_context(cfg.eval.progress_bars)
    shards = {split: storage.list_urls(prefix, suffix=".tar", options=options) for split, prefix in splits.items() if prefix}
    for split, urls in shards.items():
        if not urls:
            raise FileNotFoundError(f"test_{split} shards: no .tar files under {splits[split]!r}")
    if not shards:
        raise ValueError("no test shards: pass --shards <test_self prefix>,<test_cross prefix> "
                         "(or set data.test_self_shards / data.test_cross_shards)")
    items = [{"url": u, "split": s} for s, urls in sorted(shards.items()) for u in urls]
    index = ray.data.from_items(items, override_num_blocks=len(items)).flat_map(
        index_shard, fn_kwargs={"options": options}, num_cpus=cfg.eval.cpus_per_reader).take_all()
    skipped = [{"shard": r["url"], "key": r["key"], "problem": r["error"]} for r in index if r.get("error")]
    for item in skipped:  # the same policy as training: skipped, named, counted (docs/reliability.md)
        log.warning("skipped in evaluation: %s", item["problem"])
    index = [r for r in index if not r.get("error")]
    chosen, pairs = select_pairs(index, cfg.eval.max_pairs_per_clip, cfg.eval.grid_pairs)
    if pairs == 0:
        raise ValueError(f"the test shards hold no pairs: {sorted(splits.values())}")
    pools = eval_pools(cfg, ray.available_resources(), pairs)  # e.g. a sweep trial already holds some
    log.info("evaluating %d of %d pairs from %d shards; pools %s", pairs, len(index), len(items), pools)
    read_items = [{"url": it["url"], "split": it["split"], "keys": json.dumps(chosen[it["url"]])}
                  for it in items if chosen.get(it["url"])]
    ds = ray.data.from_items(read_items, override_num_blocks=len(read_items))
    ds = ds.flat_map(read_selected, fn_kwargs={"options": options}, num_cpus=pools.reader_cpus)
    ds = ds.map_batches(
        RenderStage, fn_constructor_kwargs={"cfg": cfg, "checkpoint": checkpoint, "cpus": pools.render_cpus,
                                            "use_gpu": pools.render_gpus > 0},
        batch_size=cfg.eval.batch_size, batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=pools.render_actors),
        num_gpus=pools.render_gpus or None, num_cpus=pools.render_cpus)
    ds = ds.map_batches(
        MetricStage, fn_constructor_kwargs={"cfg": cfg, "checkpoint": checkpoint, "cpus": pools.metric_cpus},
        batch_size=1, batch_format="numpy", compute=ray.data.ActorPoolStrategy(min_size=1, max_size=pools.metric_actors),
        num_cpus=pools.metric_cpus)
    rows = ds.take_all()
    rows.sort(key=lambda r: (r["split"] != "self", str(r["key"])))
    facts = {"pairs": pairs, "pairs_in_shards": len(index), "pools": dataclasses.asdict(pools), "skipped": skipped,
             "shards": {s: len(u) for s, u in shards.items()},
             "device": ", ".join(sorted({str(r["render_device"]) for r in rows}))}
    return rows, facts


def _plain(value: Any) -> Any:
    """numpy scalars → Python, NaN → None (JSON and CSV friendly)."""
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def build_report(cfg: ExperimentConfig, info: CheckpointInfo, rows: list[dict[str, Any]], facts: dict,
                 seconds: float) -> dict[str, Any]:
    frames = [{c: _plain(r.get(c)) for c in eval_report.FRAME_COLUMNS} for r in rows]
    for f in frames:  # MetricStage sends 1/0/NaN (not analysed) through Ray Data
        f["source_face"] = None if f.get("source_face") is None else bool(f["source_face"])
    aggregates = eval_report.aggregate(frames)
    warnings = list(info.warnings) + metric_fallback_warnings(cfg) + eval_report.scoring_warnings(aggregates)
    data_flames = sorted({str(r.get("flame", "unknown")) for r in rows})
    if any("generated" in f or "stand-in" in f for f in data_flames):
        warnings.append(f"the test data was tracked with the generated stand-in head ({', '.join(data_flames)})")
    model_flame = info.config.flame.path or "generated stand-in head"
    if len(data_flames) == 1 and data_flames[0] != "unknown" and Path(model_flame).name not in data_flames[0] \
            and not ("generated" in model_flame and "generated" in data_flames[0]):
        warnings.append(f"the test data's FLAME ({data_flames[0]}) differs from the model's ({model_flame})")
    label = f"ours ({info.kind}" + (f", step {info.step:,}" if info.step is not None else "") + ")"
    n = max(len(rows), 1)
    report = {
        "title": "GAGAvatar re-implementation — the paper's Table 1 protocol",
        "checkpoint": info.summary(),
        "warnings": warnings,
        "metric_networks": metric_network_names(cfg),
        "aggregates": aggregates,
        "self": {m: aggregates.get("self", {}).get(m) for m in eval_report.SPLIT_METRICS["self"]},
        "cross": {m: aggregates.get("cross", {}).get(m) for m in eval_report.SPLIT_METRICS["cross"]},
        "table1": eval_report.table1(aggregates, label, warnings),
        "table1_source": paper.SOURCE,
        "per_clip": eval_report.per_clip(frames),
        "data_flame": data_flames,
        "device": facts.get("device"),
        "run": facts,
        "timing": {"seconds": seconds, "pairs_per_s": len(rows) / max(seconds, 1e-9),
                   "render_ms_per_pair": sum(float(r["render_ms"]) for r in rows) / n,
                   "metric_ms_per_pair": sum(float(r["metric_ms"]) for r in rows) / n},
        "eval_config": to_dict(cfg.eval),
    }
    report["_frames"] = frames
    return report


def _grid_header(warnings: list[str]) -> str:
    """The warnings, shortened to their first clause, for the top of grid.png."""
    if not warnings:
        return ""
    short = [w.split(" (")[0].split(":")[0].split(" — ")[0].strip() for w in warnings]
    return f"NOT comparable with the paper (details in results.md): {'; '.join(short)}"


def write_outputs(report: dict[str, Any], rows: list[dict[str, Any]], output: str) -> dict[str, str]:
    """The result files under ``output`` (local folder or s3://); returns name → URL."""
    frames = report.pop("_frames")
    panels = [(f"{r['split']}: {r['key']}", bytes(r["panel"])) for r in rows if r.get("panel") is not None and len(r["panel"])]
    files = {
        "results.json": json.dumps(report, indent=1, default=_plain).encode(),
        "results.csv": eval_report.table1_csv(report["table1"]).encode(),
        "results.md": eval_report.markdown(report).encode(),
        "per_clip.csv": eval_report.csv_text(report["per_clip"], ["split", "source_clip", "target_clip", "pairs",
                                                                   *eval_report.NUMBERS, "result_face_detected"]).encode(),
        "per_frame.csv": eval_report.csv_text(frames, eval_report.FRAME_COLUMNS).encode(),
        "grid.png": eval_report.grid_png(panels, _grid_header(report["warnings"])),
    }
    urls = {}
    for name, data in files.items():
        urls[name] = storage.join(output, name)
        storage.write_bytes(urls[name], data)
    return urls


def log_wandb(cfg: ExperimentConfig, report: dict[str, Any], grid: bytes, local_dir: Path) -> str | None:
    """One wandb run (offline unless WANDB_MODE=online) with the aggregates, the tables and the
    grid; returns its local directory, or None when disabled or unavailable (never fails the job)."""
    import os

    if not cfg.eval.wandb_project:
        return None
    try:
        import io

        import numpy as np
        import wandb
        from PIL import Image

        os.environ.setdefault("WANDB_MODE", "offline")
        os.environ.setdefault("WANDB_SILENT", "true")
        local_dir.mkdir(parents=True, exist_ok=True)
        name = f"eval-{report['checkpoint'].get('run_name') or storage.basename(report['checkpoint']['path'])}"
        run = wandb.init(project=cfg.eval.wandb_project, name=name, job_type="eval", dir=str(local_dir),
                         config={"eval": report["eval_config"], "checkpoint": report["checkpoint"],
                                 "metric_networks": report["metric_networks"], "warnings": report["warnings"]},
                         reinit="finish_previous")
        flat = {f"{split}/{k}": v for split in ("self", "cross") for k, v in report[split].items() if v is not None}
        columns = ["method", *paper.TABLE_KEYS]
        table = wandb.Table(columns=columns, data=[[r.get(c) for c in columns] for r in report["table1"]])
        with Image.open(io.BytesIO(grid)) as img:
            grid_image = wandb.Image(np.asarray(img.convert("RGB")), caption="source | driver | result")
        run.log({**flat, "table1": table, "grid": grid_image})
        run.summary.update({**flat, "warnings": " | ".join(report["warnings"])})
        directory = run.dir
        run.finish()
        return directory
    except Exception as exc:  # logging must never fail the evaluation
        log.warning("wandb logging skipped: %s", exc)
        return None


def require_eval_tools() -> None:
    """The face metrics' packages (the ``faces`` extra), or one line naming it (FaceToolsMissing)."""
    require_face_tools("gaga-eval's face metrics (CSIM, AED, APD, AKD)")


def run_evaluation(cfg: ExperimentConfig, checkpoint: str | None = None, self_shards: str | None = None,
                   cross_shards: str | None = None, output: str | None = None) -> dict[str, Any]:
    """The whole job; returns the report (aggregates, Table 1 rows, warnings, file URLs)."""
    require_eval_tools()
    t0 = time.perf_counter()
    checkpoint = checkpoint or cfg.eval.checkpoint
    info = inspect_checkpoint(checkpoint, cfg)
    splits = {"self": self_shards if self_shards is not None else cfg.data.test_self_shards,
              "cross": cross_shards if cross_shards is not None else cfg.data.test_cross_shards}
    rows, facts = evaluate_rows(cfg, info.path, splits)
    report = build_report(cfg, info, rows, facts, time.perf_counter() - t0)
    for warning in report["warnings"]:
        log.warning("NOT comparable with the paper: %s", warning)
    output = (output or cfg.eval.output_dir or default_output(info)).rstrip("/")
    files = write_outputs(report, rows, output)
    local = storage.local_path(output) if not storage.is_s3(output) else Path("outputs") / "eval" / storage.basename(output)
    report["wandb_dir"] = log_wandb(cfg, report, storage.read_bytes(files["grid.png"]), local)
    report["files"] = files
    report["timing"]["seconds"] = time.perf_counter() - t0
    log.info("evaluation done in %.1f s: %s", report["timing"]["seconds"], json.dumps({"self": report["self"],
                                                                                     "cross": report["cross"]}))
    return report

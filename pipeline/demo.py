"""The main job end to end on the embedded default, with the ``demo`` preset: generate a mini-VFHQ →
preprocess it with Ray Data into pair shards → train with Ray Train for a time budget → evaluate
(Table 1 layout) on the held-out identities → reenact a held-out identity through the reenactment
CLI path, as videos of source | driver | result.

Training length is a time budget, not a step count: a few plain training steps of the config are
timed first on the device the workers will use (the GPU when there is one), and ``train.steps``
and the learning-rate decay are set so that the steps fill the budget. A GPU thus trains longer in
the same time; a busy machine trains fewer steps rather than running late."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from preprocessing.face_tools import require_face_tools

from .config import ExperimentConfig, save_config
from .configtools import replace
from .images import label_strip, resized
from .run_logging import CURVES_FILE

log = logging.getLogger("gaga.demo")

DEFAULT_TRAIN_SECONDS = 360.0  # the demo's training budget: ~2,500 steps on 2 CPU cores, the whole demo in ~9 min
# step timing: untimed training steps first, then steps are timed for this many seconds (at least
# the minimum, at most the maximum count of steps). A step of a fresh model costs 2–3× a trained
# one's (its Gaussians start large and shrink within ~60 steps: 0.30 → 0.13 s on 2 CPU cores), so
# timing the first steps bought half the steps the budget had room for.
TIMING_WARMUP, TIMING_SECONDS, TIMING_STEPS = 60, 10.0, (5, 40)
TIMING_WARMUP_SECONDS = 20.0  # …but no longer than this, or than TIMING_WARMUP_SHARE of the training budget
# A fresh model's first ~50 steps cost 2–5× the later ones (128² on 2 cores: 1.0–1.6 s, then 0.34 s):
# a warm-up cut short inside them times those, and the budget buys a quarter of the steps it holds.
TIMING_WARMUP_SHARE = 0.25
TIMING_BATCHES = 16  # distinct batches the timing trains on (the first pairs of the shards)
STEP_QUANTUM = 50  # train.steps is a multiple of this (whole logging windows)
TILE = 256  # side of each panel of the reenactment videos, pixels
LABEL_HEIGHT = 16  # label strip above the panels (H.264 4:2:0 wants the frame height a multiple of 4)


def _stage(name: str, timings: dict[str, float], start: float) -> float:
    now = time.perf_counter()
    timings[name] = round(now - start, 1)
    log.info("demo: %s done in %.1f s", name, now - start)
    return now


# ----------------------------------------------------------------------------- training budget


def steps_for_budget(seconds: float, step_seconds: float, minimum: int = STEP_QUANTUM, maximum: int = 200_000) -> int:
    """Training steps that fit in ``seconds`` at ``step_seconds`` each: a multiple of
    STEP_QUANTUM, at least ``minimum`` and at most ``maximum``."""
    if seconds <= 0 or step_seconds <= 0:
        raise ValueError(f"need a positive budget and step time, got {seconds} s and {step_seconds} s/step")
    steps = int(seconds / step_seconds) // STEP_QUANTUM * STEP_QUANTUM
    return int(min(max(steps, minimum), maximum))


def warmup_seconds_for(train_seconds: float) -> float:
    """The step timing's warm-up limit for a training budget of ``train_seconds``."""
    return max(TIMING_WARMUP_SECONDS, TIMING_WARMUP_SHARE * train_seconds)


def with_step_count(cfg: ExperimentConfig, steps: int) -> ExperimentConfig:
    """``cfg`` trained for ``steps``: the learning rate decays over exactly those steps, and
    checkpoints, validation and image panels come at the middle and the end."""
    half = max(1, steps // 2)
    return replace(cfg, **{"train.steps": steps, "optim.decay_steps": steps, "train.checkpoint_every": half,
                           "train.val_every": half, "train.image_every": max(1, steps // 4)})


def time_training_steps(cfg: ExperimentConfig, train_shards: str, device: str, warmup: int = TIMING_WARMUP,
                        seconds: float = TIMING_SECONDS, steps: tuple[int, int] = TIMING_STEPS,
                        warmup_seconds: float = TIMING_WARMUP_SECONDS) -> float:
    """Seconds per training step of ``cfg`` on ``device`` ("cpu" | "cuda"): the median of the
    plain-loop steps (``pipeline.step.train_step``, on the first pairs of the shards) timed over
    ``seconds`` — at least ``steps[0]``, at most ``steps[1]`` of them — after ``warmup`` untimed
    ones (or as many as ``warmup_seconds`` allow), which train the model past its costly first
    steps. The median over a window, because on a shared machine single steps now and then take
    several times as long. On CPU with ``train.cpus_per_worker`` threads, as a Ray Train worker."""
    import torch

    from .data import collate_pairs
    from .shard_reader import read_pairs
    from .step import build_train_state, train_step

    threads = torch.get_num_threads()
    dev = torch.device(device)
    if dev.type == "cpu":
        torch.set_num_threads(max(1, min(cfg.train.cpus_per_worker, os.cpu_count() or 1)))
    try:
        torch.manual_seed(cfg.seed)
        state = build_train_state(cfg, dev)
        size = cfg.data.batch_size
        pairs = read_pairs(train_shards, limit=size * TIMING_BATCHES)
        batches = [collate_pairs(pairs[i:i + size]).to(dev) for i in range(0, len(pairs) - size + 1, size)]
        if not batches:
            raise ValueError(f"{train_shards}: {len(pairs)} pairs, fewer than one batch of {size} to time steps on")
        started = time.perf_counter()
        for i in range(warmup):
            train_step(state, batches[i % len(batches)])
            if time.perf_counter() - started > warmup_seconds:
                break
        times: list[float] = []
        window = time.perf_counter()
        while len(times) < steps[0] or (len(times) < steps[1] and time.perf_counter() - window < seconds):
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            start = time.perf_counter()
            train_step(state, batches[len(times) % len(batches)])
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            times.append(time.perf_counter() - start)
        return float(np.median(times))
    finally:
        torch.set_num_threads(threads)


# ----------------------------------------------------------------------------- videos


def _tiles(images: np.ndarray, size: int) -> np.ndarray:
    return np.stack([resized(i, size) for i in images])


def triptych_frames(source: np.ndarray, drivers: np.ndarray, results: np.ndarray, labels: list[str],
                    tile: int = TILE) -> np.ndarray:
    """source [S,S,3] and per frame drivers / results [K,S,S,3] (uint8) → [K, LABEL_HEIGHT + tile, 3·tile, 3]:
    source | driver | result side by side under a label strip (each panel resized to ``tile``)."""
    if len(drivers) != len(results):
        raise ValueError(f"{len(drivers)} driving frames but {len(results)} results")
    src = _tiles(source[None], tile)[0]
    panels = np.concatenate([np.broadcast_to(src, (len(results), tile, tile, 3)), _tiles(drivers, tile),
                             _tiles(results, tile)], axis=2)
    strip = np.broadcast_to(label_strip(3 * tile, labels, LABEL_HEIGHT), (len(results), LABEL_HEIGHT, 3 * tile, 3))
    return np.ascontiguousarray(np.concatenate([strip, panels], axis=1))


def reenact_triptych(cfg: ExperimentConfig, checkpoint: str, shards: str, source_clip: str, driver_clip: str,
                     out: Path, what: str) -> dict[str, Any]:
    """The held-out ``source_clip`` driven by ``driver_clip`` (tracked shards) through the
    reenactment CLI's function (``run_reenact``: result video + frames), then the same frames as
    source | driver | result (``out``, mp4) and a sheet of four of them (``out`` .png)."""
    from preprocessing.synthetic.video import write_video

    from .eval.stages import decode_image
    from .images import encode_png
    from .reenact import frames_from_shards, run_reenact

    result = run_reenact(cfg, checkpoint, shards, shards, str(out.with_name(out.stem + "_result.mp4")),
                         clip=driver_clip, source_clip=source_clip, side_by_side=False)
    results = np.stack([decode_image((Path(result["frames_dir"]) / f"{k:05d}.png").read_bytes())
                        for k in range(result["frames"])])
    driving = frames_from_shards(shards, driver_clip)
    source = frames_from_shards(shards, source_clip).images[0]
    labels = [f"source: {source_clip} (held out)", f"driver: {driver_clip} ({what})", "result"]
    frames = triptych_frames(source, driving.images, results, labels)
    write_video(frames, out, fps=max(1, round(driving.fps)))
    picks = np.linspace(0, len(frames) - 1, 4).round().astype(int)
    sheet = out.with_suffix(".png")
    sheet.write_bytes(encode_png(np.concatenate([frames[k] for k in picks], axis=0)))
    return {"video": str(out), "sheet": str(sheet), "frames": int(len(frames)), "result_video": result["video"],
            "result_frames": result["frames_dir"], "device": result["device"], "seconds": result["seconds"]}


# ----------------------------------------------------------------------------- the demo


def headline(report: dict[str, Any]) -> dict[str, Any]:
    """The numbers a newcomer looks at: every metric of both halves with the frames scored."""
    out: dict[str, Any] = {}
    for split in ("self", "cross"):
        agg = report.get("aggregates", {}).get(split, {})
        out[split] = {m: v for m, v in report.get(split, {}).items()}
        out[split]["frames"] = agg.get("pairs", 0)
        out[split]["scored"] = agg.get("scored", {})
    return out


def run_demo(cfg: ExperimentConfig, out_dir: str | Path = "outputs/demo",
             train_seconds: float = DEFAULT_TRAIN_SECONDS) -> dict[str, Any]:
    """Run every stage on the connected Ray cluster (the entry point runs ``ray.init``); returns
    (and writes to ``<out_dir>/demo.json``) where each output is, the headline numbers and each
    stage's seconds."""
    require_face_tools("gaga-demo's evaluation")  # before minutes of training, not after
    import torch

    from preprocessing.synthetic import ensure_dataset

    from .eval.run import run_evaluation
    from .preprocess import run_preprocess
    from .train import run_training

    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    load_start = os.getloadavg()
    t = time.perf_counter()
    dataset = ensure_dataset(cfg.synthetic)
    t = _stage("generate", timings, t)

    shards = out / "shards"
    preprocess = run_preprocess(cfg, str(dataset), str(shards))
    t = _stage("preprocess", timings, t)

    gpu = bool(cfg.train.use_gpu and torch.cuda.is_available())
    cfg = replace(cfg, **{"data.train_shards": str(shards / "train"), "data.test_self_shards": str(shards / "test_self"),
                          "data.test_cross_shards": str(shards / "test_cross"), "train.storage_path": str(out / "runs"),
                          "train.use_gpu": gpu})
    step_seconds = time_training_steps(cfg, str(shards / "train"), "cuda" if gpu else "cpu",
                                       warmup_seconds=warmup_seconds_for(train_seconds))
    steps = steps_for_budget(train_seconds, step_seconds)
    cfg = with_step_count(cfg, steps)
    log.info("demo: %.3f s per training step on %s: %d steps fill the %.0f s budget", step_seconds,
             "the GPU" if gpu else "CPU", steps, train_seconds)
    t = _stage("time_steps", timings, t)

    save_config(cfg, out / "config.yaml")
    trained = run_training(cfg)
    t = _stage("train", timings, t)

    report = run_evaluation(cfg, trained.checkpoint_path, output=str(out / "eval"))
    t = _stage("evaluate", timings, t)

    test_clips = sorted((dataset / "test.txt").read_text().split())
    source_clip, other_clip = test_clips[0], test_clips[1 % len(test_clips)]
    videos = {
        "self": reenact_triptych(cfg, trained.checkpoint_path, str(shards / "test_self"), source_clip, source_clip,
                                 out / "reenact" / f"{source_clip}_self.mp4", "its own later frames"),
        "cross": reenact_triptych(cfg, trained.checkpoint_path, str(shards / "test_self"), source_clip, other_clip,
                                  out / "reenact" / f"{other_clip}_drives_{source_clip}.mp4", "another held-out identity"),
    }
    _stage("reenact", timings, t)

    run_dir = Path(str(trained.run_dir))
    summary = {
        "dataset": str(dataset),
        "shards": str(shards), "manifest": str(shards / "manifest.jsonl"),
        "preprocess": {"clips": preprocess.get("status"), "truth": preprocess.get("truth")},
        "run": trained.run_name, "checkpoint": trained.checkpoint_path, "run_dir": str(run_dir),
        "loss_curves": str(run_dir / CURVES_FILE) if (run_dir / CURVES_FILE).is_file() else "(none)",
        "train": {"device": "cuda" if gpu else "cpu", "budget_s": train_seconds, "step_s_timed": round(step_seconds, 4),
                  "steps": steps, "loss": trained.metrics.get("loss/total"),
                  "val_psnr": trained.metrics.get("val/psnr")},
        "results": report["files"], "headline": headline(report), "warnings": report["warnings"],
        "reenactment_video": videos["self"]["video"], "cross_reenactment_video": videos["cross"]["video"],
        "reenactment_sheets": [videos["self"]["sheet"], videos["cross"]["sheet"]], "videos": videos,
        "seconds": {**timings, "total": round(sum(timings.values()), 1)},
        "load_avg_1_5_15": {"start": [round(x, 2) for x in load_start], "end": [round(x, 2) for x in os.getloadavg()]},
        "note": "generated stand-in FLAME head and data, a small model trained for minutes, random AlexNet for LPIPS, "
                "dlib's descriptor for CSIM: a demonstration of the pipeline, not the paper's numbers",
    }
    (out / "demo.json").write_text(json.dumps(summary, indent=1, default=str))
    return summary

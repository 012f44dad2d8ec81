"""Training throughput of the ``paper`` preset on one GPU: the released recipe vs our step, in a
plain loop and through Ray Train, each spread over repeated windows, plus torch.compile's warm-up
cold and from a saved compile cache.

    python -m bench.train --out bench/results/train_h200.json

Data: ground-truth pairs of generated talking-head clips at 512² (made on the machine, written as
WebDataset shards) streamed by the training loader (ShardPairSource + PrefetchingLoader), batch 8.
Every measurement is ``--windows`` windows of ``--window-steps`` steps after ``--warmup`` steps;
a window is timed from the host with one CUDA synchronisation at each end (the loop itself never
waits for the GPU, as in training). Reported: per-window pairs/s with median and min–max, the
first step (compilation) and warm-up seconds, and the GPU's clocks/temperature/power before and
after. The JSON is rewritten after every measurement (a run cut short keeps what it measured).

Measurements, in this order, each in a fresh process (variants measured one after another in
one process ran up to 12% slower on an H100):
1. the baselines named by ``--variants``: ``fp32_eager`` (the released recipe: fp32 with TF32
   matmuls, eager, no cuDNN autotuning, NCHW, nearest neighbours by chunked matmuls on the GPU —
   the released faiss-on-CPU search alone made its step 4.2 s); also ``bf16`` (eager bf16 with the
   other optimisations) and the diagnostics ``bf16_compile_nchw`` (without channels-last),
   ``bf16_compile_fused`` (the compiled-reduction search) and ``bf16_compile_no_graphs``
   (``train.compile_mode=default``: inductor's kernels launched one by one, not replayed from the
   CUDA graphs of the default ``reduce-overhead``);
2. ``bf16_compile`` (what ``gaga-train`` runs: bf16 autocast, torch.compile of the network's
   regions, channels-last convolutions, Triton nearest-point search, cuDNN autotuning) through
   ``TorchTrainer`` with one GPU worker and an empty inductor cache directory (``--no-ray``
   skips it): pairs/s of every logging window after the warm-up, from the run's metrics.jsonl;
   its warm-up windows hold the cold compilation;
3. the same step in a plain loop with the inductor cache directory the worker filled (its first
   step is the warm-cache compilation); it then saves the portable compile cache
   (bench._compile_cache);
4. unless ``--no-from-cache``: the plain loop again with a new empty inductor cache directory that
   first restores the saved file — the warm-up of a fresh machine whose run storage holds it.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from bench._pair_shards import make_shards
from bench._report import command_line, gpu_state, spread, write_report
from pipeline.config import ExperimentConfig, load_config
from pipeline.data import PrefetchingLoader
from pipeline.step import TrainState, build_train_state, compile_regions, train_step
from pipeline.train import make_source

TARGET_PAIRS_PER_S = {"H200": 65.0, "H100": 60.0}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# name → (precision, torch.compile of the network, nearest-neighbour search of the lifting loss
# (None: the config's default), cuDNN autotuning, channels-last convolution weights)
VARIANTS = {
    "fp32_eager": ("fp32", False, "chunked", False, False),
    "bf16": ("bf16", False, None, True, True),
    "bf16_compile": ("bf16", True, None, True, True),
    "bf16_compile_nchw": ("bf16", True, None, True, False),
    "bf16_compile_fused": ("bf16", True, "fused", True, True),
    "bf16_compile_no_graphs": ("bf16", True, None, True, True),
}
# variants compiled in another inductor mode than the config's (train.compile_mode)
COMPILE_MODES = {"bf16_compile_no_graphs": "default"}
DEFAULT_VARIANTS = "fp32_eager,bf16"


def variant_config(shards: str, variant: str, extra: list[str], preset: str = "paper") -> ExperimentConfig:
    precision, compile_, search, autotune, _ = VARIANTS[variant]
    overrides = [f"data.train_shards={shards}", f"train.precision={precision}", f"train.compile={str(compile_).lower()}",
                 f"train.cudnn_benchmark={str(autotune).lower()}", "data.num_workers=6"]
    if search is not None:
        overrides.append(f"loss.lifting_search={search}")
    if variant in COMPILE_MODES:
        overrides.append(f"train.compile_mode={COMPILE_MODES[variant]}")
    return load_config(preset, [*overrides, *extra])


def worker_like_setup(cfg: ExperimentConfig, device: torch.device,
                      channels_last: bool | None = None) -> tuple[TrainState, PrefetchingLoader]:
    """Rank 0 of the training worker without Ray: its seeds (initial weights, then the noise
    stream), compiled regions and data source (shard order from ``seed``). The step's cost depends
    on the Gaussians the network makes, so the plain loop and TorchTrainer must train the same
    model on the same batches to be compared."""
    torch.manual_seed(cfg.seed)
    state = build_train_state(cfg, device, channels_last=channels_last)
    torch.manual_seed(cfg.seed)  # train_loop_per_worker: seed + 1000 × rank
    if cfg.train.compile:
        compile_regions(state.network, mode=cfg.train.compile_mode)
    return state, PrefetchingLoader(make_source(cfg, 0, 1), cfg.data.batch_size, threads=cfg.data.num_workers)


def measure_loop(cfg: ExperimentConfig, steps: int, warmup: int, device: torch.device, windows: int = 1,
                 channels_last: bool | None = None, cache_dir: str | None = None,
                 restore_cache: str | None = None, save_cache: str | None = None) -> dict:
    """The plain training loop (no Ray), ``windows`` windows of ``steps`` steps after ``warmup``:
    pairs/s and step ms (medians; ``spread``: every window, min–max), the first step's and the
    warm-up's seconds, data-wait share, peak memory, GPU state before/after.

    ``cache_dir``: this process's inductor cache directory (set before anything compiles);
    ``restore_cache``/``save_cache``: a portable compile-cache file to load before the first
    step / write after the warm-up (bench._compile_cache)."""
    if cache_dir:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache_dir
        os.environ["TRITON_CACHE_DIR"] = os.path.join(cache_dir, "triton")
    from bench._compile_cache import CompileCache

    out: dict = {"gpu_before": gpu_state() if device.type == "cuda" else None}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    if restore_cache:
        out["cache_restore"] = vars(CompileCache(restore_cache).restore())
    state, loader = worker_like_setup(cfg, device, channels_last)
    t0 = time.perf_counter()
    train_step(state, next(loader).to(device))
    _sync(device)
    out["first_step_s"] = round(time.perf_counter() - t0, 2)
    for _ in range(warmup - 1):
        train_step(state, next(loader).to(device))
    _sync(device)
    out["warmup_s"] = round(time.perf_counter() - t0, 2)
    if save_cache:
        out["cache_save"] = vars(CompileCache(save_cache).save_if_new())
    rates, step_ms, waits = [], [], []
    for _ in range(windows):
        wait, start = 0.0, time.perf_counter()
        for _ in range(steps):  # no per-step sync: host work overlaps the GPU as in training
            t1 = time.perf_counter()
            batch = next(loader).to(device)
            wait += time.perf_counter() - t1
            losses, _ = train_step(state, batch)
        _sync(device)
        total = time.perf_counter() - start
        rates.append(cfg.data.batch_size * steps / total)
        step_ms.append(1000 * total / steps)
        waits.append(wait / total)
    loader.close()
    out.update({
        "pairs_per_s": statistics.median(rates), "step_ms": statistics.median(step_ms),
        "data_wait_frac": statistics.median(waits),
        "spread": {"pairs_per_s": spread(rates), "step_ms": spread(step_ms, 1), "data_wait_frac": spread(waits, 3)},
        "windows": windows, "window_steps": steps, "warmup_steps": warmup,
        "last_losses": {k: float(v) for k, v in losses.items()},
        "peak_mem_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if device.type == "cuda" else None,
        "gpu_after": gpu_state() if device.type == "cuda" else None,
    })
    return out


def isolated(fn, *args, **kwargs):
    """``fn(*args)`` in a fresh process. Variants measured one after another in one process ran
    slower (bf16_compile 37.2 pairs/s after fp32_eager and bf16, 42.1 alone, same H100): a
    training job runs one configuration, so each is measured alone."""
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(fn, args, kwargs)


def ray_windows(metrics_path: Path, warmup: int, steps: int) -> dict:
    """Per logging window of ``steps`` steps of a TorchTrainer run (its metrics.jsonl): pairs/s
    and step ms after the warm-up (medians; ``spread``: every window), and the seconds of the
    warm-up windows (compilation included)."""
    rows = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
    perf = [r for r in rows if "perf/pairs_per_s" in r]
    after = [r for r in perf if r["step"] > warmup]
    rates, step_ms = [r["perf/pairs_per_s"] for r in after], [r["perf/step_ms"] for r in after]
    waits = [r["perf/data_wait_frac"] for r in after]
    return {
        "pairs_per_s": statistics.median(rates), "step_ms": statistics.median(step_ms),
        "data_wait_frac": statistics.median(waits),
        "spread": {"pairs_per_s": spread(rates), "step_ms": spread(step_ms, 1), "data_wait_frac": spread(waits, 3)},
        "warmup_s": round(sum(r["perf/step_ms"] for r in perf if r["step"] <= warmup) * steps / 1000, 2),
        "peak_mem_gib": round(after[-1]["perf/peak_mem_gib"], 2) if "perf/peak_mem_gib" in after[-1] else None,
    }


def measure_ray(cfg: ExperimentConfig, steps: int, warmup: int, windows: int = 1,
                worker_env: dict[str, str] | None = None) -> dict:
    """Same step through TorchTrainer (1 GPU worker): every logging window of ``steps`` steps
    after the warm-up (``windows`` of them)."""
    from pipeline.configtools import replace
    from pipeline.ray_cluster import ensure_ray
    from pipeline.train import run_training

    ensure_ray()
    if warmup % steps:
        raise ValueError("--warmup must be a multiple of --window-steps (logging windows are measured)")
    storage = tempfile.mkdtemp(prefix="bench-ray-")
    total = warmup + windows * steps
    run_cfg = replace(cfg, **{"train.steps": total, "train.log_every": steps,
                              "train.checkpoint_every": total, "train.num_workers": 1, "train.use_gpu": True,
                              "train.storage_path": storage, "train.image_every": 0,
                              "train.val_every": 0, "train.run_name": "bench-ray"})
    # a GAGA_PROFILE_* window (pipeline.profiling) set here reaches the worker
    env = {k: v for k, v in os.environ.items() if k.startswith("GAGA_PROFILE_")}
    env.update(worker_env or {})
    before = gpu_state()
    t0 = time.perf_counter()
    result = run_training(run_cfg, worker_env=env or None)
    return {"fit_s": round(time.perf_counter() - t0, 1), "gpu_before": before, "gpu_after": gpu_state(),
            **ray_windows(Path(result.run_dir) / "metrics.jsonl", warmup, steps),
            "windows": windows, "window_steps": steps, "warmup_steps": warmup}


def _gpu_kind() -> str:
    name = torch.cuda.get_device_name() if torch.cuda.is_available() else ""
    return next((k for k in TARGET_PAIRS_PER_S if k in name), "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--windows", type=int, default=3)
    parser.add_argument("--window-steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--variants", default=DEFAULT_VARIANTS, help="baselines and diagnostics measured last")
    parser.add_argument("--no-compiled", action="store_true", help="skip 1–3 (compiled step, Ray, cache)")
    parser.add_argument("--no-ray", action="store_true")
    parser.add_argument("--no-from-cache", action="store_true", help="skip 3 (warm-up from the saved cache)")
    parser.add_argument("--preset", default="paper", help="config preset (smoke + --device cpu: a dry run of this script)")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--size", type=int, default=512, help="generated frame size")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--device-command", default="", help="the command as run on the device (recorded)")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("bench.train needs a CUDA GPU (or --device cpu --preset smoke for a dry run)")
    work = Path(tempfile.mkdtemp(prefix="bench-train-"))
    shards = make_shards(work / "shards", args.size)
    kind = _gpu_kind()
    report: dict = {
        "benchmark": "training step, paper preset, batch 8, 512², one GPU",
        "command": command_line("bench.train", sys.argv[1:]),
        "device_command": args.device_command,
        "gpu": f"one {torch.cuda.get_device_name()}" if device.type == "cuda" else "none (CPU dry run)",
        "preset": args.preset, "torch": torch.__version__, "python": platform.python_version(),
        "data": "ground-truth pairs of generated clips at 512², JPEG shards, streamed by the training loader",
        "timing": f"{args.windows} windows × {args.window_steps} steps after {args.warmup} warm-up steps, each "
                  "measurement in a fresh process; spread = median and min–max over the windows",
        "variants": {},
        "anchors_released_code": {"released_step_ms": 4160, "released_pairs_per_s": 1.92,
                                  "released_with_gpu_nn_step_ms": 542, "released_with_gpu_nn_pairs_per_s": 14.75},
        "target_pairs_per_s": TARGET_PAIRS_PER_S.get(kind),
    }
    save = lambda: write_report(report, args.out, echo=False)  # noqa: E731 - after every measurement
    steps = (args.window_steps, args.warmup)
    windows = args.windows

    def run(name: str, fn, *fargs, **fkwargs) -> None:
        try:
            report["variants"][name] = fn(*fargs, **fkwargs)
        except Exception as exc:  # one broken measurement is reported; the others still run
            report["variants"][name] = {"error": f"{type(exc).__name__}: {exc}"[:2000]}
        print(name, json.dumps(report["variants"][name], default=float), flush=True)
        save()

    for name in filter(None, args.variants.split(",")):  # the baselines first: cheap, and always measured
        channels_last = VARIANTS[name][4] and device.type == "cuda"
        run(name, isolated, measure_loop, variant_config(shards, name, args.overrides, args.preset), *steps,
            device, windows, channels_last=channels_last, cache_dir=str(work / f"inductor_{name}"))
    if not args.no_compiled:
        cfg = variant_config(shards, "bf16_compile", args.overrides, args.preset)
        cache_dir, cache_file = str(work / "inductor_local"), str(work / "torch_compile_cache.bin")
        if not args.no_ray:
            run("ray_train_1_worker", measure_ray, cfg, *steps, windows,
                worker_env={"TORCHINDUCTOR_CACHE_DIR": cache_dir, "TRITON_CACHE_DIR": os.path.join(cache_dir, "triton")})
            report["variants"]["ray_train_1_worker"]["inductor_cache"] = "cold (empty directory)"
        run("bf16_compile", isolated, measure_loop, cfg, *steps, device, windows, cache_dir=cache_dir,
            save_cache=cache_file)
        report["variants"]["bf16_compile"]["inductor_cache"] = (
            "the local cache directory the TorchTrainer worker filled" if not args.no_ray else "cold (empty directory)")
        if not args.no_from_cache:
            run("bf16_compile_from_cache", isolated, measure_loop, cfg, *steps, device, windows,
                cache_dir=str(work / "inductor_fresh"), restore_cache=cache_file)
            report["variants"]["bf16_compile_from_cache"]["inductor_cache"] = (
                "a new empty directory, filled from the portable cache file before the first step")
    summarize(report)
    write_report(report, args.out)


def _median(cell: dict | None) -> float | None:
    rate = (cell or {}).get("pairs_per_s")
    return round(rate, 2) if isinstance(rate, float) else None


def summarize(report: dict) -> None:
    """Ratios of medians against the fp32 eager baseline of the same run, and the target."""
    v = report["variants"]
    base = _median(v.get("fp32_eager"))
    rates = {k: _median(c) for k, c in v.items() if _median(c)}
    report["pairs_per_s_median"] = rates
    if base:
        report["speedup_vs_fp32_eager"] = {k: round(r / base, 2) for k, r in rates.items()}
    if rates.get("ray_train_1_worker") and rates.get("bf16_compile"):
        report["ray_vs_plain_loop"] = round(rates["ray_train_1_worker"] / rates["bf16_compile"], 3)
    warm = {k: v[k].get("first_step_s", v[k].get("warmup_s")) for k in
            ("ray_train_1_worker", "bf16_compile", "bf16_compile_from_cache") if k in v}
    report["compile_warmup_s"] = warm
    target = report.get("target_pairs_per_s")
    if target and rates.get("ray_train_1_worker"):
        report["met_target_through_torchtrainer"] = rates["ray_train_1_worker"] >= target


if __name__ == "__main__":
    main()

"""Multi-GPU scaling of training through Ray Train (DDP over NCCL).

    python -m bench.scaling --out bench/results/scaling_h200x8.json            # N = 1, 2, 4, 8 (what the machine has)
    python -m bench.scaling --workers 1,2 --out ...                            # chosen N
    python -m bench.scaling --device cpu --preset smoke --workers 1,2 --out outputs/scaling_cpu.json   # gloo dry run

The ``paper`` preset, bf16, compiled regions and the fused nearest-neighbour search (the optimised
step of bench/train.py), the same per-GPU batch (8) at every N (``data.batch_size = 8·N``), data
from ground-truth shards of generated clips made on the machine. Per N: pairs/s, step time, data-
wait share and peak memory of rank 0 (the training loop's own logging window after the warm-up),
the exposed all-reduce share ``1 − step(1)/step(N)`` (DDP overlaps the reduction with backward, so
only what is not hidden shows) and the scaling efficiency ``pairs/s(N) / (N · pairs/s(1))``.
NCCL's NVLink multicast stays off (NCCL_NVLS_ENABLE=0 etc.): on shared hosts it can take the GPUs
down (see the device notes).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
from pathlib import Path

import torch

NVLS_OFF = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}


def measure(shards: str, workers: int, per_gpu_batch: int, steps: int, warmup: int, preset: str, device: str,
            extra: list[str]) -> dict:
    from pipeline.config import load_config
    from pipeline.train import run_training

    gpu = device == "cuda"
    cfg = load_config(preset, [
        f"data.train_shards={shards}", f"data.batch_size={per_gpu_batch * workers}", f"train.num_workers={workers}",
        f"train.steps={warmup + steps}", f"train.log_every={steps}", f"train.checkpoint_every={warmup + steps}",
        f"train.use_gpu={str(gpu).lower()}", f"train.precision={'bf16' if gpu else 'fp32'}",
        f"train.compile={str(gpu).lower()}", "train.image_every=0", "train.val_every=0",
        f"train.storage_path={tempfile.mkdtemp(prefix='bench-scaling-')}", f"train.run_name=scaling-{workers}",
        *extra,
    ])
    result = run_training(cfg, worker_env=NVLS_OFF)
    perf = {k.removeprefix("perf/"): v for k, v in result.metrics.items() if k.startswith("perf/")}
    return {"workers": workers, "global_batch": per_gpu_batch * workers, **perf}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--workers", default="", help="comma-separated N (default: 1, 2, 4, 8 up to the GPU count)")
    parser.add_argument("--per-gpu-batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=20, help="a multiple of --steps (compile happens here)")
    parser.add_argument("--preset", default="paper")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    os.environ.update(NVLS_OFF)  # before Ray starts: every process it spawns inherits them
    gpus = torch.cuda.device_count() if args.device == "cuda" else 0
    if args.device == "cuda" and gpus == 0:
        sys.exit("bench.scaling needs CUDA GPUs (or --device cpu --preset smoke for a gloo dry run)")
    counts = [int(n) for n in args.workers.split(",")] if args.workers else [n for n in (1, 2, 4, 8) if n <= gpus]
    from bench._pair_shards import make_shards
    from bench._report import command_line, write_report

    shards = make_shards(Path(tempfile.mkdtemp(prefix="bench-shards-")), args.size, clips=4, pairs_per_clip=64)
    rows = [measure(shards, n, args.per_gpu_batch, args.steps, args.warmup, args.preset, args.device, args.overrides)
            for n in counts]
    base = next((r for r in rows if r["workers"] == 1), None)
    for r in rows:
        if base and "pairs_per_s" in r and "pairs_per_s" in base:
            r["efficiency"] = r["pairs_per_s"] / (r["workers"] * base["pairs_per_s"])
            r["exposed_allreduce_share"] = 1 - base["step_ms"] / r["step_ms"]
    report = {
        "benchmark": "DDP scaling through Ray Train, paper preset, same per-GPU batch",
        "command": command_line("bench.scaling", sys.argv[1:]),
        "gpus": [torch.cuda.get_device_name(i) for i in range(gpus)] or ["none (CPU gloo dry run)"],
        "torch": torch.__version__, "python": platform.python_version(), "nvls": "off",
        "preset": args.preset, "per_gpu_batch": args.per_gpu_batch, "steps": args.steps, "warmup": args.warmup,
        "results": rows, "targets": {"efficiency_2": 0.90, "efficiency_8": 0.85},
    }
    write_report(report, args.out)


if __name__ == "__main__":
    main()

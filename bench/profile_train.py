"""Where the GPU time of one training step goes: torch.profiler over a few steps of a bench.train
variant in the plain loop, GPU time per operator (forward ops and their autograd backward
nodes), top N as JSON, beside the variant's pairs/s from the loop bench.train times.

    python -m bench.profile_train --variant bf16_compile --out bench/results/train_profile_h100.json

Settings to compare go through ``--set`` (e.g. ``--set train.cudnn_benchmark=false``). The same
window inside a Ray Train run: ``GAGA_PROFILE_DIR`` (pipeline.profiling).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

from bench.report import write_report
from bench.train import VARIANTS, isolated, make_shards, measure_loop, variant_config, worker_like_setup
from pipeline.profiling import StepProfiler
from pipeline.step import train_step


def profile_loop(cfg, out_dir: str, steps: int, warmup: int) -> dict:
    device = torch.device("cuda")
    state, loader = worker_like_setup(cfg, device)
    profiler = StepProfiler(out_dir, 0, warmup, steps, on_gpu=True)
    for done in range(1, warmup + steps + 1):
        train_step(state, next(loader).to(device))
        profiler.after_step(done)
    loader.close()
    return json.loads((Path(out_dir) / "ops.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--variant", default="bf16_compile", choices=sorted(VARIANTS))
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench.profile_train needs a CUDA GPU")
    shards = make_shards(Path(tempfile.mkdtemp(prefix="bench-shards-")), 512)
    cfg = variant_config(shards, args.variant, args.overrides)
    report = {"benchmark": "GPU time per operator of one training step", "variant": args.variant,
              "command": " ".join(["python3", "-m", "bench.profile_train", *sys.argv[1:]]),
              "gpu": torch.cuda.get_device_name(), "torch": torch.__version__}
    report["loop"] = isolated(measure_loop, cfg, 20, 20, torch.device("cuda"))
    report["profile"] = isolated(profile_loop, cfg, tempfile.mkdtemp(prefix="bench-profile-"), args.steps, args.warmup)
    write_report(report, args.out)


if __name__ == "__main__":
    main()

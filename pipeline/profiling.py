"""A torch.profiler window over a few training steps, for finding where a step's time goes.

Inside a training run it is switched on by ``GAGA_PROFILE_DIR=<dir>`` in the workers' environment:
rank 0 profiles ``GAGA_PROFILE_STEPS`` (3) steps after ``GAGA_PROFILE_WARMUP`` (10) (with Python
frames when ``GAGA_PROFILE_STACK=1``) and writes
``ops.json`` (ms per step of the top operators by GPU time, CPU time without a GPU; wall ms per
step; on a GPU also where the GPU stood idle and why, :mod:`pipeline.gpu_timeline`),
``ops.txt`` (torch's table) and on a GPU ``trace.json`` (the window's Chrome trace, for Perfetto)
there.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from .gpu_timeline import idle_report


def operator_rows(prof: profile, steps: int, top: int, on_gpu: bool) -> dict:
    """ms per step of the ``top`` operators by self time on the GPU (``on_gpu``) or the CPU, and
    on the GPU the total kernel time."""
    field = "self_device_time_total" if on_gpu else "self_cpu_time_total"
    averages = prof.key_averages()
    rows = {}  # a Triton kernel is listed twice (its launcher and itself): keep one row per name
    for e in averages:
        if getattr(e, field) > 0:
            rows.setdefault(e.key, e)
    events = sorted(rows.values(), key=lambda e: getattr(e, field), reverse=True)
    report = {"clock": "cuda" if on_gpu else "cpu",
              "top_ops": [{"op": e.key[:120], "self_ms_per_step": getattr(e, field) / 1000 / steps,
                           "calls_per_step": e.count / steps} for e in events[:top]]}
    if on_gpu:
        # from every row: the one kept above for a Triton kernel may be its (CPU) launcher
        kernels = [e for e in averages if str(getattr(e, "device_type", "")).endswith("CUDA")]
        report["gpu_kernel_ms_per_step"] = sum(e.self_device_time_total for e in kernels) / 1000 / steps
    return report


class StepProfiler:
    """Call :meth:`after_step` with the number of finished steps after every step."""

    def __init__(self, out_dir: str | Path, first_step: int, warmup: int = 10, steps: int = 3, top: int = 40,
                 on_gpu: bool = False, with_stack: bool = False) -> None:
        self.out_dir = Path(out_dir)
        self.on_gpu = on_gpu  # also time CUDA kernels (the training runs on a GPU)
        self.with_stack = with_stack  # record Python frames: names the code behind idle gaps, slows the host
        self.start, self.stop = first_step + warmup, first_step + warmup + steps
        self.steps, self.top = steps, top
        self._prof: profile | None = None
        self._t0 = 0.0

    @classmethod
    def from_env(cls, rank: int, first_step: int, on_gpu: bool) -> StepProfiler | None:
        out = os.environ.get("GAGA_PROFILE_DIR")
        if not out or rank != 0:
            return None
        return cls(out, first_step, int(os.environ.get("GAGA_PROFILE_WARMUP", 10)),
                   int(os.environ.get("GAGA_PROFILE_STEPS", 3)), on_gpu=on_gpu,
                   with_stack=os.environ.get("GAGA_PROFILE_STACK", "0") == "1")

    def after_step(self, done: int) -> None:
        on_gpu = self.on_gpu
        if done == self.start:
            if on_gpu:
                torch.cuda.synchronize()
            self._prof = profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_gpu else []),
                                 with_stack=self.with_stack)
            self._prof.__enter__()
            self._t0 = time.perf_counter()
        elif done == self.stop and self._prof is not None:
            if on_gpu:
                torch.cuda.synchronize()
            wall_ms = 1000 * (time.perf_counter() - self._t0) / self.steps
            self._prof.__exit__(None, None, None)
            self.out_dir.mkdir(parents=True, exist_ok=True)
            report = {"steps": self.steps, "wall_ms_per_step": wall_ms, **operator_rows(self._prof, self.steps, self.top, on_gpu)}
            if on_gpu:
                trace = self.out_dir / "trace.json"
                self._prof.export_chrome_trace(str(trace))
                report["gpu_timeline"] = idle_report(trace, self.steps)
            (self.out_dir / "ops.json").write_text(json.dumps(report, indent=1) + "\n")
            (self.out_dir / "ops.txt").write_text(
                self._prof.key_averages().table(sort_by="self_device_time_total" if on_gpu else "self_cpu_time_total",
                                                row_limit=self.top))
            self._prof = None

"""The step profiler's window: it opens after its warm-up, covers exactly its steps and counts
operators per step."""

from __future__ import annotations

import json

import torch

from pipeline.profiling import StepProfiler


def test_window_covers_its_steps_and_counts_calls_per_step(tmp_path):
    profiler = StepProfiler(tmp_path, first_step=100, warmup=2, steps=3)
    a = torch.randn(64, 64)
    for done in range(101, 110):
        for _ in range(2 if 103 <= done <= 105 else 5):  # inside the window: two matmuls per step
            a = torch.tanh(a @ a)
        profiler.after_step(done)
        assert (tmp_path / "ops.json").exists() == (done >= 105)
    ops = json.loads((tmp_path / "ops.json").read_text())
    rows = {row["op"]: row for row in ops["top_ops"]}
    assert ops["steps"] == 3 and ops["clock"] == "cpu"
    assert rows["aten::mm"]["calls_per_step"] == 2.0
    assert rows["aten::tanh"]["calls_per_step"] == 2.0
    assert ops["wall_ms_per_step"] > 0 and (tmp_path / "ops.txt").read_text().strip()


def test_only_rank_zero_and_only_when_asked(monkeypatch, tmp_path):
    monkeypatch.delenv("GAGA_PROFILE_DIR", raising=False)
    assert StepProfiler.from_env(0, 0, on_gpu=False) is None
    monkeypatch.setenv("GAGA_PROFILE_DIR", str(tmp_path))
    monkeypatch.setenv("GAGA_PROFILE_WARMUP", "4")
    assert StepProfiler.from_env(1, 0, on_gpu=False) is None
    profiler = StepProfiler.from_env(0, 7, on_gpu=False)
    assert (profiler.start, profiler.stop) == (11, 14)


def test_gpu_idle_gaps_are_charged_to_the_host_operator_that_delayed_the_next_launch(tmp_path):
    from pipeline.gpu_timeline import idle_report

    def op(name, ts, dur, cat="cpu_op", tid=1, **args):
        return {"ph": "X", "cat": cat, "name": name, "ts": ts, "dur": dur, "pid": 1, "tid": tid, "args": args}

    events = [
        op("outer", 0, 100), op("inner_a", 10, 20), op("inner_b", 50, 40),
        op("cudaLaunchKernel", 12, 2, "cuda_runtime", correlation=1),
        op("cudaLaunchKernel", 20, 2, "cuda_runtime", correlation=2),
        op("cudaStreamSynchronize", 60, 10, "cuda_runtime"),
        op("cudaLaunchKernel", 75, 2, "cuda_runtime", correlation=3),
        op("k1", 20, 20, "kernel", tid=7, correlation=1),
        op("k2", 35, 10, "kernel", tid=7, correlation=2),  # overlaps k1: busy 20–45 counted once
        op("k3", 80, 15, "kernel", tid=7, correlation=3),
    ]
    trace = tmp_path / "trace.json"
    trace.write_text(json.dumps({"traceEvents": events}))
    report = idle_report(trace, steps=1)
    assert report["gpu_busy_ms_per_step"] == 0.04  # 25 µs + 15 µs
    assert report["gpu_idle_ms_per_step"] == 0.035  # 45 → 80
    assert report["window_ms_per_step"] == 0.075
    assert report["idle_gaps_by_cause"] == [{"op": "inner_b", "outermost": "outer", "code": "", "idle_ms_per_step": 0.035}]
    assert report["host_sync_ms_per_step"] == 0.01
    assert report["host_sync_by_op"][0]["op"] == "inner_b"

    # with Python frames: the gap is also charged to the innermost frame of our own code
    events += [op("model/gagavatar.py(200): forward", 48, 45, "python_function"),
               op("torch/nn/modules/module.py(1750): _call_impl", 49, 43, "python_function")]
    trace.write_text(json.dumps({"traceEvents": events}))
    gap = idle_report(trace, steps=1)["idle_gaps_by_cause"][0]
    assert (gap["op"], gap["code"]) == ("inner_b", "model/gagavatar.py(200): forward")

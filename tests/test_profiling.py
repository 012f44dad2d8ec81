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

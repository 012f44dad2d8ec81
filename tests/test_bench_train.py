"""bench.train's CPU dry run (smoke preset) measures every asked variant in its own process and
writes a report whose ratios are computed from those measurements; the host variants of
bench.train_hosts run the same loop."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pipeline.config import load_config

ROOT = Path(__file__).resolve().parent.parent


def test_dry_run_reports_each_variant_and_the_speedup_over_fp32(tmp_path):
    out = tmp_path / "train.json"
    cmd = [sys.executable, "-m", "bench.train", "--preset", "smoke", "--device", "cpu", "--size", "64",
           "--steps", "2", "--warmup", "1", "--variants", "fp32_eager,bf16", "--no-ray", "--out", str(out)]
    subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, timeout=600)
    report = json.loads(out.read_text())
    variants, batch = report["variants"], load_config("smoke").data.batch_size
    assert set(variants) == {"fp32_eager", "bf16"}
    for cell in variants.values():
        assert cell["pairs_per_s"] > 0 and cell["step_ms"] > 0
        assert cell["pairs_per_s"] == pytest.approx(batch * 1000 / cell["step_ms"])
    best = report["best"]
    assert variants[best]["pairs_per_s"] == max(c["pairs_per_s"] for c in variants.values())
    assert report["speedup_best_vs_fp32_eager"] == pytest.approx(
        variants[best]["pairs_per_s"] / variants["fp32_eager"]["pairs_per_s"])
    assert "ray_train_1_worker" not in report


def test_loop_on_a_thread_returns_the_loops_numbers_and_reraises_its_error(monkeypatch):
    import bench.train_hosts as hosts

    monkeypatch.setattr(hosts, "measure_loop", lambda cfg, steps, warmup, device: {"steps": steps, "warmup": warmup})
    assert hosts.measure_on_thread(None, 3, 1, torch.device("cpu")) == {"steps": 3, "warmup": 1}

    def broken(*args):
        raise RuntimeError("step failed")

    monkeypatch.setattr(hosts, "measure_loop", broken)
    with pytest.raises(RuntimeError, match="step failed"):
        hosts.measure_on_thread(None, 3, 1, torch.device("cpu"))

"""bench.train's CPU dry run (smoke preset) measures every asked variant in its own process and
writes a report whose ratios are computed from those measurements; the TorchTrainer windows are
read from the run's metrics."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.config import load_config

ROOT = Path(__file__).resolve().parent.parent


def test_dry_run_reports_each_variant_with_its_windows_and_the_speedup_over_fp32(tmp_path):
    out = tmp_path / "train.json"
    cmd = [sys.executable, "-m", "bench.train", "--preset", "smoke", "--device", "cpu", "--size", "64",
           "--windows", "3", "--window-steps", "1", "--warmup", "1", "--variants", "fp32_eager,bf16", "--no-compiled",
           "--out", str(out)]
    subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, timeout=600)
    report = json.loads(out.read_text())
    variants, batch = report["variants"], load_config("smoke").data.batch_size
    assert set(variants) == {"fp32_eager", "bf16"}
    for cell in variants.values():
        windows = cell["spread"]["pairs_per_s"]
        assert windows["n"] == 3 and windows["min"] <= windows["median"] <= windows["max"]
        assert cell["pairs_per_s"] == pytest.approx(sorted(windows["values"])[1], abs=0.01)
        # three windows (odd): the median rate is the rate of the median step time
        assert cell["pairs_per_s"] == pytest.approx(batch * 1000 / cell["step_ms"])
        assert cell["first_step_s"] > 0 and cell["warmup_steps"] == 1
    rates = report["pairs_per_s_median"]
    assert report["speedup_vs_fp32_eager"]["bf16"] == pytest.approx(rates["bf16"] / rates["fp32_eager"], abs=0.01)
    assert "ray_train_1_worker" not in variants


def test_ray_windows_are_the_logging_windows_after_the_warm_up(tmp_path):
    from bench.train import ray_windows

    rows = [{"step": 20, "perf/pairs_per_s": 5.0, "perf/step_ms": 1600.0, "perf/data_wait_frac": 0.0},
            {"step": 20, "loss/total": 1.0},
            *({"step": 20 * (i + 2), "perf/pairs_per_s": r, "perf/step_ms": 8000 / r, "perf/data_wait_frac": 0.01,
               "perf/peak_mem_gib": 12.0} for i, r in enumerate((60.0, 64.0, 62.0)))]
    path = tmp_path / "metrics.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    got = ray_windows(path, warmup=20, steps=20)
    assert got["pairs_per_s"] == 62.0 and got["spread"]["pairs_per_s"]["values"] == [60.0, 64.0, 62.0]
    assert got["warmup_s"] == pytest.approx(32.0) and got["peak_mem_gib"] == 12.0



def test_each_variant_sets_what_its_name_says():
    from bench.train import VARIANTS, variant_config

    for name in VARIANTS:
        cfg = variant_config("shards", name, [])
        assert cfg.train.compile == ("compile" in name)
        assert cfg.train.precision == ("fp32" if name.startswith("fp32") else "bf16")
        assert cfg.train.compile_mode == ("default" if name.endswith("_no_graphs") else "reduce-overhead")

"""The demo's parts that need no Ray (CPU): the training time budget → step count, the step
timing on real shards, and the source | driver | result video frames. The whole demo is
`bash scripts/demo.sh` (minutes; not part of the test suite)."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.config import load_config
from pipeline.demo import (
    STEP_QUANTUM,
    steps_for_budget,
    time_training_steps,
    triptych_frames,
    with_step_count,
)


def test_budget_sets_the_step_count():
    assert steps_for_budget(300, 0.2) == 1500
    assert steps_for_budget(300, 0.17) == 1750  # 1764 rounded down to whole logging windows
    assert steps_for_budget(300, 0.017) == 17600  # a ten times faster device: ten times the steps
    assert steps_for_budget(300, 0.0001) == 200_000  # capped
    assert steps_for_budget(5, 1.0) == STEP_QUANTUM  # never fewer than one window
    with pytest.raises(ValueError, match="positive"):
        steps_for_budget(0, 0.2)


def test_step_count_reaches_schedule_checkpoints_and_validation():
    cfg = with_step_count(load_config("demo"), 1750)
    assert cfg.train.steps == 1750 and cfg.optim.decay_steps == 1750
    assert cfg.train.checkpoint_every == 875 and cfg.train.val_every == 875 and cfg.train.image_every == 437
    assert load_config("demo").train.steps != 1750  # the preset itself is untouched


def test_step_timing_runs_the_training_step_on_the_shards(tmp_path):
    from train_fixtures import truth_pairs, write_shards

    cfg = load_config("smoke", ["rasterizer.backend=torch"])
    write_shards(truth_pairs(cfg, clips=1, pairs_per_clip=4), tmp_path / "train")
    seconds = time_training_steps(cfg, str(tmp_path / "train"), "cpu", warmup=1, seconds=0.0, steps=(2, 2))
    assert 0.0 < seconds < 60.0
    # a budget of ten such steps buys about ten steps (rounded to the quantum, at least one)
    assert steps_for_budget(10 * STEP_QUANTUM * seconds, seconds) == 10 * STEP_QUANTUM


def test_step_timing_warm_up_stops_at_its_time_limit(tmp_path, monkeypatch):
    from train_fixtures import truth_pairs, write_shards

    import pipeline.step

    cfg = load_config("smoke", ["rasterizer.backend=torch"])
    write_shards(truth_pairs(cfg, clips=1, pairs_per_clip=4), tmp_path / "train")
    calls, step = [], pipeline.step.train_step
    monkeypatch.setattr(pipeline.step, "train_step", lambda *a, **k: calls.append(1) or step(*a, **k))
    time_training_steps(cfg, str(tmp_path / "train"), "cpu", warmup=1000, warmup_seconds=0.0, seconds=0.0, steps=(2, 2))
    assert len(calls) == 1 + 2  # one warm-up step (the limit passed), then the two timed ones


def test_warm_up_limit_grows_with_the_budget():
    from pipeline.demo import TIMING_WARMUP_SECONDS, warmup_seconds_for

    assert warmup_seconds_for(360.0) == 90.0  # the demo's default budget
    assert warmup_seconds_for(10.0) == TIMING_WARMUP_SECONDS  # never below the fixed minimum


def test_triptych_puts_source_driver_result_side_by_side(tmp_path):
    from preprocessing.synthetic.video import write_video

    rng = np.random.default_rng(0)
    source = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    drivers = rng.integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)
    results = np.zeros((3, 64, 64, 3), np.uint8)
    frames = triptych_frames(source, drivers, results, ["source", "driver", "result"], tile=64)
    assert frames.shape == (3, 16 + 64, 192, 3) and frames.dtype == np.uint8
    panels = frames[:, 16:].astype(int)
    assert np.abs(panels[:, :, :64] - source).mean() < 3  # the same source in every frame
    assert np.abs(panels[1, :, 64:128] - drivers[1]).mean() < 3  # frame k's driver in the middle
    assert panels[:, :, 128:].max() == 0  # the results on the right
    assert frames[:, :16].mean() > 200  # a light label strip on top
    write_video(frames, tmp_path / "triptych.mp4", fps=25)  # H.264 4:2:0 takes the frame size
    assert (tmp_path / "triptych.mp4").stat().st_size > 0
    with pytest.raises(ValueError, match="driving frames"):
        triptych_frames(source, drivers, results[:2], ["a", "b", "c"])

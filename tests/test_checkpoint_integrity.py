"""Checkpoints and run files: nothing in a checkpoint is ever executed, a damaged checkpoint is
detected and skipped for the newest intact one, non-finite weights are never written, and
metrics.jsonl survives a torn line."""

from __future__ import annotations

import errno
import json
import os
import pickle

import pytest
import torch

from pipeline.checkpoint import (
    MODEL_FILE,
    CheckpointError,
    TrainProgress,
    load_checkpoint,
    newest_intact,
    save_checkpoint,
    verify_checkpoint,
)
from pipeline.config import load_config
from pipeline.run_files import RAY_SNAPSHOT, repair_ray_snapshot
from pipeline.run_logging import METRICS_FILE, RunLogger, append_line, read_history


class _Planted:
    """Unpickling this creates a file: the proof that a loader executed code from a checkpoint."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _state(cfg):
    from pipeline.step import build_train_state

    torch.manual_seed(0)
    return build_train_state(cfg, torch.device("cpu"))


@pytest.fixture(scope="module")
def cfg():
    return load_config("smoke", ["camera.image_size=32", "loss.box_size=32"])


@pytest.fixture(scope="module")
def state(cfg):
    return _state(cfg)


def _save(directory, state, cfg, step=3):
    return save_checkpoint(directory, 0, TrainProgress(step=step, world_size=1), state.network, state.optimizer,
                           state.scheduler, cfg)


def test_a_planted_pickle_in_any_checkpoint_file_is_never_executed(tmp_path, state, cfg):
    marker = tmp_path / "pwned"
    for name in ("rng_rank0.pt", MODEL_FILE, "optimizer.pt"):
        directory = _save(tmp_path / name, state, cfg)
        with open(directory / name, "wb") as fh:
            pickle.dump({"state": _Planted(str(marker))}, fh)
        assert any(name in p for p in verify_checkpoint(directory))  # altered: not intact
        with pytest.raises(CheckpointError, match=f"{name}: unreadable or not plain tensors"):
            load_checkpoint(directory, 0, _state(cfg).model, _state(cfg).optimizer, _state(cfg).scheduler)
        assert not marker.exists()


def test_rng_states_round_trip_as_plain_tensors(tmp_path, state, cfg):
    import random

    import numpy as np

    directory = _save(tmp_path / "ckpt", state, cfg)
    loaded = torch.load(directory / "rng_rank0.pt", weights_only=True)  # no Python objects inside
    assert isinstance(loaded["numpy"]["keys"], torch.Tensor) and isinstance(loaded["python"]["internal"], torch.Tensor)
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.manual_seed(5), np.random.seed(5), random.seed(5)
    load_checkpoint(directory, 0, _state(cfg).model)
    restored = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(expected[0], restored[0]) and np.array_equal(expected[1], restored[1])
    assert expected[2] == restored[2]


def test_a_truncated_checkpoint_is_skipped_for_the_newest_intact_one(tmp_path, state, cfg):
    run = tmp_path / "run"
    for step in (5, 10, 15):
        _save(run / f"checkpoint_{step:07d}", state, cfg, step)
    assert verify_checkpoint(run / "checkpoint_0000015") == []
    model = run / "checkpoint_0000015" / MODEL_FILE
    model.write_bytes(model.read_bytes()[:1000])  # a crashed disk
    (run / "checkpoint_0000010" / "manifest_rank0.json").unlink()  # an upload that never finished
    url, skipped = newest_intact(str(run))
    assert url == str(run / "checkpoint_0000005")
    assert "checkpoint_0000015" in skipped[0] and "model.pt" in skipped[0] and "truncated" in skipped[0]
    assert "checkpoint_0000010" in skipped[1] and "manifest_rank0.json: missing" in skipped[1]


def test_non_finite_weights_are_never_written(tmp_path, cfg):
    bad = _state(cfg)
    with torch.no_grad():
        next(bad.network.parameters()).view(-1)[0] = float("nan")
    with pytest.raises(CheckpointError, match="NaN/Inf; not saved"):
        _save(tmp_path / "ckpt", bad, cfg)
    assert not (tmp_path / "ckpt" / MODEL_FILE).exists()


def test_a_snapshot_naming_a_deleted_checkpoint_is_moved_aside(tmp_path, state, cfg):
    run = tmp_path / "run"
    _save(run / "checkpoint_0000005", state, cfg, 5)
    (run / RAY_SNAPSHOT).write_text(json.dumps({"checkpoint_results": [
        {"checkpoint_dir_name": "checkpoint_0000005"}, {"checkpoint_dir_name": "checkpoint_0000010"}]}))
    assert repair_ray_snapshot(str(run)) is not None
    assert not (run / RAY_SNAPSHOT).exists() and list(run.glob(f"{RAY_SNAPSHOT}.stale-*"))
    (run / RAY_SNAPSHOT).write_text(json.dumps({"checkpoint_dir_name": "checkpoint_0000005"}))
    assert repair_ray_snapshot(str(run)) is None  # a consistent snapshot is left alone


def test_metrics_survive_a_torn_line_and_a_full_disk(tmp_path, monkeypatch):
    path = tmp_path / METRICS_FILE
    append_line(path, json.dumps({"step": 10, "loss/total": 1.0}))
    with open(path, "a") as fh:
        fh.write('{"step": 20, "loss/to')  # a crash in the middle of a line
    append_line(path, json.dumps({"step": 30, "loss/total": 0.5}))
    assert read_history(path)["loss/total"] == [(10, 1.0), (30, 0.5)]
    before = path.read_bytes()

    real_write = os.write

    def full_disk(fd, data):
        real_write(fd, data[: len(data) // 2])  # half of the line goes out, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", full_disk)
    with pytest.raises(OSError):
        append_line(path, json.dumps({"step": 40, "loss/total": 0.4}))
    monkeypatch.undo()
    assert path.read_bytes() == before
    logger = RunLogger(True, tmp_path, "r", "", {}, 50, 0)
    logger.log(50, {"loss/total": 0.3})
    logger.close()  # draws the curves from the history with a torn line inside
    assert read_history(path)["loss/total"][-1] == (50, 0.3) and (tmp_path / "loss_curves.png").is_file()


def test_a_changed_config_is_refused_unless_allowed_and_the_old_one_is_kept(tmp_path, cfg):
    from pipeline.config import save_config
    from pipeline.configtools import ConfigError, replace
    from pipeline.run_files import check_config

    run = tmp_path / "run"
    save_config(cfg, run / "config.yaml")
    check_config(str(run), replace(cfg, **{"train.steps": 999, "train.num_workers": 1}), False)  # not what is trained
    changed = replace(cfg, **{"optim.lr": 0.5})
    with pytest.raises(ConfigError, match=r"optim.lr: 0.0001 → 0.5"):
        check_config(str(run), changed, False)
    check_config(str(run), changed, True)
    kept = list(run.glob("config.previous-*.yaml"))
    assert len(kept) == 1 and kept[0].read_text() == (run / "config.yaml").read_text()


def test_eval_accepts_a_run_folder_a_checkpoint_folder_or_the_released_file(tmp_path, state, cfg):
    from pipeline.checkpoint import resolve_checkpoint

    run = tmp_path / "run"
    for step in (5, 10):
        _save(run / f"checkpoint_{step:07d}", state, cfg, step)
    (run / "checkpoint_0000010" / MODEL_FILE).write_bytes(b"torn")
    url, kind, how = resolve_checkpoint(str(run))
    assert (url, kind) == (str(run / "checkpoint_0000005"), "ours")
    assert "newest intact checkpoint of the run folder" in how and "checkpoint_0000010" in how
    assert resolve_checkpoint(str(run / "checkpoint_0000005"))[:2] == (str(run / "checkpoint_0000005"), "ours")
    with pytest.raises(CheckpointError, match="damaged checkpoint"):
        resolve_checkpoint(str(run / "checkpoint_0000010"))
    released = tmp_path / "GAGAvatar.pt"
    torch.save({"model": {}}, released)
    assert resolve_checkpoint(str(released))[1] == "official"
    with pytest.raises(FileNotFoundError, match="not a checkpoint folder"):
        resolve_checkpoint(str(tmp_path / "nothing_here"))


def test_local_paths_are_made_absolute_for_the_workers_and_a_run_stored_with_relative_ones_resumes(
        tmp_path, cfg, monkeypatch):
    from pipeline.config import save_config
    from pipeline.configtools import ConfigError, replace
    from pipeline.run_files import absolute_paths, check_config

    monkeypatch.chdir(tmp_path)
    given = replace(cfg, **{"data.train_shards": "shards/train", "train.init_from": "GAGAvatar.pt",
                            "train.storage_path": "s3://bucket/runs", "data.val_shards": ""})
    made = absolute_paths(given)
    assert made.data.train_shards == str(tmp_path / "shards" / "train")
    assert made.train.init_from == str(tmp_path / "GAGAvatar.pt")
    assert made.train.storage_path == "s3://bucket/runs" and made.data.val_shards == ""  # URLs and unset kept
    run = tmp_path / "run"
    save_config(given, run / "config.yaml")  # written before paths were made absolute
    check_config(str(run), made, False)  # the same run
    with pytest.raises(ConfigError, match="data.train_shards"):
        check_config(str(run), absolute_paths(replace(given, **{"data.train_shards": "other/train"})), False)

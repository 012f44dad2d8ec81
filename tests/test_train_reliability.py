"""Ray Train under bad inputs (CPU, gloo, one worker): bad samples among good shards are skipped and
never trained on; a run that must stop stops once, without restarts, with one clear error; a damaged
latest checkpoint is skipped for the newest intact one; a changed config under the same run name
is refused before anything starts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset as wds
from conftest_ray import ray_cluster  # noqa: F401
from train_fixtures import truth_pairs, write_shards

from model.frame_params import FrameParams
from pipeline.checkpoint import MODEL_FILE, load_progress
from pipeline.config import load_config
from pipeline.configtools import ConfigError
from pipeline.run_files import TrainingAborted
from preprocessing.sample_format import encode_pair

pytestmark = pytest.mark.slow


def _cfg(shards: str, storage: str, name: str, *extra: str):
    return load_config("smoke", [
        f"data.train_shards={shards}", f"train.storage_path={storage}", f"train.run_name={name}",
        "train.steps=12", "train.num_workers=1", "train.checkpoint_every=6", "train.log_every=3",
        "train.image_every=0", "train.val_every=0", "train.max_failures=2", "data.batch_size=2",
        "camera.image_size=32", "loss.box_size=32", "optim.decay_steps=12", "train.cpus_per_worker=1", *extra,
    ])


@pytest.fixture(scope="module")
def pairs():
    return truth_pairs(load_config("smoke", ["camera.image_size=32"]), clips=2, pairs_per_clip=6)


@pytest.fixture(scope="module")
def shards(pairs, tmp_path_factory):
    """Good shards plus one with a NaN-parameter sample and a garbage image, and a truncated one."""
    root = tmp_path_factory.mktemp("reliability_shards")
    write_shards(pairs, root, per_shard=6)
    p = pairs[0]
    nan = FrameParams.unpack(np.where(np.arange(p["target_params"].size) == 305, np.nan, p["target_params"]))
    with wds.TarWriter(str(root / "train-000099.tar")) as sink:
        sink.write(encode_pair("bad_000000_000001", p["source"], p["target"], FrameParams.unpack(p["source_params"]),
                               nan, p["meta"], "png"))
        sink.write({**encode_pair("bad_000000_000002", p["source"], p["target"], FrameParams.unpack(p["source_params"]),
                                  FrameParams.unpack(p["target_params"]), p["meta"], "png"), "source.png": b"garbage"})
    whole = (root / "train-000000.tar").read_bytes()
    (root / "train-000098.tar").write_bytes(whole[: len(whole) // 2])
    return str(root)


@pytest.fixture(scope="module")
def trained(ray_cluster, shards, tmp_path_factory):  # noqa: F811
    from pipeline.train import run_training

    storage = tmp_path_factory.mktemp("runs")
    return run_training(_cfg(shards, str(storage), "bad-data")), storage


def test_bad_samples_are_skipped_and_never_trained_on(trained):
    result, _ = trained
    progress = load_progress(result.checkpoint_path)
    assert progress.step == 12
    assert progress.bad_samples == {"0": 2} and progress.bad_shards == {"0": 1}
    weights = torch.load(Path(result.checkpoint_path) / MODEL_FILE, weights_only=True)
    assert all(torch.isfinite(t).all() for t in weights.values() if t.is_floating_point())
    rows = [json.loads(line) for line in (Path(result.run_dir) / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["data/bad_samples"] == 2 and rows[-1]["train/skipped_steps"] == 0
    assert str(Path(result.run_dir) / "config.yaml") in result.files


def test_a_damaged_latest_checkpoint_is_skipped_and_a_deleted_one_does_not_block(trained, shards):
    from pipeline.train import run_training

    result, storage = trained
    latest = Path(result.checkpoint_path)
    model = latest / MODEL_FILE
    model.write_bytes(model.read_bytes()[:4096])  # the disk died while this was written
    more = run_training(_cfg(shards, str(storage), "bad-data", "train.steps=15"))
    assert load_progress(more.checkpoint_path).step == 15
    history = [json.loads(line)["step"] for line in (Path(more.run_dir) / "metrics.jsonl").read_text().splitlines()]
    assert history == [3, 6, 9, 12, 9, 12, 15]  # resumed from step 6: steps 7–12 were trained again
    import shutil

    shutil.rmtree(more.checkpoint_path)  # a user deletes the newest folder: Ray's snapshot still names it
    again = run_training(_cfg(shards, str(storage), "bad-data", "train.steps=18"))
    assert load_progress(again.checkpoint_path).step == 18


def test_a_changed_config_under_the_same_name_is_refused(trained, shards):
    from pipeline.train import run_training

    _, storage = trained
    with pytest.raises(ConfigError, match=r"optim.lr: 0.0001 → 0.01.*--allow-config-change"):
        run_training(_cfg(shards, str(storage), "bad-data", "optim.lr=0.01"))


def test_non_finite_training_stops_once_with_a_clear_error(ray_cluster, pairs, tmp_path):  # noqa: F811
    from pipeline.train import run_training

    poisoned = []  # the mock source bypasses decoding, so NaN reaches the step (an expression coefficient)
    for p in pairs[:4]:
        target = p["target_params"].copy()
        target[305] = np.nan
        poisoned.append(dict(p, target_params=target))
    pid_dir = tmp_path / "pids"
    pid_dir.mkdir()
    cfg = _cfg("unused", str(tmp_path / "runs"), "nan", "train.max_skipped_steps=2")
    with pytest.raises(TrainingAborted, match=r"stopped at step 3: 3 steps had a non-finite loss or gradient"):
        run_training(cfg, mock_samples=poisoned, pid_dir=str(pid_dir))
    assert len((pid_dir / "rank0.pid").read_text().split()) == 1  # no restart: max_failures=2 was not spent
    assert not list((tmp_path / "runs" / "nan").glob("checkpoint_*"))  # nothing was written from it

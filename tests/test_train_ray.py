"""Ray Train end to end on CPU (gloo): two workers train, a killed worker is restored from the
latest checkpoint and ends bit-identical to an uninterrupted run, a finished run resumes instead
of restarting, and checkpoints go to S3."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest
import torch
from conftest_ray import ray_cluster, s3_env, s3_server  # noqa: F401
from train_fixtures import truth_pairs, write_shards

from pipeline.checkpoint import MODEL_FILE, load_progress
from pipeline.config import load_config

pytestmark = pytest.mark.slow
STEPS = 60


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    cfg = load_config("smoke", ["camera.image_size=32"])
    root = tmp_path_factory.mktemp("train_shards")
    write_shards(truth_pairs(cfg, clips=4, pairs_per_clip=6), root, per_shard=6)
    return str(root)


def _cfg(shards: str, storage: str, name: str, *extra: str):
    return load_config("smoke", [
        f"data.train_shards={shards}", f"train.storage_path={storage}", f"train.run_name={name}",
        f"train.steps={STEPS}", "train.num_workers=2", "train.checkpoint_every=15", "train.log_every=15",
        "train.image_every=30", "train.val_every=0", "train.max_failures=2", "data.batch_size=4",
        "camera.image_size=32", "loss.box_size=32", f"optim.decay_steps={STEPS}", "train.cpus_per_worker=1", *extra,
    ])


def _params(checkpoint_dir: str) -> dict[str, torch.Tensor]:
    return torch.load(Path(checkpoint_dir) / MODEL_FILE, weights_only=True)


@pytest.fixture(scope="module")
def uninterrupted(ray_cluster, shards, tmp_path_factory):  # noqa: F811
    """Started as a user would from the folder above them, with relative shard and storage paths
    (Ray Train's workers run in a folder of their own: the driver must make them absolute)."""
    from pipeline.train import run_training

    storage = tmp_path_factory.mktemp("runs")
    base, here = tmp_path_factory.getbasetemp(), os.getcwd()
    os.chdir(base)
    try:
        result = run_training(_cfg(os.path.relpath(shards, base), os.path.relpath(storage, base), "straight"))
    finally:
        os.chdir(here)
    return result, storage


def test_two_workers_train_and_the_loss_goes_down(uninterrupted):
    result, storage = uninterrupted
    assert load_progress(result.checkpoint_path).step == STEPS
    history = [load_progress(p).metrics["loss/total"] for p in sorted(Path(storage, "straight").glob("checkpoint_0*"))]
    assert len(history) >= 2 and history[-1] < 0.8 * history[0], history
    assert (Path(result.run_dir) / "config.yaml").is_file()
    assert list((Path(result.run_dir) / "images").glob("train_*.png"))  # the image panel was written
    from pipeline.run_logging import read_history

    logged = read_history(Path(result.run_dir) / "metrics.jsonl")["loss/total"]  # what loss_curves.png draws
    assert [s for s, _ in logged] == list(range(15, STEPS + 1, 15)) and logged[-1][1] < logged[0][1]
    assert (Path(result.run_dir) / "loss_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_killed_worker_resumes_and_ends_identical(uninterrupted, shards, tmp_path):
    from pipeline.train import run_training

    reference, _ = uninterrupted
    pid_dir = tmp_path / "pids"
    pid_dir.mkdir()
    storage = tmp_path / "runs"
    cfg = _cfg(shards, str(storage), "killed")
    outcome = {}
    worker = threading.Thread(target=lambda: outcome.update(result=run_training(cfg, pid_dir=str(pid_dir))))
    worker.start()
    deadline = time.time() + 600
    while not list((storage / "killed").glob("checkpoint_0000015")) and time.time() < deadline:
        time.sleep(0.5)
    pid = int((pid_dir / "rank1.pid").read_text().split()[-1])
    os.kill(pid, signal.SIGKILL)  # a crashed worker mid-run
    worker.join(timeout=900)
    result = outcome["result"]
    assert load_progress(result.checkpoint_path).step == STEPS
    assert int((pid_dir / "rank1.pid").read_text().split()[-1]) != pid  # the worker group was restarted
    a, b = _params(reference.checkpoint_path), _params(result.checkpoint_path)
    assert max((a[k].float() - b[k].float()).abs().max().item() for k in a) < 1e-6


def test_resubmitting_a_finished_run_resumes_instead_of_restarting(uninterrupted, shards):
    from pipeline.train import run_training

    first, storage = uninterrupted
    checkpoints = sorted(Path(storage, "straight").glob("checkpoint_0*"))
    result = run_training(_cfg(shards, str(storage), "straight"))
    assert load_progress(result.checkpoint_path).step == STEPS
    assert sorted(Path(storage, "straight").glob("checkpoint_0*")) == checkpoints  # nothing retrained
    # asking for more steps continues from the last checkpoint (same run name); a profiler window
    # asked for through the workers' environment counts its warm-up from the resumed step
    profile_dir = Path(storage, "profile")
    env = {"GAGA_PROFILE_DIR": str(profile_dir), "GAGA_PROFILE_WARMUP": "12", "GAGA_PROFILE_STEPS": "2"}
    more = run_training(_cfg(shards, str(storage), "straight", f"train.steps={STEPS + 15}", "train.num_workers=1"),
                        worker_env=env)
    assert load_progress(more.checkpoint_path).step == STEPS + 15
    ops = json.loads((profile_dir / "ops.json").read_text())
    assert ops["steps"] == 2 and ops["clock"] == "cpu" and ops["wall_ms_per_step"] > 0
    assert any(row["op"] == "aten::convolution_backward" for row in ops["top_ops"])  # backward is inside


def test_shards_and_checkpoints_on_s3(ray_cluster, s3_server, shards, monkeypatch, tmp_path):  # noqa: F811
    from pipeline import storage
    from pipeline.train import run_training

    for key, value in s3_env(s3_server).items():
        monkeypatch.setenv(key, value)
    client = storage.s3_client()
    client.create_bucket(Bucket="gaga")
    for path in sorted(Path(shards).glob("*.tar")):
        client.upload_file(str(path), "gaga", f"shards/train/{path.name}")
    cfg = _cfg("s3://gaga/shards/train", "s3://gaga/runs", "on-s3", "train.steps=10", "train.num_workers=1",
               "train.checkpoint_every=5", "train.log_every=5", "train.image_every=0")
    result = run_training(cfg)
    keys = {o["Key"] for o in client.list_objects_v2(Bucket="gaga", Prefix="runs/on-s3/")["Contents"]}
    assert {"runs/on-s3/checkpoint_0000010/model.pt", "runs/on-s3/checkpoint_0000010/optimizer.pt",
            "runs/on-s3/checkpoint_0000010/state.json", "runs/on-s3/checkpoint_0000010/rng_rank0.pt"} <= keys
    # resubmitting with more steps resumes from the S3 checkpoint
    more = run_training(_cfg("s3://gaga/shards/train", "s3://gaga/runs", "on-s3", "train.steps=15",
                             "train.num_workers=1", "train.checkpoint_every=5", "train.log_every=5", "train.image_every=0"))
    state = storage.read_text(f"s3://gaga/runs/on-s3/{Path(more.checkpoint_path).name}/state.json")
    assert '"step": 15' in state and result.checkpoint_path != more.checkpoint_path
    # the run's own files reached the bucket (not the worker's scratch folder), history included
    keys = {o["Key"] for o in client.list_objects_v2(Bucket="gaga", Prefix="runs/on-s3/")["Contents"]}
    assert {"runs/on-s3/config.yaml", "runs/on-s3/metrics.jsonl", "runs/on-s3/loss_curves.png"} <= keys
    from pipeline.run_logging import read_history

    local = Path(tmp_path) / "metrics.jsonl"
    local.write_text(storage.read_text("s3://gaga/runs/on-s3/metrics.jsonl"))
    assert [s for s, _ in read_history(local)["loss/total"]] == [5, 10, 15]
    assert "s3://gaga/runs/on-s3/metrics.jsonl" in more.files

"""The training step without Ray: fed by the mock source, the loss goes down; checkpoints restore."""

import itertools

import pytest
import torch
from train_fixtures import truth_pairs

from pipeline.checkpoint import TrainProgress, load_checkpoint, save_checkpoint
from pipeline.config import load_config
from pipeline.data import MockPairSource, collate_pairs
from pipeline.run_names import run_name
from pipeline.step import build_train_state, train_step


@pytest.fixture(scope="module")
def cfg():
    return load_config("smoke", ["train.steps=30", "optim.decay_steps=30"])


@pytest.fixture(scope="module")
def pairs(cfg):
    return truth_pairs(cfg, clips=1, pairs_per_clip=4)


def _batches(pairs, n, batch=2, start=0):
    stream = MockPairSource(pairs).iter_from(start * batch)
    return [collate_pairs(list(itertools.islice(stream, batch))) for _ in range(n)]


def test_loss_goes_down_on_a_few_pairs(cfg, pairs):
    torch.manual_seed(0)
    state = build_train_state(cfg, torch.device("cpu"))
    totals = []
    for batch in _batches(pairs, 30):
        losses, out = train_step(state, batch)
        totals.append(losses["image"].item())
    assert out.refined.shape == (2, 3, 64, 64)
    assert sum(totals[-5:]) / 5 < 0.7 * sum(totals[:5]) / 5, totals


def test_checkpoint_resumes_bit_exactly(cfg, pairs, tmp_path):
    torch.manual_seed(0)
    batches = _batches(pairs, 6)
    a = build_train_state(cfg, torch.device("cpu"))
    for b in batches[:3]:
        train_step(a, b)
    save_checkpoint(tmp_path, 0, TrainProgress(step=3), a.network, a.optimizer, a.scheduler, cfg)
    for b in batches[3:]:
        train_step(a, b)
    torch.manual_seed(123)  # a different process state: everything must come from the checkpoint
    b_state = build_train_state(cfg, torch.device("cpu"))
    progress = load_checkpoint(tmp_path, 0, b_state.model, b_state.optimizer, b_state.scheduler)
    assert progress.step == 3
    for b in batches[3:]:
        train_step(b_state, b)
    diff = max((p - q).abs().max().item() for p, q in zip(a.network.parameters(), b_state.network.parameters()))
    assert diff < 1e-6
    assert b_state.scheduler.get_last_lr() == a.scheduler.get_last_lr()


def test_run_name_is_deterministic_and_ignores_where_it_is_stored():
    a = load_config("smoke")
    assert run_name(a) == run_name(load_config("smoke", ["train.storage_path=s3://x/y", "train.steps=5"]))
    assert run_name(a) != run_name(load_config("smoke", ["model.lifting=one_plane"]))
    assert run_name(load_config("smoke", ["train.run_name=mine"])) == "mine"

"""Non-finite numbers never reach the weights: a step with a NaN/Inf loss or gradient is skipped on
the device (weights, Adam moments and step count unchanged), finite steps still train."""

import itertools

import pytest
import torch
from train_fixtures import truth_pairs

from model.optim import build_optimizer, skip_update_if
from pipeline.config import load_config
from pipeline.data import MockPairSource, collate_pairs
from pipeline.step import build_train_state, train_step


@pytest.fixture(scope="module")
def cfg():
    return load_config("smoke", ["camera.image_size=32", "loss.box_size=32", "train.steps=4"])


@pytest.fixture(scope="module")
def batches(cfg):
    pairs = truth_pairs(cfg, clips=1, pairs_per_clip=4)
    stream = MockPairSource(pairs).iter_from(0)
    return [collate_pairs(list(itertools.islice(stream, 2))) for _ in range(3)]


def _snapshot(state):
    params = {n: p.detach().clone() for n, p in state.network.named_parameters()}
    optim = [v.clone() for s in state.optimizer.state.values() for v in (s["exp_avg"], s["exp_avg_sq"], s["step"])]
    return params, optim


def test_a_nan_step_changes_nothing_and_training_goes_on(cfg, batches):
    torch.manual_seed(0)
    state = build_train_state(cfg, torch.device("cpu"))
    losses, _ = train_step(state, batches[0])
    assert losses["skipped_step"].item() == 0.0 and torch.isfinite(losses["grad_norm"])
    params, optim_state = _snapshot(state)
    poisoned = batches[1]
    poisoned.target_params[0, 305] = float("nan")  # an expression coefficient of the target
    losses, _ = train_step(state, poisoned)
    assert losses["skipped_step"].item() == 1.0
    after, optim_after = _snapshot(state)
    assert all(torch.equal(params[n], after[n]) for n in params)
    assert all(torch.equal(a, b) for a, b in zip(optim_state, optim_after))  # moments and step count too
    losses, _ = train_step(state, batches[2])
    assert losses["skipped_step"].item() == 0.0
    assert any(not torch.equal(params[n], p) for n, p in state.network.named_parameters())


def test_skip_flag_is_applied_by_the_fused_optimizer():
    layer = torch.nn.Linear(3, 2)
    optimizer, _ = build_optimizer(layer, load_config("smoke").optim)
    layer(torch.ones(1, 3)).sum().backward()
    before = [p.detach().clone() for p in layer.parameters()]
    skip_update_if(optimizer, torch.tensor(1.0))
    optimizer.step()
    assert all(torch.equal(a, b) for a, b in zip(before, layer.parameters()))
    assert optimizer.state[layer.weight]["step"].item() == 0
    skip_update_if(optimizer, torch.tensor(0.0))
    optimizer.step()
    assert not torch.equal(before[0], layer.weight.detach())

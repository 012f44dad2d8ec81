"""Validation during training: the spread of the refined images, and the warning for a run whose
renderer has collapsed to one flat colour (seen at 128² with lr 1e-3: losses finite, val PSNR
frozen at 10.8 from step 125 on, refined pixels ~3e-7)."""

from __future__ import annotations

import types

import torch
from train_fixtures import truth_pairs

import pipeline.train as train
from pipeline.config import load_config
from pipeline.step import build_train_state


def test_flat_refined_images_read_zero_spread_and_warn(monkeypatch):
    cfg = load_config("smoke")
    state = build_train_state(cfg, torch.device("cpu"))
    pairs = truth_pairs(cfg, clips=1, pairs_per_clip=4)
    val = train.validate(state, pairs, 0, 1, torch.device("cpu"))
    assert val["val/refined_std"] > 0.01  # a fresh model's images are not flat
    assert train.flat_output_warning(val, 10) is None

    def flat(state, batch):
        b, _, h, w = batch.source_image.shape
        size = state.config.camera.image_size
        return types.SimpleNamespace(refined=torch.full((b, 3, size, size), 3e-7))

    monkeypatch.setattr(train, "predict", flat)
    val = train.validate(state, pairs, 0, 1, torch.device("cpu"))
    assert val["val/refined_std"] < 1e-6
    message = train.flat_output_warning(val, 125)
    assert message.startswith("step 125: every validation image is one flat colour")

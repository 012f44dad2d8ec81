"""Shared fixtures. GPU tests (``@pytest.mark.gpu``) are skipped where CUDA is absent."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # keep Ray on 127.0.0.1
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (run on the GPU machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def head_assets():
    """The generated stand-in FLAME head (cached under .cache/)."""
    from model.procedural_head import load_generated_head

    return load_generated_head()


@pytest.fixture(scope="session")
def flame(head_assets):
    from model.flame import FlameModel

    return FlameModel(head_assets)

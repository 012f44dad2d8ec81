"""Deterministic run names: one name per resolved config, reused for the storage folder, the wandb
run and the row of a results table. Fields that do not change what is trained are left out."""

from __future__ import annotations

import hashlib
import json
import re

from .config import ExperimentConfig
from .configtools import to_dict

# where and how a run is stored or logged does not change what it trains
_VOLATILE = {
    # train.steps is left out too: resubmitting with more steps continues the same run
    "train": {"storage_path", "run_name", "wandb_project", "max_failures", "keep_checkpoints", "log_every",
              "image_every", "collective_timeout_s", "checkpoint_every", "val_every", "val_pairs", "steps"},
    "eval": None,  # the whole eval section
    "synthetic": None,
    "preprocess": None,
}


def config_fingerprint(cfg: ExperimentConfig) -> str:
    data = to_dict(cfg)
    for section, keys in _VOLATILE.items():
        if keys is None:
            data.pop(section, None)
        else:
            for key in keys:
                data.get(section, {}).pop(key, None)
    blob = json.dumps(data, sort_keys=True).encode()
    return hashlib.sha1(blob).hexdigest()[:8]


def run_name(cfg: ExperimentConfig) -> str:
    """``train.run_name`` when set, else ``<name>-<fingerprint>`` (safe for paths and wandb)."""
    if cfg.train.run_name:
        return cfg.train.run_name
    base = re.sub(r"[^A-Za-z0-9_.-]+", "-", cfg.name).strip("-") or "run"
    return f"{base}-{config_fingerprint(cfg)}"

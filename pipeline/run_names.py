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
    # train.steps is left out too: resubmitting with more steps continues the same run; so are the
    # resources (workers, CPUs, GPU, compile): a run may resume on other hardware
    "train": {"storage_path", "run_name", "wandb_project", "max_failures", "keep_checkpoints", "log_every",
              "image_every", "collective_timeout_s", "checkpoint_every", "val_every", "val_pairs", "steps",
              "num_workers", "cpus_per_worker", "use_gpu", "compile", "cudnn_benchmark", "max_skipped_steps"},
    "data": {"num_workers", "max_bad_samples", "max_bad_shards"},
    "eval": None,  # the whole eval section
    "synthetic": None,
    "preprocess": None,
}


def trained_config(cfg: ExperimentConfig) -> dict:
    """The config as a plain dict without the fields that do not change what is trained."""
    data = to_dict(cfg)
    for section, keys in _VOLATILE.items():
        if keys is None:
            data.pop(section, None)
        else:
            for key in keys:
                data.get(section, {}).pop(key, None)
    return data


def config_fingerprint(cfg: ExperimentConfig) -> str:
    blob = json.dumps(trained_config(cfg), sort_keys=True).encode()
    return hashlib.sha1(blob).hexdigest()[:8]


def run_name(cfg: ExperimentConfig) -> str:
    """``train.run_name`` when set, else ``<name>-<fingerprint>`` (safe for paths and wandb)."""
    if cfg.train.run_name:
        return cfg.train.run_name
    base = re.sub(r"[^A-Za-z0-9_.-]+", "-", cfg.name).strip("-") or "run"
    return f"{base}-{config_fingerprint(cfg)}"

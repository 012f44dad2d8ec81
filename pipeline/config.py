"""The experiment config tree: one frozen dataclass per component, loaded from a YAML preset
(``configs/<preset>.yaml``) plus ``--set a.b=c`` overrides. Every run writes its resolved config."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import yaml

from model.config import (
    CameraConfig,
    FlameConfig,
    LossConfig,
    ModelConfig,
    OptimConfig,
    RasterizerConfig,
)
from preprocessing.config import PreprocessConfig, SyntheticDataConfig

from .configtools import deep_merge, from_dict, load_preset_dict, parse_override, to_dict


@dataclass(frozen=True)
class DataConfig:
    """Where training/evaluation pairs come from (local folders or s3:// prefixes of tars)."""

    train_shards: str = ""
    val_shards: str = ""
    test_self_shards: str = ""
    test_cross_shards: str = ""
    batch_size: int = 8  # per step, all workers together
    shuffle_buffer: int = 256
    loader: Literal["webdataset", "ray_data"] = "webdataset"
    num_workers: int = 2  # decode workers per training worker


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 200_000
    num_workers: int = 1
    use_gpu: bool = True  # falls back to CPU when the cluster has no GPU
    cpus_per_worker: int = 8
    precision: Literal["bf16", "fp32"] = "bf16"
    compile: bool = False
    storage_path: str = "outputs/runs"
    run_name: str = ""  # empty: derived from the config (deterministic)
    checkpoint_every: int = 5_000
    keep_checkpoints: int = 3
    max_failures: int = 3
    log_every: int = 50
    image_every: int = 1_000
    val_every: int = 10_000
    val_pairs: int = 16
    init_from: str = ""  # weights to start from (ours or the official GAGAvatar.pt)
    wandb_project: str = "gagavatar"
    collective_timeout_s: int = 1800


@dataclass(frozen=True)
class EvalConfig:
    checkpoint: str = ""
    output_dir: str = ""  # empty: next to the checkpoint
    max_pairs_per_clip: int = 0  # 0: all
    batch_size: int = 4
    arcface_onnx: str | None = None  # CSIM network; dlib's face descriptor without it
    deep3d_weights: str | None = None  # AED/APD estimator; our FLAME tracker without it
    grid_pairs: int = 8


@dataclass(frozen=True)
class ExperimentConfig:
    name: str = "gagavatar"
    seed: int = 42
    camera: CameraConfig = field(default_factory=CameraConfig)
    flame: FlameConfig = field(default_factory=FlameConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    rasterizer: RasterizerConfig = field(default_factory=RasterizerConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    synthetic: SyntheticDataConfig = field(default_factory=SyntheticDataConfig)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


def load_config(preset: str | Path = "paper", overrides: Sequence[str] = ()) -> ExperimentConfig:
    """Preset (name under configs/ or a YAML path) + ``a.b=c`` overrides → ExperimentConfig."""
    data = load_preset_dict(preset)
    for text in overrides:
        data = deep_merge(data, parse_override(text))
    return from_dict(ExperimentConfig, data)


def config_from_dict(data: dict) -> ExperimentConfig:
    return from_dict(ExperimentConfig, data)


def save_config(cfg: ExperimentConfig, path: str | Path) -> Path:
    """Write the resolved config as YAML (loadable again with ``load_config(path)``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    return path

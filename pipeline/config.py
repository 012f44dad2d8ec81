"""The experiment config tree: one frozen dataclass per component, loaded from a YAML preset
(``pipeline/presets/<preset>.yaml``) plus ``--set a.b=c`` overrides. Every run writes its resolved config."""

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

from .configtools import (
    ConfigError,
    check_ranges,
    deep_merge,
    from_dict,
    load_preset_dict,
    parse_override,
    to_dict,
)


@dataclass(frozen=True)
class DataConfig:
    """Where training/evaluation pairs come from (local folders or s3:// prefixes of tars)."""

    train_shards: str = ""
    val_shards: str = ""
    test_self_shards: str = ""
    test_cross_shards: str = ""
    batch_size: int = 8  # per step, all workers together
    shuffle_shards: int = 4  # samples of this many shards are pooled and shuffled together (the shuffle buffer)
    num_workers: int = 2  # decode threads per training worker
    # bad data (pipeline/shard_reader.py): unusable samples and unreadable shards are skipped and
    # logged; the run stops with an error once more than this many were met (summed over ranks)
    max_bad_samples: int = 100
    max_bad_shards: int = 10


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 200_000
    num_workers: int = 1
    use_gpu: bool = True  # falls back to CPU when the cluster has no GPU
    cpus_per_worker: int = 8
    precision: Literal["bf16", "fp32"] = "bf16"
    # torch.compile the backbone/decoder, heads and StyleUNet (regions) on CUDA workers; a CPU
    # worker runs eagerly (inductor's C++ build would take minutes of a CPU run)
    compile: bool = True
    # inductor mode of that compile. "reduce-overhead" replays each region from CUDA graphs: the
    # default-mode step is host-bound (launches), 73.7 vs 54.8 pairs/s on an H200 with the same
    # losses (README "Measured", tests/test_compiled_step.py); "default" when graphs get in the way
    compile_mode: Literal["default", "reduce-overhead", "max-autotune-no-cudagraphs"] = "reduce-overhead"
    tf32: bool = True  # fp32 matmuls/convolutions on TF32 tensor cores (the released recipe's "high")
    cudnn_benchmark: bool = True  # cuDNN autotunes each convolution shape once (fixed shapes: ~2% faster)
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
    # steps whose loss or gradient was NaN/Inf are skipped (weights untouched); past this many the run stops
    max_skipped_steps: int = 100


@dataclass(frozen=True)
class EvalConfig:
    """Evaluation (``gaga-eval``, paper Table 1), reenactment (``gaga-reenact``) and the metric
    networks. Protocol and metric definitions: docs/evaluation.md. Missing network files fall back
    (random AlexNet, dlib descriptor, FLAME tracker) and every output says so."""

    checkpoint: str = ""  # our checkpoint directory (model.pt + config.yaml) or the released GAGAvatar.pt
    output_dir: str = ""  # empty: <checkpoint dir>/eval (a local folder or s3:// prefix)
    max_pairs_per_clip: int = 0  # 0: all; else the first N driving frames of each (source clip, driver clip)
    batch_size: int = 4  # pairs per render call
    precision: Literal["fp32", "bf16"] = "fp32"  # renderer autocast on GPU (metrics always run in fp32)
    seed: int = 0  # StyleUNet noise is seeded per batch from this and the batch's first key
    # protocol (docs/released_model.md, 'Evaluation protocol')
    metric_size: int = 512  # every image is resized to this before and after the alignment crop
    align_scale: float = 3.0  # alignment box side = align_scale × the five keypoints' extent
    csim_reference: Literal["source", "driver"] = "source"  # self-reenactment CSIM: result vs source identity
    expression_coefficients: int = 50  # AED (FLAME tracker): first N expression coefficients + jaw (3)
    # metric networks; unset: the fallback named in the results
    alexnet_weights: str | None = None  # LPIPS backbone (alexnet-owt-7be5be79.pth); unset: loss.alexnet_weights
    arcface_onnx: str | None = None  # CSIM network (insightface ArcFace .onnx); dlib's face descriptor without it
    # Ray resources
    render_actors: int = 0  # 0: one per GPU, one on a CPU-only cluster
    metric_actors: int = 0  # 0: the CPUs the readers and renderers leave (at least one)
    cpus_per_render_actor: float = 1.0
    cpus_per_metric_actor: float = 1.0
    cpus_per_reader: float = 0.5
    progress_bars: bool = False
    # outputs
    grid_pairs: int = 8  # pairs in grid.png (source | driver | result), self and cross alternating
    wandb_project: str = "gagavatar"  # empty: no wandb run (offline unless WANDB_MODE=online)
    # gaga-reenact
    optimized: bool = True  # on CUDA: bf16, channels-last, CUDA graphs (model.reenactment); eager fp32 elsewhere
    compile: bool = False  # also torch.compile the neural renderer (minutes of warm-up)
    # inductor mode of that compile: "max-autotune-no-cudagraphs" renders ~8% faster on an H100
    # after ~8 min of kernel tuning (docs/evaluation.md)
    compile_mode: str = "default"
    fps: int = 25  # output video frame rate when the driver has none
    side_by_side: bool = True  # gaga-reenact writes driver | result


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


# Ranges every loaded config is checked against, before anything runs (dotted-path patterns,
# fnmatch). Every number must be ≥ 0; these must be > 0; fractions lie in [0, 1].
POSITIVE = (
    "camera.*", "flame.*", "model.*", "rasterizer.*", "loss.box_size", "loss.box_expand", "loss.*chunk_size",
    "optim.eps", "optim.decay_steps", "data.batch_size", "data.shuffle_shards",
    "train.steps", "train.num_workers", "train.cpus_per_worker", "train.checkpoint_every", "train.log_every",
    "train.keep_checkpoints", "train.collective_timeout_s",
    "eval.batch_size", "eval.metric_size", "eval.align_scale", "eval.fps", "eval.cpus_per_*",
    "eval.expression_coefficients",
    "preprocess.crop.size", "preprocess.crop.scale", "preprocess.crop.keyframe_interval",
    "preprocess.sampling.min_frames", "preprocess.sampling.max_frames", "preprocess.sampling.samples_per_shard",
    "preprocess.sampling.pairs_per_target", "preprocess.sampling.jpeg_quality", "preprocess.resources.cpus_per_*",
    "preprocess.resources.gpus_per_tracker", "preprocess.tracking.max_frames_per_batch",
    "preprocess.tracking.robust_px", "preprocess.detection.max_side", "preprocess.detection.head_widen",
    "synthetic.identities", "synthetic.clips_per_identity", "synthetic.frames_per_clip", "synthetic.resolution",
    "synthetic.fps", "synthetic.supersample", "synthetic.head_fill",
)
FRACTIONS = ("optim.betas", "optim.final_lr_factor", "preprocess.resources.reserve_read_fraction",
             "preprocess.presence.min_visible", "preprocess.presence.min_box_overlap")
SIGNED = ("preprocess.detection.min_score",)  # dlib's HOG threshold may be negative


def check_config(cfg: ExperimentConfig) -> ExperimentConfig:
    """Ranges (POSITIVE, FRACTIONS, SIGNED) and the relations between fields; ConfigError names the
    key and the value."""
    check_ranges(cfg, POSITIVE, FRACTIONS, SIGNED)
    if cfg.data.batch_size % cfg.train.num_workers:
        raise ConfigError(f"data.batch_size={cfg.data.batch_size} is not divisible by train.num_workers="
                          f"{cfg.train.num_workers} (every worker takes an equal share of a step's pairs)")
    if cfg.preprocess.sampling.min_frames > cfg.preprocess.sampling.max_frames:
        raise ConfigError(f"preprocess.sampling.min_frames={cfg.preprocess.sampling.min_frames} > "
                          f"max_frames={cfg.preprocess.sampling.max_frames}")
    return cfg


def load_config(preset: str | Path = "paper", overrides: Sequence[str] = ()) -> ExperimentConfig:
    """Preset (a name under pipeline/presets/ or a YAML path) + ``a.b=c`` overrides → a checked ExperimentConfig."""
    data = load_preset_dict(preset)
    for text in overrides:
        data = deep_merge(data, parse_override(text))
    return check_config(from_dict(ExperimentConfig, data))


def config_from_dict(data: dict) -> ExperimentConfig:
    return check_config(from_dict(ExperimentConfig, data))


def save_config(cfg: ExperimentConfig, path: str | Path) -> Path:
    """Write the resolved config as YAML (loadable again with ``load_config(path)``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    return path

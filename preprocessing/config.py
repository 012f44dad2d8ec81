"""Configs of the preprocessing library (crop, detection, tracking, sampling, generated data)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SyntheticDataConfig:
    """The generated mini-VFHQ: identities × clips × frames of the stand-in head."""

    identities: int = 8
    clips_per_identity: int = 2
    frames_per_clip: int = 48
    resolution: int = 256
    fps: int = 25
    test_identities: int = 2  # the last ones form the test list
    seed: int = 0


@dataclass(frozen=True)
class CropConfig:
    scale: float = 1.65  # square side = scale · sqrt(w·h) of the (smoothed) face box
    size: int = 512  # output crop side
    ema_alpha: float = 0.03  # box smoothing across frames (GAGAvatar_track)
    keyframe_interval: int = 5  # detect every k-th frame, interpolate between


@dataclass(frozen=True)
class TrackingConfig:
    steps: int = 300
    lr_expression: float = 1.0e-2
    lr_pose: float = 5.0e-3
    lr_translation: float = 1.0e-2
    lr_shape: float = 5.0e-3
    shape_prior: float = 1.0e-3
    expression_prior: float = 1.0e-3
    smoothness: float = 1.0e-2
    device: str = "auto"  # auto: CUDA when present


@dataclass(frozen=True)
class SamplingConfig:
    min_frames: int = 25  # clips shorter than this are skipped (spec §3.3)
    max_frames: int = 75
    pairs_per_target: int = 1
    image_format: str = "jpg"  # jpg or png
    jpeg_quality: int = 95
    samples_per_shard: int = 256
    seed: int = 0


@dataclass(frozen=True)
class PreprocessConfig:
    detector: str = "dlib"  # dlib | sidecar (ground-truth landmarks of generated clips)
    landmarks: str = "dlib"  # dlib | sidecar
    matting_model: str | None = None  # without one the background is kept (and the manifest says so)
    crop: CropConfig = CropConfig()
    tracking: TrackingConfig = TrackingConfig()
    sampling: SamplingConfig = SamplingConfig()

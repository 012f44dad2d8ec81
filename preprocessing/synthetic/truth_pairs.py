"""Pair samples straight from a generated dataset's ground truth, skipping detection and tracking:
the exact FLAME codes and cameras the frames were rendered with. For tests, benchmarks and
debugging a model apart from the tracker (the preprocessing job is what real data goes through)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import webdataset as wds
from PIL import Image

from model.frame_params import FrameParams

from ..sample_format import encode_pair, sample_key
from ..sidecar import ClipGroundTruth, load_sidecar
from .video import read_video


def _landmark_bbox(landmarks: np.ndarray, size: float) -> np.ndarray:
    lo, hi = landmarks.min(0), landmarks.max(0)
    return np.clip(np.concatenate([lo, hi]) / size, 0.0, 1.0).astype(np.float32)


def clip_pairs(clip: str, frames: np.ndarray, truth: ClipGroundTruth, image_size: int, pairs: int,
               rng: np.random.Generator) -> list[dict]:
    """``pairs`` random (source, target) frame pairs of one clip (frames [K,H,W,3] uint8 with their
    ground truth), resized to ``image_size`` (square frames: the NDC focal is unchanged); ``bbox``
    is the box of the 68 landmarks."""
    scale = image_size / truth.image_size[0]
    images = [np.asarray(Image.fromarray(f).resize((image_size, image_size), Image.BILINEAR)) for f in frames]

    def params(k: int) -> FrameParams:
        return FrameParams(truth.shape, truth.expression[k], truth.pose[k], truth.eyes[k],
                           truth.transform_matrix[k], _landmark_bbox(truth.landmarks[k, :68] * scale, image_size))

    out = []
    for _ in range(pairs):
        src, tgt = (int(x) for x in rng.choice(len(frames), 2, replace=False))
        out.append({"key": sample_key(clip, src, tgt), "source": images[src], "target": images[tgt],
                    "source_params": params(src).pack(), "target_params": params(tgt).pack(),
                    "meta": {"clip": clip, "source_frame": src, "target_frame": tgt, "params": "ground truth"}})
    return out


def truth_pairs(dataset_dir: str | Path, image_size: int, clips: int = 2, pairs_per_clip: int = 8,
                split: str = "train", seed: int = 0) -> list[dict]:
    """Decoded pairs (``preprocessing.sample_format.decode_pair`` layout) of the first ``clips``
    clips of ``split`` of a generated dataset folder (see :func:`clip_pairs`)."""
    root = Path(dataset_dir)
    rng = np.random.default_rng(seed)
    samples = []
    for clip in (root / f"{split}.txt").read_text().split()[:clips]:
        truth = load_sidecar(root / "sidecars" / f"{clip}.npz")
        samples += clip_pairs(clip, read_video(root / "videos" / f"{clip}.mp4"), truth, image_size, pairs_per_clip, rng)
    return samples


def write_pair_shards(samples: list[dict], out_dir: str | Path, per_shard: int = 8, image_format: str = "png") -> list[str]:
    """Encode decoded pairs into ``out_dir/train-%06d.tar``; returns the shard paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(0, len(samples), per_shard):
        path = out_dir / f"train-{i // per_shard:06d}.tar"
        with wds.TarWriter(str(path)) as sink:
            for s in samples[i:i + per_shard]:
                sink.write(encode_pair(s["key"], s["source"], s["target"], FrameParams.unpack(s["source_params"]),
                                       FrameParams.unpack(s["target_params"]), s["meta"], image_format))
        paths.append(str(path))
    return paths

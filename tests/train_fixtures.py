"""Training pairs straight from the generated mini-VFHQ's ground truth (no tracking), decoded or as
WebDataset shards, for the training and evaluation tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import webdataset as wds
from PIL import Image

from pipeline.config import ExperimentConfig
from preprocessing.frame_params import FrameParams
from preprocessing.sample_format import encode_pair, sample_key
from preprocessing.sidecar import load_sidecar
from preprocessing.synthetic import ensure_dataset
from preprocessing.synthetic.video import read_video


def _bbox(landmarks: np.ndarray, size: float) -> np.ndarray:
    lo, hi = landmarks.min(0), landmarks.max(0)
    return np.clip(np.concatenate([lo, hi]) / size, 0.0, 1.0).astype(np.float32)


def truth_pairs(cfg: ExperimentConfig, clips: int = 2, pairs_per_clip: int = 8, seed: int = 0) -> list[dict]:
    """Decoded pair samples (preprocessing.sample_format.decode_pair layout) of the first ``clips``
    training clips, frames resized to ``camera.image_size``; sources are random other frames."""
    root = ensure_dataset(cfg.synthetic)
    clip_ids = (root / "train.txt").read_text().split()[:clips]
    size = cfg.camera.image_size
    rng = np.random.default_rng(seed)
    samples = []
    for clip in clip_ids:
        truth = load_sidecar(root / "sidecars" / f"{clip}.npz")
        frames = read_video(root / "videos" / f"{clip}.mp4")
        scale = size / truth.image_size[0]
        images = [np.asarray(Image.fromarray(f).resize((size, size), Image.BILINEAR)) for f in frames]

        def params(k: int) -> FrameParams:
            return FrameParams(truth.shape, truth.expression[k], truth.pose[k], truth.eyes[k],
                               truth.transform_matrix[k], _bbox(truth.landmarks[k, :68] * scale, size))

        for _ in range(pairs_per_clip):
            src, tgt = (int(x) for x in rng.choice(len(frames), 2, replace=False))
            samples.append({"key": sample_key(clip, src, tgt), "source": images[src], "target": images[tgt],
                            "source_params": params(src).pack(), "target_params": params(tgt).pack(),
                            "meta": {"clip": clip, "source_frame": src, "target_frame": tgt}})
    return samples


def write_shards(samples: list[dict], out_dir: Path, per_shard: int = 8) -> list[str]:
    """Encode decoded samples into ``out_dir/train-%06d.tar`` shards; returns their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(0, len(samples), per_shard):
        path = out_dir / f"train-{i // per_shard:06d}.tar"
        with wds.TarWriter(str(path)) as sink:
            for s in samples[i:i + per_shard]:
                sink.write(encode_pair(s["key"], s["source"], s["target"], FrameParams.unpack(s["source_params"]),
                                       FrameParams.unpack(s["target_params"]), s["meta"], "png"))
        paths.append(str(path))
    return paths

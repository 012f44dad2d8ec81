"""Training pairs from the generated mini-VFHQ's ground truth (no tracking), for the training tests."""

from __future__ import annotations

from pathlib import Path

from pipeline.config import ExperimentConfig
from preprocessing.synthetic import ensure_dataset
from preprocessing.synthetic.truth_pairs import truth_pairs as _truth_pairs
from preprocessing.synthetic.truth_pairs import write_pair_shards


def truth_pairs(cfg: ExperimentConfig, clips: int = 2, pairs_per_clip: int = 8, seed: int = 0) -> list[dict]:
    return _truth_pairs(ensure_dataset(cfg.synthetic), cfg.camera.image_size, clips, pairs_per_clip, seed=seed)


def write_shards(samples: list[dict], out_dir: Path, per_shard: int = 8) -> list[str]:
    return write_pair_shards(samples, out_dir, per_shard)

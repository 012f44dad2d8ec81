"""Ground-truth pair shards of generated clips, made in memory: no video files, no detection, no
tracking — the benchmarks' data on GPU machines, which have neither video codecs nor face
detectors (real data goes through ``gaga-preprocess``).

    python -m bench._pair_shards --out outputs/bench_data

writes ``train/`` (``--identities`` identities, ``--pairs`` random pairs of each one's clip, JPEG)
and ``source/`` (two pairs of one more, held-out identity, PNG: a ``--source`` for
``bench.reenact_fps``). With the defaults this is the data of the trained-weights reenactment
measurement (docs/evaluation.md, "Speed"):

    gaga-train --config paper --name trained-generated --set data.train_shards=outputs/bench_data/train \\
        --set train.steps=1000 --set train.compile=false
    python -m bench.reenact_fps --checkpoint outputs/runs/trained-generated --source outputs/bench_data/source
"""

from __future__ import annotations

import argparse
import json
import os
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from preprocessing.config import SyntheticDataConfig
from preprocessing.synthetic import generate_clip
from preprocessing.synthetic.truth_pairs import clip_pairs, write_pair_shards


def identity_pairs(cfg: SyntheticDataConfig, identity: int, pairs: int, rng: np.random.Generator) -> list[dict]:
    """``pairs`` random (source, target) pairs of the first clip of ``identity``, at the generator's size."""
    clip = generate_clip(cfg, identity, 0)
    return clip_pairs(clip.clip_id, clip.frames, clip.truth, cfg.resolution, pairs, rng)


def make_shards(out_dir: Path, size: int, clips: int = 2, frames: int = 24, pairs_per_clip: int = 32) -> str:
    """Pairs of ``clips`` identities at ``size``² as JPEG shards in ``out_dir`` (one random stream)."""
    cfg = SyntheticDataConfig(identities=clips, clips_per_identity=1, frames_per_clip=frames, resolution=size,
                              test_identities=0)
    rng = np.random.default_rng(0)
    samples = [s for identity in range(clips) for s in identity_pairs(cfg, identity, pairs_per_clip, rng)]
    write_pair_shards(samples, out_dir, per_shard=16, image_format="jpg")
    return str(out_dir)


def _pairs_of(job: tuple[SyntheticDataConfig, int, int]) -> list[dict]:
    cfg, identity, pairs = job
    return identity_pairs(cfg, identity, pairs, np.random.default_rng(identity))  # a stream per identity


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--identities", type=int, default=12, help="training identities (one more is held out)")
    p.add_argument("--frames", type=int, default=24, help="frames per clip")
    p.add_argument("--pairs", type=int, default=96, help="pairs per training identity")
    p.add_argument("--processes", type=int, default=os.cpu_count() or 1,
                   help="clips generated at once (the output does not depend on it: a random stream per identity)")
    args = p.parse_args(argv)
    start = time.perf_counter()
    cfg = SyntheticDataConfig(identities=args.identities + 1, clips_per_identity=1, frames_per_clip=args.frames,
                              resolution=args.size, test_identities=0)
    jobs = [(cfg, i, args.pairs if i < args.identities else 2) for i in range(args.identities + 1)]
    with ProcessPoolExecutor(max(1, args.processes)) as pool:
        parts = list(pool.map(_pairs_of, jobs))
    train = [s for part in parts[:-1] for s in part]
    write_pair_shards(train, args.out / "train", per_shard=64, image_format="jpg")
    write_pair_shards(parts[-1], args.out / "source", per_shard=8, image_format="png")
    print(json.dumps({"train": str(args.out / "train"), "pairs": len(train), "source": str(args.out / "source"),
                      "source_clip": parts[-1][0]["meta"]["clip"], "seconds": round(time.perf_counter() - start, 1)}))


if __name__ == "__main__":
    main()

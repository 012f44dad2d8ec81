"""Frame selection and (source → target) pairs (docs/released_model.md, Training recipe), and their deterministic grouping into
shards. Everything here is a pure function of clip ids, frame ids and a seed: a rerun plans the
same shards with the same samples in the same order.

- Frames: at most ``max_frames`` per clip, evenly spaced, first frame always kept (25–75 in the paper).
- ``train``: every kept frame is a target; its source(s) are drawn uniformly from the clip's other
  kept frames (``pairs_per_target`` each), from an RNG seeded by (seed, clip id).
- ``test_self``: each test clip's first kept frame is the source, its other kept frames the
  targets (drivers).
- ``test_cross``: test clips sorted by id, wrap-around. ``loader`` (the official TrackedData): the
  targets are clip i's non-first frames, the source clip i+1's first frame. ``spec``: clip i's first
  frame is the source, clip i+1's non-first frames the targets.
"""

from __future__ import annotations

import hashlib
import zlib
from dataclasses import dataclass

import numpy as np

from .sample_format import sample_key

SPLITS = ("train", "test_self", "test_cross")


def select_frames(num_frames: int, max_frames: int) -> np.ndarray:
    """Indices of the kept frames: all when ``num_frames <= max_frames``, else ``max_frames``
    evenly spaced from the first to the last."""
    if num_frames <= max_frames or max_frames <= 0:
        return np.arange(num_frames, dtype=np.int64)
    return np.unique(np.round(np.linspace(0, num_frames - 1, max_frames)).astype(np.int64))


@dataclass(frozen=True)
class Pair:
    split: str
    source_clip: str
    source_frame: int
    target_clip: str
    target_frame: int

    @property
    def key(self) -> str:
        """``{clip}_{src:06d}_{tgt:06d}``; cross-identity pairs name both clips ``{src}_{tgt}``."""
        clip = self.source_clip if self.source_clip == self.target_clip else f"{self.source_clip}_{self.target_clip}"
        return sample_key(clip, self.source_frame, self.target_frame)


def clip_rng(seed: int, clip_id: str) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(clip_id.encode())])


def train_pairs(clip_id: str, frame_ids: np.ndarray, pairs_per_target: int, seed: int) -> list[Pair]:
    """Each frame as target, sources uniform over the clip's other frames; order shuffled."""
    frame_ids = [int(f) for f in frame_ids]
    if len(frame_ids) < 2:
        return []
    rng = clip_rng(seed, clip_id)
    pairs = []
    for i, target in enumerate(frame_ids):
        for _ in range(pairs_per_target):
            j = int(rng.integers(len(frame_ids) - 1))
            source = frame_ids[j if j < i else j + 1]
            pairs.append(Pair("train", clip_id, source, clip_id, target))
    order = rng.permutation(len(pairs))
    return [pairs[i] for i in order]


def self_pairs(clip_id: str, frame_ids: np.ndarray) -> list[Pair]:
    frame_ids = sorted(int(f) for f in frame_ids)
    return [Pair("test_self", clip_id, frame_ids[0], clip_id, t) for t in frame_ids[1:]]


def cross_pairs(clips: dict[str, np.ndarray], pairing: str = "loader") -> list[Pair]:
    """Cross-identity pairs over the test clips (id → kept frame ids); none with fewer than 2 clips."""
    ids = sorted(clips)
    if len(ids) < 2:
        return []
    pairs = []
    for i, clip in enumerate(ids):
        other = ids[(i + 1) % len(ids)]
        if pairing == "loader":
            source_clip, target_clip = other, clip
        elif pairing == "paper":
            source_clip, target_clip = clip, other
        else:
            raise ValueError(f"sampling.cross_pairing {pairing!r}: use loader or paper")
        source = min(int(f) for f in clips[source_clip])
        targets = sorted(int(f) for f in clips[target_clip])[1:]
        pairs += [Pair("test_cross", source_clip, source, target_clip, t) for t in targets]
    return pairs


def clip_order(clip_ids: list[str], seed: int) -> list[str]:
    """A seeded permutation of the clips (stable under adding/removing other clips), so that
    consecutive training samples in a shard come from unrelated identities."""
    return sorted(clip_ids, key=lambda c: hashlib.sha256(f"{seed}:{c}".encode()).hexdigest())


@dataclass(frozen=True)
class ShardPlan:
    split: str
    index: int
    pairs: tuple[Pair, ...]

    @property
    def name(self) -> str:
        return f"{self.split}-{self.index:06d}.tar"

    @property
    def clips(self) -> tuple[str, ...]:
        return tuple(sorted({p.source_clip for p in self.pairs} | {p.target_clip for p in self.pairs}))

    def digest(self) -> str:
        """Identity of the planned content (keys in order); the shard bytes also depend on the
        clips' tracked outputs, which a rerun does not change."""
        return hashlib.sha256("\n".join(p.key for p in self.pairs).encode()).hexdigest()


def plan_shards(split: str, pairs: list[Pair], samples_per_shard: int) -> list[ShardPlan]:
    """Consecutive runs of ``samples_per_shard`` pairs, in the given order. Train pairs come
    grouped by clip (each shard reads only a few clips), clips in :func:`clip_order`."""
    n = max(1, int(samples_per_shard))
    return [ShardPlan(split, i // n, tuple(pairs[i:i + n])) for i in range(0, len(pairs), n)]


def plan_all(clips: dict[str, tuple[str, np.ndarray]], pairs_per_target: int, seed: int, samples_per_shard: int,
             cross_pairing: str = "loader") -> dict[str, list[ShardPlan]]:
    """clip id → (split ``train``|``test``, kept frame ids) → shard plans per output split."""
    train = [c for c in clips if clips[c][0] == "train"]
    test = sorted(c for c in clips if clips[c][0] == "test")
    train_list: list[Pair] = []
    for clip in clip_order(train, seed):
        train_list += train_pairs(clip, clips[clip][1], pairs_per_target, seed)
    self_list = [p for clip in test for p in self_pairs(clip, clips[clip][1])]
    cross_list = cross_pairs({c: clips[c][1] for c in test}, cross_pairing)
    return {
        "train": plan_shards("train", train_list, samples_per_shard),
        "test_self": plan_shards("test_self", self_list, samples_per_shard),
        "test_cross": plan_shards("test_cross", cross_list, samples_per_shard),
    }

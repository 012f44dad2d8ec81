"""The manifest: one row per clip (``manifest.jsonl``), and the run summary (``summary.json``).

Status: ``ok`` (tracked, in the shards); ``skipped`` (the input cannot be used: empty/corrupt file,
no face, too short; a rerun keeps the verdict); ``failed`` (an error reading or processing it, e.g.
an unreadable S3 object; a rerun tries again when ``preprocess.retry_failed``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import statistics
from dataclasses import dataclass, field
from typing import Any

STATUSES = ("ok", "skipped", "failed")


@dataclass
class ClipRow:
    clip_id: str
    split: str  # train | test
    status: str = "ok"
    reason: str = ""  # why skipped/failed (names the file and the problem)
    source: str = ""  # the input URL
    frames_total: int = 0  # decoded frames after the frame-rate drop
    frames_kept: int = 0  # frames in the shards
    frames_dropped: int = 0  # selected frames left out (no usable face, cut, fit outlier)
    frames_dropped_by: dict[str, int] = field(default_factory=dict)  # the same by reason (preprocessing.clip)
    frame_ids: list[int] = field(default_factory=list)  # the kept frames (indices after the frame-rate drop)
    fps: float = 0.0
    residual_px: float | None = None  # median landmark reprojection error (68 iBUG), pixels at crop.size
    residual_px_512: float | None = None  # the same in pixels of a 512² crop
    matting: str = "none"
    detector: str = ""
    landmarks: str = ""
    config_hash: str = ""  # of the settings that shape this clip's outputs
    seconds: dict[str, float] = field(default_factory=dict)  # per stage
    truth: dict[str, float] | None = None  # accuracy vs the generator's ground truth (evaluation.py)
    kind: str = ""  # video | frames | still
    faces_max: int = 0  # most faces seen on one keyframe (>1: see notes for which one was kept)
    cuts: list[int] = field(default_factory=list)  # frames where a new shot starts (only one shot is kept)
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ClipRow:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    @classmethod
    def from_json(cls, text: str | bytes) -> ClipRow:
        return cls.from_dict(json.loads(text))

    @property
    def done(self) -> bool:
        """A verdict that a rerun keeps (ok or skipped)."""
        return self.status in ("ok", "skipped")


def config_hash(*parts: Any) -> str:
    """Short stable hash of dataclass configs / plain values."""
    plain = [dataclasses.asdict(p) if dataclasses.is_dataclass(p) else p for p in parts]
    return hashlib.sha256(json.dumps(plain, sort_keys=True, default=str).encode()).hexdigest()[:16]


# Settings that do not change a clip's crops or tracking (they only shape pairs and shards, or say
# where things are): changing them reuses the tracked clips.
_NOT_PER_CLIP = ("input", "output", "train_list", "test_list", "retry_failed", "resources")
_SAMPLING_NOT_PER_CLIP = ("pairs_per_target", "cross_pairing", "samples_per_shard", "seed")


def clip_config_hash(preprocess: Any, flame: Any, focal: float, *extra: Any) -> str:
    """Hash of everything that shapes one clip's outputs (crops, landmarks, tracking, FLAME, focal,
    and ``extra``: e.g. which detector ``auto`` stood for)."""
    data = dataclasses.asdict(preprocess)
    for key in _NOT_PER_CLIP:
        data.pop(key, None)
    for key in _SAMPLING_NOT_PER_CLIP:
        data["sampling"].pop(key, None)
    return config_hash(data, flame, focal, *extra)


def _sum_counts(counts: list[dict[str, int]]) -> dict[str, int]:
    total: dict[str, int] = {}
    for c in counts:
        for k, v in c.items():
            total[k] = total.get(k, 0) + int(v)
    return dict(sorted(total.items()))


def _median(values: list[float]) -> float | None:
    values = [v for v in values if v is not None]
    return float(statistics.median(values)) if values else None


def summarize(rows: list[ClipRow], shards: dict[str, list[dict[str, Any]]] | None = None) -> dict[str, Any]:
    """Counts by status and split, samples and shards per output split, median residual, and the
    medians of the ground-truth metrics over the clips that have them."""
    counts: dict[str, Any] = {s: sum(r.status == s for r in rows) for s in STATUSES}
    by_split: dict[str, dict[str, int]] = {}
    for r in rows:
        by_split.setdefault(r.split, {s: 0 for s in STATUSES})[r.status] += 1
    ok = [r for r in rows if r.status == "ok"]
    out: dict[str, Any] = {
        "clips": len(rows),
        "status": counts,
        "by_split": by_split,
        "frames_kept": sum(r.frames_kept for r in ok),
        "residual_px_median": _median([r.residual_px for r in ok]),
        "residual_px_512_median": _median([r.residual_px_512 for r in ok]),
        "reasons": {r.clip_id: r.reason for r in rows if r.status != "ok"},
        "frames_dropped_by": _sum_counts([r.frames_dropped_by for r in rows if r.status == "ok"]),
        "several_faces": {r.clip_id: next((n for n in r.notes if n.startswith("several faces")), "several faces")
                          for r in ok if r.faces_max > 1},
        "cuts": {r.clip_id: r.cuts for r in ok if r.cuts},
        "stills": sum(r.kind == "still" for r in ok),
    }
    truth = [r.truth for r in ok if r.truth]
    if truth:
        out["truth"] = {k: _median([t.get(k) for t in truth]) for k in sorted({k for t in truth for k in t})}
        out["truth"]["clips"] = len(truth)
    stage_names = sorted({k for r in ok for k in r.seconds})
    out["seconds_per_clip_median"] = {k: _median([r.seconds.get(k) for r in ok]) for k in stage_names}
    if shards is not None:
        out["shards"] = {split: len(items) for split, items in shards.items()}
        out["samples"] = {split: sum(int(s["samples"]) for s in items) for split, items in shards.items()}
    return out

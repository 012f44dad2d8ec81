"""Import data already tracked by the official GAGAvatar_track (docs/released_model.md, Tracker convention) into our clip format,
so it can be sharded like our own tracking output.

A GAGAvatar_track output folder holds ``img_lmdb/`` (an LMDB of JPEG-encoded 512² crops keyed
``'{video}_{frame}'``) and ``optim.pkl`` or ``smoothed.pkl`` (a dict with the same keys of numpy
arrays: shapecode [300], expcode [100], posecode [6], eyecode [6], transform_matrix [3, 4],
bbox [4]). The pickle is read with the project's restricted unpickler (numpy arrays only); image
payloads that are not JPEG/PNG (torch-saved tensors are pickles) are refused.

Splits: ``dataset.json`` beside it (the official ``{"train": [frame keys], "val": [...],
"test": [...]}``; its frame lists also restrict the frames used; ``val`` counts as test), else
``train.txt``/``test.txt`` of video ids, else everything is train.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from model.flame_assets import restricted_load
from model.frame_params import FrameParams

from .sample_format import encode_image
from .sampling import select_frames

PICKLES = ("optim.pkl", "smoothed.pkl")
_KEY = re.compile(r"^(?P<video>.+)_(?P<frame>\d+)$")
_BAD_ID_CHARS = re.compile(r"[^A-Za-z0-9+\-=_]")


class GagaTrackError(ValueError):
    """The folder is not usable GAGAvatar_track output; the message names the file."""


def clip_id_for(video: str) -> str:
    """A WebDataset-safe clip id for a tracker video id (no dots, spaces or slashes)."""
    return _BAD_ID_CHARS.sub("-", video)


def split_key(key: str) -> tuple[str, int]:
    """``'{video}_{frame}'`` → (video, frame); the video id may contain underscores."""
    match = _KEY.match(key)
    if not match:
        raise GagaTrackError(f"tracker key {key!r} is not '{{video}}_{{frame}}'")
    return match["video"], int(match["frame"])


def load_records(root: str | Path, prefer: str = "optim.pkl") -> tuple[dict[str, dict[str, np.ndarray]], Path]:
    """The tracking pickle (``prefer`` first, then the other) → ({key: record}, its path)."""
    root = Path(root)
    for name in (prefer, *[p for p in PICKLES if p != prefer]):
        path = root / name
        if path.is_file():
            data = restricted_load(path)
            if not isinstance(data, dict):
                raise GagaTrackError(f"{path}: expected a dict keyed '{{video}}_{{frame}}', got {type(data).__name__}")
            return data, path
    raise GagaTrackError(f"{root}: no {' or '.join(PICKLES)} (GAGAvatar_track output)")


def record_params(record: dict[str, Any], key: str) -> FrameParams:
    """One tracker record → FrameParams (validated shapes)."""
    names = {"shapecode": 300, "expcode": 100, "posecode": 6, "eyecode": 6, "transform_matrix": 12, "bbox": 4}
    values = {}
    for name, size in names.items():
        if name not in record:
            raise GagaTrackError(f"record {key!r}: missing {name} (has {sorted(record)})")
        value = np.asarray(record[name], np.float32).reshape(-1)
        if value.size != size:
            raise GagaTrackError(f"record {key!r}: {name} has {value.size} values, expected {size}")
        values[name] = value
    return FrameParams(shape=values["shapecode"], expression=values["expcode"], pose=values["posecode"],
                       eyes=values["eyecode"], transform_matrix=values["transform_matrix"].reshape(3, 4),
                       bbox=values["bbox"])


def read_splits(root: str | Path) -> tuple[dict[str, str], dict[str, set[int]] | None]:
    """video → ``train``/``test`` and, from dataset.json, video → the listed frame ids."""
    root = Path(root)
    listing = root / "dataset.json"
    if listing.is_file():
        data = json.loads(listing.read_text())
        splits: dict[str, str] = {}
        frames: dict[str, set[int]] = {}
        for split in ("train", "val", "test"):
            for key in data.get(split, []):
                video, frame = split_key(str(key))
                splits[video] = "train" if split == "train" else "test"
                frames.setdefault(video, set()).add(frame)
        return splits, frames
    splits = {}
    for split in ("train", "test"):
        path = root / f"{split}.txt"
        if path.is_file():
            for line in path.read_text().splitlines():
                if line.strip() and not line.startswith("#"):
                    splits[line.strip()] = split
    return splits, None


def group_by_video(keys: list[str]) -> dict[str, list[tuple[int, str]]]:
    """keys → video → [(frame, key)] sorted by frame."""
    out: dict[str, list[tuple[int, str]]] = {}
    for key in keys:
        video, frame = split_key(key)
        out.setdefault(video, []).append((frame, key))
    return {v: sorted(items) for v, items in sorted(out.items())}


class LmdbImages:
    """Read-only access to ``img_lmdb`` payloads."""

    def __init__(self, path: str | Path) -> None:
        import lmdb

        self.path = Path(path)
        if not (self.path / "data.mdb").is_file():
            raise GagaTrackError(f"{self.path}: not an LMDB folder (no data.mdb)")
        self.env = lmdb.open(str(self.path), readonly=True, lock=False, readahead=False, subdir=True)
        self.txn = self.env.begin(write=False)

    def get(self, key: str) -> bytes:
        payload = self.txn.get(key.encode())
        if payload is None:
            raise KeyError(f"{self.path}: no image for key {key!r}")
        return bytes(payload)

    def close(self) -> None:
        self.env.close()

    def __enter__(self) -> LmdbImages:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def image_payload(data: bytes, key: str, image_format: str, quality: int) -> tuple[bytes, tuple[int, int]]:
    """A stored crop as (bytes in ``image_format``, (H, W)); JPEG is copied, not re-encoded."""
    from PIL import Image

    if data[:2] == b"\xff\xd8":
        kind = "jpg"
    elif data[:8] == b"\x89PNG\r\n\x1a\n":
        kind = "png"
    else:
        raise GagaTrackError(f"image {key!r}: not JPEG or PNG (torch-saved payloads are pickles and are refused)")
    with Image.open(io.BytesIO(data)) as img:
        size = (img.height, img.width)
        if kind == image_format:
            return data, size
        return encode_image(np.asarray(img.convert("RGB")), image_format, quality), size


@dataclass
class ImportedClip:
    clip_id: str
    video: str
    split: str
    frame_ids: np.ndarray  # [K] the tracker's frame ids
    images: list[bytes]
    params: np.ndarray  # [K, 428]
    image_size: int
    image_format: str


def iter_clips(root: str | Path, image_format: str = "jpg", quality: int = 95, min_frames: int = 25,
               max_frames: int = 75, prefer: str = "optim.pkl") -> Iterator[ImportedClip | tuple[str, str, str]]:
    """Every video of a GAGAvatar_track folder: an ImportedClip, or (clip id, split, reason) when
    it has fewer than ``min_frames`` usable frames."""
    root = Path(root)
    records, _ = load_records(root, prefer)
    splits, listed = read_splits(root)
    with LmdbImages(root / "img_lmdb") as images:
        for video, items in group_by_video(list(records)).items():
            if listed is not None:
                if video not in listed:
                    continue
                items = [(f, k) for f, k in items if f in listed[video]]
            split = splits.get(video, "train" if not splits else "")
            clip = clip_id_for(video)
            if not split:
                yield clip, "", f"{video}: not in the split lists"
                continue
            if len(items) < min_frames:
                yield clip, split, f"{video}: too short: {len(items)} tracked frames < sampling.min_frames {min_frames}"
                continue
            keep = [items[i] for i in select_frames(len(items), max_frames)]
            payloads, sizes = zip(*(image_payload(images.get(k), k, image_format, quality) for _, k in keep))
            if len(set(sizes)) != 1 or sizes[0][0] != sizes[0][1]:
                raise GagaTrackError(f"{video}: crops must be square and of one size, got {sorted(set(sizes))}")
            params = np.stack([record_params(records[k], k).pack() for _, k in keep])
            yield ImportedClip(clip_id=clip, video=video, split=split, frame_ids=np.array([f for f, _ in keep], np.int64),
                               images=list(payloads), params=params, image_size=sizes[0][0], image_format=image_format)

"""Test shards for evaluation: listing the pairs of every tar (first pass), choosing which to
evaluate and which to show in the grid (driver side, deterministic), and reading the chosen
samples as Ray Data rows (images stay encoded until the render actors decode them).

Shards are the WebDataset pair samples of ``preprocessing.sample_format`` (test_self / test_cross
splits of ``gaga-preprocess``): ``meta.json`` names the source/target clip and frame.
"""

from __future__ import annotations

import io
import json
import re
import tarfile
from collections import defaultdict
from typing import Any

import numpy as np

from .. import storage

_KEY = re.compile(r"^(?P<clip>.+)_(?P<src>\d+)_(?P<tgt>\d+)$")
IMAGE_MEMBERS = ("jpg", "png", "jpeg")


def iter_tar(url: str, options: storage.S3Options | None = None):
    """Samples of one tar as ``{"__key__", "<member ext>": bytes}``, in file order (streamed)."""
    current: dict[str, Any] | None = None
    with storage.open_binary(url, options) as fh, tarfile.open(fileobj=fh, mode="r|*") as tar:
        for member in tar:
            if not member.isfile():
                continue
            key, _, ext = member.name.rsplit("/", 1)[-1].partition(".")
            data = tar.extractfile(member).read()
            if current is not None and current["__key__"] != key:
                yield current
                current = None
            if current is None:
                current = {"__key__": key}
            current[ext] = data
    if current is not None:
        yield current


def pair_identity(key: str, meta: dict[str, Any]) -> dict[str, Any]:
    """source/target clip and frame of a sample, from its meta.json (else parsed from the key:
    ``{clip}_{src}_{tgt}``, the same clip on both sides)."""
    if all(k in meta for k in ("source_clip", "target_clip", "source_frame", "target_frame")):
        return {"source_clip": str(meta["source_clip"]), "target_clip": str(meta["target_clip"]),
                "source_frame": int(meta["source_frame"]), "target_frame": int(meta["target_frame"])}
    m = _KEY.match(key)
    if m is None:
        raise ValueError(f"sample {key!r}: meta.json lacks source/target clip and frame, and the key is not "
                         "{clip}_{source frame}_{target frame}")
    return {"source_clip": m["clip"], "target_clip": m["clip"], "source_frame": int(m["src"]),
            "target_frame": int(m["tgt"])}


def _meta(sample: dict[str, Any]) -> dict[str, Any]:
    raw = sample.get("meta.json")
    return json.loads(raw) if raw else {}


def index_shard(item: dict[str, Any], options: storage.S3Options | None = None) -> list[dict[str, Any]]:
    """Ray Data flat_map: {url, split} → one row per sample (key, clips, frames; no images)."""
    rows = []
    for sample in iter_tar(item["url"], options):
        key = sample["__key__"]
        rows.append({"url": item["url"], "split": item["split"], "key": key, **pair_identity(key, _meta(sample))})
    return rows


def select_pairs(index: list[dict[str, Any]], max_per_clip: int, grid_pairs: int) -> tuple[dict[str, dict[str, bool]], int]:
    """Which pairs to evaluate: all, or the first ``max_per_clip`` driving frames of each
    (split, source clip, target clip); and which ``grid_pairs`` go into the grid (the first pair
    of successive clip groups, self and cross alternating). Returns {url: {key: in_grid}} and
    the number of pairs chosen. Deterministic: depends on the keys only."""
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = defaultdict(list)
    for row in index:
        groups[(row["split"], row["source_clip"], row["target_clip"])].append(row)
    chosen: list[dict[str, Any]] = []
    firsts: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for gkey in sorted(groups):
        rows = sorted(groups[gkey], key=lambda r: (r["target_frame"], r["key"]))
        if max_per_clip > 0:
            rows = rows[:max_per_clip]
        chosen.extend(rows)
        firsts[gkey[0]].append(rows[len(rows) // 2])  # a frame from the middle of the clip: more motion
    grid: set[str] = set()
    splits = sorted(firsts, key=lambda s: (s != "self", s))
    for i in range(max(map(len, firsts.values()), default=0)):
        for split in splits:
            if i < len(firsts[split]) and len(grid) < grid_pairs:
                grid.add(f"{split}/{firsts[split][i]['key']}")
    out: dict[str, dict[str, bool]] = defaultdict(dict)
    for row in chosen:
        out[row["url"]][row["key"]] = f"{row['split']}/{row['key']}" in grid
    return dict(out), len(chosen)


def read_selected(item: dict[str, Any], options: storage.S3Options | None = None) -> list[dict[str, Any]]:
    """Ray Data flat_map: {url, split, keys (JSON {key: in_grid})} → the chosen samples as rows with
    encoded images, float32 parameters and the pair's identity."""
    from model.frame_params import PARAM_SIZE

    wanted: dict[str, bool] = json.loads(item["keys"])
    rows = []
    for sample in iter_tar(item["url"], options):
        key = sample["__key__"]
        if key not in wanted:
            continue
        meta = _meta(sample)
        row: dict[str, Any] = {"key": key, "split": item["split"], "grid": bool(wanted[key]),
                               "flame": str(meta.get("flame", "unknown")), **pair_identity(key, meta)}
        for stem in ("source", "target"):
            image = next((sample[f"{stem}.{e}"] for e in IMAGE_MEMBERS if f"{stem}.{e}" in sample), None)
            if image is None or f"{stem}.params.npy" not in sample:
                raise ValueError(f"{item['url']}: sample {key} lacks {stem}.jpg|png or {stem}.params.npy")
            params = np.load(io.BytesIO(sample[f"{stem}.params.npy"]), allow_pickle=False)
            params = params.astype(np.float32).reshape(-1)
            if params.size != PARAM_SIZE:
                raise ValueError(f"{item['url']}: sample {key}: {stem}.params.npy has {params.size} values, "
                                 f"expected {PARAM_SIZE}")
            row[stem] = image
            row[f"{stem}_params"] = params
        rows.append(row)
    missing = set(wanted) - {r["key"] for r in rows}
    if missing:
        raise ValueError(f"{item['url']}: {len(missing)} indexed samples vanished on re-read (e.g. {sorted(missing)[0]})")
    return rows

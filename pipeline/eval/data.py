"""Test shards for evaluation: listing the pairs of every tar (first pass), choosing which to
evaluate and which to show in the grid (driver side, deterministic), and reading the chosen
samples as Ray Data rows (images stay encoded until the render actors decode them).

Shards are the WebDataset pair samples of ``preprocessing.sample_format`` (test_self / test_cross
splits of ``gaga-preprocess``): ``meta.json`` names the source/target clip and frame. They are read
by ``pipeline.shard_reader`` and checked like training data (``decode_pair``); what cannot be used
is skipped and listed in the results (``skipped``), as in training (docs/reliability.md).
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from typing import Any

from preprocessing.sample_format import SampleError, decode_pair, pair_params
from preprocessing.shards import ShardReadError

from .. import storage
from ..shard_reader import shard_samples

_KEY = re.compile(r"^(?P<clip>.+)_(?P<src>\d+)_(?P<tgt>\d+)$")
IMAGE_MEMBERS = ("jpg", "png", "jpeg")


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


def _row(item: dict[str, Any], key: str, error: str, identity: dict[str, Any] | None = None) -> dict[str, Any]:
    identity = identity or {"source_clip": "", "target_clip": "", "source_frame": -1, "target_frame": -1}
    return {"url": item["url"], "split": item["split"], "key": key, "error": error, **identity}


def index_shard(item: dict[str, Any], options: storage.S3Options | None = None) -> list[dict[str, Any]]:
    """Ray Data flat_map: {url, split} → one row per sample (key, clips, frames, ``error``: why the
    sample cannot be evaluated, "" when it can). Every sample is checked as training checks it; a
    shard that cannot be read to its end gives one error row (key ``""``) after its readable samples."""
    rows = []
    try:
        for sample in shard_samples(item["url"], options):
            key = sample["__key__"]
            try:
                decoded = decode_pair(sample)
                rows.append(_row(item, key, "", pair_identity(key, decoded["meta"])))
            except (SampleError, ValueError) as exc:
                rows.append(_row(item, key, str(exc) if isinstance(exc, SampleError) else f"{item['url']}: {exc}"))
    except ShardReadError as exc:
        rows.append(_row(item, "", str(exc)))
    return rows


def select_pairs(index: list[dict[str, Any]], max_per_clip: int, grid_pairs: int) -> tuple[dict[str, dict[str, bool]], int]:
    """Which pairs to evaluate: all, or the first ``max_per_clip`` driving frames of each
    (split, source clip, target clip); and which ``grid_pairs`` go into the grid (the first pair
    of successive clip groups, self and cross alternating). Returns {url: {key: in_grid}} and
    the number of pairs chosen. Deterministic: depends on the keys only."""
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = defaultdict(list)
    for row in index:
        if row.get("error"):
            continue
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
    wanted: dict[str, bool] = json.loads(item["keys"])
    rows = []
    for sample in shard_samples(item["url"], options):
        key = sample["__key__"]
        if key not in wanted:
            continue
        meta = _meta(sample)
        row: dict[str, Any] = {"key": key, "split": item["split"], "grid": bool(wanted[key]),
                               "flame": str(meta.get("flame", "unknown")), **pair_identity(key, meta)}
        params = pair_params(sample)  # the whole sample was checked by index_shard
        for stem, values in zip(("source", "target"), params):
            row[stem] = next(sample[f"{stem}.{e}"] for e in IMAGE_MEMBERS if f"{stem}.{e}" in sample)
            row[f"{stem}_params"] = values
        rows.append(row)
    missing = set(wanted) - {r["key"] for r in rows}
    if missing:
        raise ValueError(f"{item['url']}: {len(missing)} indexed samples vanished on re-read (e.g. {sorted(missing)[0]})")
    return rows

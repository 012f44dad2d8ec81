"""Import data already tracked by the official GAGAvatar_track (``img_lmdb`` + ``optim.pkl`` /
``smoothed.pkl``, a local folder) into our clip files and shards, like our own tracking output
(``gaga-preprocess --import-gagatrack DIR``). Reading the tracker's files is
``preprocessing.gagatrack_import``; this writes the clip artifacts and rows and then runs the
same shard stage as ``pipeline.preprocess``."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from preprocessing.manifest import ClipRow

from . import storage
from .config import ExperimentConfig
from .preprocess import finalize, make_settings


def run_import_gagatrack(cfg: ExperimentConfig, source_dir: str, output: str | None = None) -> dict[str, Any]:
    """Shard a GAGAvatar_track output folder; returns the summary (also ``<output>/summary.json``)."""
    from preprocessing.gagatrack_import import iter_clips
    from preprocessing.shards import encode_frames, encode_track

    t0 = time.perf_counter()
    settings = make_settings(cfg, output)
    s = cfg.preprocess.sampling
    rows: list[ClipRow] = []
    sizes = set()
    for item in iter_clips(source_dir, s.image_format, s.jpeg_quality, s.min_frames, s.max_frames):
        if isinstance(item, tuple):
            clip, split, reason = item
            row = ClipRow(clip, split, "skipped", reason, source=source_dir, config_hash="gagatrack")
        else:
            k = len(item.frame_ids)
            nan = np.full((k,), np.nan, np.float32)
            storage.write_bytes(settings.clip_url(item.clip_id, ".frames.tar"),
                                encode_frames(item.clip_id, item.frame_ids, item.images, item.image_format), settings.s3)
            storage.write_bytes(settings.clip_url(item.clip_id, ".track.npz"), encode_track(
                frame_ids=item.frame_ids, params=item.params, landmarks=np.zeros((k, 70, 2), np.float32),
                fitted=np.zeros((k, 70, 2), np.float32), residual_px=nan, crop_boxes=np.full((k, 3), np.nan, np.float32),
            ), settings.s3)
            row = ClipRow(item.clip_id, item.split, "ok", source=f"{source_dir}#{item.video}", frames_total=k,
                          frames_kept=k, frame_ids=[int(f) for f in item.frame_ids], matting="gagavatar_track",
                          detector="gagavatar_track", landmarks="gagavatar_track", config_hash="gagatrack")
            sizes.add(item.image_size)
        storage.write_text(settings.clip_url(row.clip_id, ".json"), row.to_json(), settings.s3)
        rows.append(row)
    if len(sizes) > 1:
        raise ValueError(f"{source_dir}: crops of several sizes {sorted(sizes)}")
    rows.sort(key=lambda r: r.clip_id)
    extra = {"input": source_dir, "imported_from": "GAGAvatar_track", "clips_processed": len(rows), "clips_reused": 0,
             "image_size": sizes.pop() if sizes else cfg.preprocess.crop.size, "clip_seconds": time.perf_counter() - t0}
    return finalize(settings, rows, extra)

"""Writing WebDataset tars reproducibly, and the per-clip artifacts that shards are assembled from.

Tars are written by ``webdataset.TarWriter`` with a fixed mtime, owner and mode: the same samples
give the same bytes, so a rerun produces identical shards. Members of a sample are adjacent, keys
contain no dots, nothing is pickled.

Per-clip artifacts (``clips/`` of the output, written once per clip, read by the shard writers):
  ``{clip}.frames.tar``  one sample per kept frame, key ``{clip}_{frame:06d}``, member ``jpg``|``png``
  ``{clip}.track.npz``   frame_ids [K], params [K, 428], landmarks [K, 70, 2] (input, crop px),
                         fitted [K, 70, 2], residual_px [K], crop_boxes [K, 3] (x0, y0, side; frame px)
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable, Mapping
from typing import Any, BinaryIO

import numpy as np

from model.frame_params import PARAM_SIZE

from .sample_format import encode_array
from .sampling import Pair

TAR_MTIME = 0.0  # fixed so that identical samples give identical bytes
TAR_USER = "gaga"


def write_tar(fileobj: BinaryIO, samples: Iterable[Mapping[str, Any]]) -> int:
    """Write samples (``__key__`` + member bytes) as an uncompressed tar; returns the count."""
    import webdataset as wds

    count = 0
    with wds.TarWriter(fileobj, user=TAR_USER, group=TAR_USER, mode=0o444, encoder=False, mtime=TAR_MTIME) as writer:
        for sample in samples:
            writer.write(dict(sample))
            count += 1
    return count


def tar_bytes(samples: Iterable[Mapping[str, Any]]) -> bytes:
    buf = io.BytesIO()
    write_tar(buf, samples)
    return buf.getvalue()


def read_tar(data: bytes) -> dict[str, dict[str, bytes]]:
    """Tar bytes → {key: {member extension: bytes}} (WebDataset's key/extension split at the first dot)."""
    import tarfile

    out: dict[str, dict[str, bytes]] = {}
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        for member in tar:
            if not member.isfile():
                continue
            base = member.name.rsplit("/", 1)[-1]
            key, _, ext = base.partition(".")
            handle = tar.extractfile(member)
            if handle is not None:
                out.setdefault(key, {})[ext] = handle.read()
    return out


def frame_key(clip_id: str, frame: int) -> str:
    return f"{clip_id}_{int(frame):06d}"


def encode_frames(clip_id: str, frame_ids: np.ndarray, images: list[bytes], image_format: str) -> bytes:
    if len(frame_ids) != len(images):
        raise ValueError(f"{clip_id}: {len(frame_ids)} frame ids for {len(images)} images")
    return tar_bytes({"__key__": frame_key(clip_id, f), image_format: img} for f, img in zip(frame_ids, images))


def decode_frames(clip_id: str, data: bytes) -> dict[int, tuple[str, bytes]]:
    """``{clip}.frames.tar`` bytes → frame id → (extension, image bytes)."""
    out = {}
    prefix = f"{clip_id}_"
    for key, members in read_tar(data).items():
        if not key.startswith(prefix) or len(members) != 1:
            raise ValueError(f"{clip_id}.frames.tar: unexpected sample {key!r} with members {sorted(members)}")
        (ext, payload), = members.items()
        out[int(key[len(prefix):])] = (ext, payload)
    return out


TRACK_ARRAYS = ("frame_ids", "params", "landmarks", "fitted", "residual_px", "crop_boxes")


def encode_track(**arrays: np.ndarray) -> bytes:
    missing = set(TRACK_ARRAYS) - set(arrays)
    if missing:
        raise ValueError(f"track arrays missing: {sorted(missing)}")
    if arrays["params"].shape[-1] != PARAM_SIZE:
        raise ValueError(f"params must be [K, {PARAM_SIZE}], got {arrays['params'].shape}")
    buf = io.BytesIO()
    np.savez(buf, **{k: np.ascontiguousarray(arrays[k]) for k in TRACK_ARRAYS})  # zip entries carry no timestamps
    return buf.getvalue()


def decode_track(data: bytes, name: str = "track.npz") -> dict[str, np.ndarray]:
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            return {k: npz[k] for k in TRACK_ARRAYS}
    except (OSError, KeyError, ValueError) as exc:
        raise ValueError(f"{name}: not a tracked-clip file ({exc})") from exc


def pair_sample(pair: Pair, source: tuple[str, bytes], target: tuple[str, bytes], source_params: np.ndarray,
                target_params: np.ndarray, meta: Mapping[str, Any]) -> dict[str, Any]:
    """One WebDataset pair sample in preprocessing.sample_format's layout, from already-encoded
    crops (no JPEG re-encoding): ``source.{ext}``, ``target.{ext}``, ``*.params.npy``, ``meta.json``."""
    (src_ext, src_img), (tgt_ext, tgt_img) = source, target
    full_meta = {
        **meta,
        "split": pair.split,
        "source_clip": pair.source_clip, "source_frame": pair.source_frame,
        "target_clip": pair.target_clip, "target_frame": pair.target_frame,
    }
    return {
        "__key__": pair.key,
        f"source.{src_ext}": src_img,
        f"target.{tgt_ext}": tgt_img,
        "source.params.npy": encode_array(np.asarray(source_params, np.float32).reshape(PARAM_SIZE)),
        "target.params.npy": encode_array(np.asarray(target_params, np.float32).reshape(PARAM_SIZE)),
        "meta.json": json.dumps(full_meta, sort_keys=True).encode(),
    }

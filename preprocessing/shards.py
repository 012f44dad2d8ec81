"""Reading and writing WebDataset tars — the one reader that training, evaluation and
preprocessing share — and the per-clip artifacts that shards are assembled from.

What a sample is follows WebDataset's rule everywhere: a member's key is its path up to the first
dot of its file name, the rest is the extension; consecutive members with the same key form one
sample (``webdataset.tariterators.group_by_keys``), so a key met again later in the shard starts
another sample, and a repeated member within a sample is an error. The writer refuses keys that
this rule would cut (dots) or repeat, so what is written reads back as written.

Tars are written by ``webdataset.TarWriter`` with a fixed mtime, owner and mode: the same samples
give the same bytes, so a rerun produces identical shards. Members of a sample are adjacent,
nothing is pickled.

Per-clip artifacts (``clips/`` of the output, written once per clip, read by the shard writers):
  ``{clip}.frames.tar``  one sample per kept frame, key ``{clip}_{frame:06d}``, member ``jpg``|``png``
  ``{clip}.track.npz``   frame_ids [K], params [K, 428], landmarks [K, 70, 2] (input, crop px),
                         fitted [K, 70, 2], residual_px [K], crop_boxes [K, 3] (x0, y0, side; frame px)
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, BinaryIO

import numpy as np

from model.frame_params import PARAM_SIZE

from .sample_format import encode_array
from .sampling import Pair

TAR_MTIME = 0.0  # fixed so that identical samples give identical bytes
TAR_USER = "gaga"


class ShardReadError(ValueError):
    """A tar that cannot be read (to the end): names the shard, the last sample read and the problem."""

    def __init__(self, url: str, problem: str, last_key: str | None = None) -> None:
        where = f" after sample {last_key!r}" if last_key else " before its first sample"
        super().__init__(f"{url}: {problem}{where}")
        self.url, self.problem, self.last_key = url, problem, last_key


def _describe(exc: BaseException) -> str:
    text = str(exc.args[0]) if getattr(exc, "args", None) else str(exc)
    return f"{type(exc).__name__}: {text.split(' @ ')[0][:200]}"  # webdataset appends ' @ <stream>'


def iter_tar_samples(stream: BinaryIO, url: str) -> Iterator[dict[str, Any]]:
    """Samples of one tar stream by WebDataset's rules: ``{"__key__", "__url__", "<ext>": bytes}``
    in file order. A tar that is empty, truncated or not a tar raises :class:`ShardReadError` after
    the samples read before the problem (a valid tar with no members yields nothing)."""
    from webdataset.tariterators import group_by_keys, tar_file_expander

    last_key = None
    try:
        files = tar_file_expander([{"url": url, "stream": stream}])
        for sample in group_by_keys(files):
            last_key = sample["__key__"]
            yield sample
    except Exception as exc:
        raise ShardReadError(url, _describe(exc), last_key) from exc


def check_key(key: str) -> str:
    """A sample key WebDataset reads back unchanged: non-empty, no dot, no slash."""
    if not key or "." in key or "/" in key:
        raise ValueError(f"sample key {key!r} would not read back as written (WebDataset cuts keys at the "
                         "first dot of the file name; keys may not contain '.' or '/')")
    return key


def write_tar(fileobj: BinaryIO, samples: Iterable[Mapping[str, Any]]) -> int:
    """Write samples (``__key__`` + member bytes) as an uncompressed tar; returns the count.
    Keys must pass :func:`check_key` and be unique within the tar."""
    import webdataset as wds

    count, seen = 0, set()
    with wds.TarWriter(fileobj, user=TAR_USER, group=TAR_USER, mode=0o444, encoder=False, mtime=TAR_MTIME) as writer:
        for sample in samples:
            key = check_key(str(sample["__key__"]))
            if key in seen:
                raise ValueError(f"sample key {key!r} written twice into one tar (it would read back as two samples)")
            seen.add(key)
            writer.write(dict(sample))
            count += 1
    return count


def tar_bytes(samples: Iterable[Mapping[str, Any]]) -> bytes:
    buf = io.BytesIO()
    write_tar(buf, samples)
    return buf.getvalue()


def read_tar(data: bytes, name: str = "tar") -> dict[str, dict[str, bytes]]:
    """Tar bytes → {key: {member extension: bytes}} (:func:`iter_tar_samples`; a key met twice is
    an error here: these are our own per-clip files, written with unique keys)."""
    out: dict[str, dict[str, bytes]] = {}
    for sample in iter_tar_samples(io.BytesIO(data), name):
        key = sample["__key__"]
        if key in out:
            raise ShardReadError(name, f"sample key {key!r} appears twice", key)
        out[key] = {k: v for k, v in sample.items() if not k.startswith("__")}
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
    for key, members in read_tar(data, f"{clip_id}.frames.tar").items():
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

"""WebDataset pair samples: what preprocessing writes and training/evaluation read.

One sample = one (source → target) pair, key ``{clip}_{src:06d}_{tgt:06d}`` (no dots), members:
  ``source.jpg|png``, ``target.jpg|png``  RGB crops (uint8, H×W×3)
  ``source.params.npy``, ``target.params.npy``  float32 [428] (layout: model.frame_params)
  ``meta.json``  clip ids, frame ids, split, focal, image size, which FLAME made the parameters
No pickle anywhere.
"""

from __future__ import annotations

import io
import json
import re
from typing import Any

import numpy as np
from PIL import Image

from model.frame_params import PARAM_SIZE, FrameParams

_CLIP_ID = re.compile(r"^[A-Za-z0-9+\-=]+(?:_[A-Za-z0-9+\-=]+)*$")
IMAGE_KEYS = ("source", "target")


def sample_key(clip: str, source_frame: int, target_frame: int) -> str:
    if "." in clip or not _CLIP_ID.match(clip):
        raise ValueError(f"clip id {clip!r} cannot be part of a WebDataset key (no dots, no spaces or slashes)")
    return f"{clip}_{source_frame:06d}_{target_frame:06d}"


def encode_image(image: np.ndarray, image_format: str = "jpg", quality: int = 95) -> bytes:
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an H×W×3 uint8 image, got {image.dtype} {image.shape}")
    buf = io.BytesIO()
    if image_format == "jpg":
        Image.fromarray(image).save(buf, format="JPEG", quality=quality, subsampling=0)
    elif image_format == "png":
        Image.fromarray(image).save(buf, format="PNG", compress_level=1)
    else:
        raise ValueError(f"image format {image_format!r}: use jpg or png")
    return buf.getvalue()


def encode_array(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


def encode_pair(
    key: str,
    source_image: np.ndarray,
    target_image: np.ndarray,
    source_params: FrameParams,
    target_params: FrameParams,
    meta: dict[str, Any],
    image_format: str = "jpg",
    quality: int = 95,
) -> dict[str, Any]:
    """A WebDataset sample dict (``__key__`` + member bytes), members in a fixed order."""
    return {
        "__key__": key,
        f"source.{image_format}": encode_image(source_image, image_format, quality),
        f"target.{image_format}": encode_image(target_image, image_format, quality),
        "source.params.npy": encode_array(source_params.pack()),
        "target.params.npy": encode_array(target_params.pack()),
        "meta.json": json.dumps(meta, sort_keys=True).encode(),
    }


class SampleError(ValueError):
    """A sample that cannot be used: names the shard, the key and the problem."""

    def __init__(self, sample: dict[str, Any], problem: str) -> None:
        url = sample.get("__url__") or "?"
        super().__init__(f"{url}: sample {sample.get('__key__', '?')!r}: {problem}")
        self.url, self.key, self.problem = url, sample.get("__key__", "?"), problem


def _find(sample: dict[str, Any], stem: str, exts: tuple[str, ...]) -> tuple[str, Any]:
    for ext in exts:
        if f"{stem}.{ext}" in sample:
            return f"{stem}.{ext}", sample[f"{stem}.{ext}"]
    members = sorted(k for k in sample if not k.startswith("__"))
    raise SampleError(sample, f"no member {stem}.{'|'.join(exts)} (has {', '.join(members) or 'none'})")


def _decode_image(sample: dict[str, Any], member: str, value: Any) -> np.ndarray:
    if isinstance(value, np.ndarray):
        image = value
    else:
        try:
            with Image.open(io.BytesIO(value)) as img:
                image = np.asarray(img.convert("RGB"))
        except Exception as exc:  # PIL raises many kinds for broken files
            detail = str(exc).split(" <")[0]  # PIL appends the stream's repr
            raise SampleError(sample, f"{member} is not a decodable image ({type(exc).__name__}: {detail})") from exc
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise SampleError(sample, f"{member} is {image.dtype} {image.shape}, expected H×W×3 uint8")
    return image


def _decode_params(sample: dict[str, Any], member: str, value: Any) -> np.ndarray:
    try:
        array = value if isinstance(value, np.ndarray) else np.load(io.BytesIO(value), allow_pickle=False)
        params = np.asarray(array, dtype=np.float32).reshape(-1)
    except Exception as exc:  # truncated .npy, object arrays (refused: no pickle), non-numeric dtypes
        raise SampleError(sample, f"{member} is not a float array ({type(exc).__name__}: {exc})") from exc
    if params.size != PARAM_SIZE:
        raise SampleError(sample, f"{member} has {params.size} values, expected {PARAM_SIZE}")
    bad = ~np.isfinite(params)
    if bad.any():
        raise SampleError(sample, f"{member} holds {int(bad.sum())} non-finite values (NaN/Inf at index "
                                  f"{int(np.flatnonzero(bad)[0])})")
    return params


def pair_params(sample: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """The checked source and target parameters [428] of a raw sample (images left encoded)."""
    source, target = (_decode_params(sample, *_find(sample, stem, ("params.npy",))) for stem in IMAGE_KEYS)
    return source, target


def decode_pair(sample: dict[str, Any], image_size: int | None = None) -> dict[str, Any]:
    """Raw sample (bytes, or already-decoded arrays) → ``source``/``target`` uint8 H×W×3,
    ``source_params``/``target_params`` float32 [428], ``meta`` dict, ``key``. Anything unusable
    (missing member, broken image, images of different sizes or not ``image_size``² when given,
    parameters that are not 428 finite numbers, meta.json that is not a JSON object) raises
    :class:`SampleError` naming the shard and the key."""
    out: dict[str, Any] = {"key": sample.get("__key__", "")}
    for stem in IMAGE_KEYS:
        out[stem] = _decode_image(sample, *_find(sample, stem, ("jpg", "png", "jpeg")))
        out[f"{stem}_params"] = _decode_params(sample, *_find(sample, stem, ("params.npy",)))
    if out["source"].shape != out["target"].shape:
        raise SampleError(sample, f"source is {out['source'].shape[:2]}, target {out['target'].shape[:2]}")
    if image_size is not None and out["source"].shape[:2] != (image_size, image_size):
        raise SampleError(sample, f"images are {out['source'].shape[1]}×{out['source'].shape[0]}, the data's "
                                  f"first sample is {image_size}×{image_size}")
    member, meta = _find(sample, "meta", ("json",))
    try:
        out["meta"] = json.loads(meta) if isinstance(meta, (bytes, str)) else dict(meta)
    except (ValueError, TypeError) as exc:
        raise SampleError(sample, f"{member} is not valid JSON ({exc})") from exc
    if not isinstance(out["meta"], dict):
        raise SampleError(sample, f"{member} is not a JSON object")
    return out

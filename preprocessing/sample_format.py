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


def _find(sample: dict[str, Any], stem: str, exts: tuple[str, ...]) -> Any:
    for ext in exts:
        if f"{stem}.{ext}" in sample:
            return sample[f"{stem}.{ext}"]
    raise KeyError(f"sample {sample.get('__key__', '?')}: no member {stem}.{{{','.join(exts)}}} (has {sorted(sample)})")


def _decode_image(value: Any) -> np.ndarray:
    if isinstance(value, np.ndarray):
        return value
    with Image.open(io.BytesIO(value)) as img:
        return np.asarray(img.convert("RGB"))


def _decode_array(value: Any) -> np.ndarray:
    if isinstance(value, np.ndarray):
        return value.astype(np.float32, copy=False)
    return np.load(io.BytesIO(value), allow_pickle=False).astype(np.float32, copy=False)


def decode_pair(sample: dict[str, Any]) -> dict[str, Any]:
    """Raw sample (bytes, or already-decoded arrays) → ``source``/``target`` uint8 H×W×3,
    ``source_params``/``target_params`` float32 [428], ``meta`` dict, ``key``."""
    out: dict[str, Any] = {"key": sample.get("__key__", "")}
    for stem in IMAGE_KEYS:
        out[stem] = _decode_image(_find(sample, stem, ("jpg", "png", "jpeg")))
        params = _decode_array(_find(sample, stem, ("params.npy",))).reshape(-1)
        if params.size != PARAM_SIZE:
            raise ValueError(f"sample {out['key']}: {stem}.params.npy has {params.size} values, expected {PARAM_SIZE}")
        out[f"{stem}_params"] = params
    meta = _find(sample, "meta", ("json",))
    out["meta"] = json.loads(meta) if isinstance(meta, (bytes, str)) else dict(meta)
    return out

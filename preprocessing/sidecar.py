"""Ground-truth sidecar of a generated clip: what the generator rendered, frame by frame.

One ``.npz`` per clip (plain arrays, no pickle):
  shape [300]; expression [K,100]; pose [K,6] (global zero + jaw); eyes [K,6];
  transform_matrix [K,3,4] (tracker convention: PyTorch3D row vectors, FLAME ×5 world);
  focal (NDC, relative to the full frame); landmarks [K,70,2] (pixels in the full frame, x right,
  y down, pixel centres at +0.5); image_size [2] = (H, W); fps.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np


@dataclass
class ClipGroundTruth:
    shape: np.ndarray
    expression: np.ndarray
    pose: np.ndarray
    eyes: np.ndarray
    transform_matrix: np.ndarray
    focal: float
    landmarks: np.ndarray
    image_size: tuple[int, int]
    fps: float

    @property
    def num_frames(self) -> int:
        return int(self.expression.shape[0])


def save_sidecar(truth: ClipGroundTruth, path: str | Path) -> None:
    arrays = {f.name: np.asarray(getattr(truth, f.name)) for f in fields(truth)}
    arrays = {k: (v.astype(np.float32) if v.dtype.kind == "f" else v) for k, v in arrays.items()}
    with open(path, "wb") as fh:  # np.savez adds no timestamps: same arrays → same bytes
        np.savez(fh, **arrays)


def load_sidecar(path: str | Path) -> ClipGroundTruth:
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            values = {f.name: data[f.name] for f in fields(ClipGroundTruth)}
    except (OSError, KeyError, ValueError) as exc:
        raise ValueError(f"{path}: not a clip ground-truth sidecar ({exc})") from exc
    values["focal"] = float(values["focal"])
    values["fps"] = float(values["fps"])
    values["image_size"] = tuple(int(x) for x in values["image_size"])
    return ClipGroundTruth(**values)

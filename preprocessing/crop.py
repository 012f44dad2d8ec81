"""Boxes and square crops: face box → head box → smoothed square crop, resized with black
padding outside the frame. Pixel coordinates: x right, y down, pixel i covers [i, i+1) (centres at
+0.5), the same convention as model.geometry.project_points.

Boxes are [..., 4] = (x1, y1, x2, y2) in pixels; a crop box is [..., 3] = (x0, y0, side).
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image


def face_to_head_box(face: np.ndarray, widen: float, raise_top: float) -> np.ndarray:
    """[..., 4] face box (brows to chin) → [..., 4] head box: widened about its centre by ``widen``
    and extended upwards by ``raise_top`` · height (forehead and hair)."""
    face = np.asarray(face, np.float64)
    cx = (face[..., 0] + face[..., 2]) / 2
    w = (face[..., 2] - face[..., 0]) * widen
    h = face[..., 3] - face[..., 1]
    return np.stack([cx - w / 2, face[..., 1] - raise_top * h, cx + w / 2, face[..., 3]], -1)


def landmark_box(points: np.ndarray) -> np.ndarray:
    """[..., N, 2] → [..., 4] tight box of the points."""
    points = np.asarray(points, np.float64)
    return np.concatenate([points.min(-2), points.max(-2)], -1)


def square_crop_box(box: np.ndarray, scale: float) -> np.ndarray:
    """[..., 4] box → [..., 3] square (x0, y0, side), side = scale·sqrt(w·h), same centre."""
    box = np.asarray(box, np.float64)
    w = np.clip(box[..., 2] - box[..., 0], 1e-3, None)
    h = np.clip(box[..., 3] - box[..., 1], 1e-3, None)
    side = scale * np.sqrt(w * h)
    cx, cy = (box[..., 0] + box[..., 2]) / 2, (box[..., 1] + box[..., 3]) / 2
    return np.stack([cx - side / 2, cy - side / 2, side], -1)


def smooth_boxes(boxes: np.ndarray, sigma: float) -> np.ndarray:
    """[K, 4] → [K, 4]: a centred (zero-phase) Gaussian of σ = ``sigma`` frames over time, the
    ends mirrored. Unlike a causal EMA it does not trail a moving face; σ ≤ 0 returns the boxes."""
    boxes = np.asarray(boxes, np.float64)
    if sigma <= 0 or len(boxes) < 2:
        return boxes.copy()
    radius = int(math.ceil(3 * sigma))
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps /= taps.sum()
    pad = np.pad(boxes, ((radius, radius), (0, 0)), mode="reflect" if len(boxes) > radius else "edge")
    return np.stack([np.convolve(pad[:, c], taps, mode="valid") for c in range(boxes.shape[1])], -1)


def to_crop(points: np.ndarray, crop_box: np.ndarray, size: int) -> np.ndarray:
    """Full-frame pixels [..., N, 2] → crop pixels, for crop boxes [..., 3]."""
    crop_box = np.asarray(crop_box, np.float64)
    scale = size / crop_box[..., 2]
    return (np.asarray(points, np.float64) - crop_box[..., None, :2]) * scale[..., None, None]


def from_crop(points: np.ndarray, crop_box: np.ndarray, size: int) -> np.ndarray:
    """Inverse of :func:`to_crop`."""
    crop_box = np.asarray(crop_box, np.float64)
    return np.asarray(points, np.float64) * (crop_box[..., 2] / size)[..., None, None] + crop_box[..., None, :2]


def crop_image(frame: np.ndarray, crop_box: np.ndarray, size: int) -> np.ndarray:
    """Cut the square ``crop_box`` (x0, y0, side) out of an H×W×3 uint8 frame and resize it to
    size×size (bicubic, antialiased when shrinking); outside the frame is black."""
    x0, y0, side = (float(v) for v in crop_box)
    h, w = frame.shape[:2]
    ix0, iy0 = math.floor(x0), math.floor(y0)
    ix1, iy1 = math.ceil(x0 + side), math.ceil(y0 + side)
    region = np.zeros((iy1 - iy0, ix1 - ix0, 3), np.uint8)
    sx0, sy0, sx1, sy1 = max(ix0, 0), max(iy0, 0), min(ix1, w), min(iy1, h)
    if sx1 > sx0 and sy1 > sy0:
        region[sy0 - iy0:sy1 - iy0, sx0 - ix0:sx1 - ix0] = frame[sy0:sy1, sx0:sx1]
    box = (x0 - ix0, y0 - iy0, x0 - ix0 + side, y0 - iy0 + side)
    out = Image.fromarray(region).resize((size, size), Image.Resampling.BICUBIC, box=box)
    return np.asarray(out)

"""Face detection behind one interface: dlib's HOG detector on real footage, or the ground-truth
landmark box of generated clips (``sidecar``). Detectors return *face* boxes (x1, y1, x2, y2) in
full-frame pixels; :func:`preprocessing.crop.face_to_head_box` turns them into head boxes.

Several faces in a frame (:func:`choose_face`): the largest wins; faces whose area is within
``size_tie`` of the largest count as equally large, and among those the one nearest the frame
centre wins, then the highest detector score. On later keyframes the face that overlaps the
previous choice most is followed, so a clip keeps its subject when another face grows larger.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
from PIL import Image

from .config import DetectionConfig
from .crop import landmark_box
from .face_tools import require_face_tools
from .sidecar import ClipGroundTruth


class FaceDetector(Protocol):
    name: str

    def detect_all(self, frame: np.ndarray, index: int) -> tuple[np.ndarray, np.ndarray]:
        """H×W×3 uint8 frame number ``index`` → face boxes [N, 4] in pixels and scores [N]."""


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of boxes [..., 4] with boxes [..., 4] (broadcast)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    ix = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
    iy = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None)
    inter = ix * iy
    area = lambda x: np.clip(x[..., 2] - x[..., 0], 0, None) * np.clip(x[..., 3] - x[..., 1], 0, None)
    return inter / np.maximum(area(a) + area(b) - inter, 1e-9)


def choose_face(boxes: np.ndarray, scores: np.ndarray, frame_hw: tuple[int, int], size_tie: float,
                previous: np.ndarray | None = None) -> int | None:
    """Index of the face to keep among boxes [N, 4] with scores [N] (module docstring), or None.

    ``previous`` [4]: the face chosen on the previous keyframe; the box overlapping it most (IoU
    ≥ 0.3) is followed."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    if len(boxes) == 0:
        return None
    if previous is not None and len(boxes) > 1:
        iou = box_iou(boxes, np.asarray(previous)[None])
        if iou.max() >= 0.3:
            return int(np.argmax(iou))
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    tied = np.flatnonzero(area >= area.max() * (1.0 - size_tie))
    h, w = frame_hw
    centre = np.stack([(boxes[tied, 0] + boxes[tied, 2]) / 2 - w / 2, (boxes[tied, 1] + boxes[tied, 3]) / 2 - h / 2], 1)
    dist = np.linalg.norm(centre, axis=1) / max(h, w)
    # "nearest the centre" with a 2%-of-frame tolerance, so that detector jitter does not decide
    near = tied[dist <= dist.min() + 0.02]
    return int(near[np.argmax(np.asarray(scores, np.float64)[near])])


class DlibFaceDetector:
    """dlib's HOG frontal face detector (it also fires on non-faces: clothes, logos; the
    :func:`choose_face` rule and the landmark checks downstream sort them out)."""

    name = "dlib"

    def __init__(self, config: DetectionConfig) -> None:
        require_face_tools("face detection on real video (preprocess.detector dlib)")
        import dlib

        self.config = config
        self._detector = dlib.get_frontal_face_detector()

    def detect_all(self, frame: np.ndarray, index: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """Every detection above ``min_score``: boxes [N, 4] (pixels of ``frame``) and HOG scores [N]."""
        h, w = frame.shape[:2]
        scale = min(1.0, self.config.max_side / max(h, w))
        image = frame
        if scale < 1.0:
            image = np.asarray(Image.fromarray(frame).resize((round(w * scale), round(h * scale)), Image.Resampling.BILINEAR))
        rects, scores, _ = self._detector.run(np.ascontiguousarray(image), self.config.upsample, self.config.min_score)
        boxes = np.array([[r.left(), r.top(), r.right() + 1, r.bottom() + 1] for r in rects], np.float64).reshape(-1, 4)
        scores = np.asarray(scores, np.float64)
        keep = scores >= self.config.min_score
        return boxes[keep] / scale, scores[keep]

    def detect(self, frame: np.ndarray, index: int = 0) -> np.ndarray | None:
        """The face :func:`choose_face` keeps, [4], or None."""
        boxes, scores = self.detect_all(frame, index)
        pick = choose_face(boxes, scores, frame.shape[:2], self.config.size_tie)
        return None if pick is None else boxes[pick]


class SidecarFaceDetector:
    """The tight box of a generated clip's true 68 landmarks (what a perfect detector would see):
    none when fewer than half of them are inside the frame."""

    name = "sidecar"

    def __init__(self, truth: ClipGroundTruth) -> None:
        self.truth = truth

    def detect_all(self, frame: np.ndarray, index: int) -> tuple[np.ndarray, np.ndarray]:
        if index >= self.truth.num_frames:
            return np.zeros((0, 4)), np.zeros(0)
        points = self.truth.landmarks[index, :68]
        h, w = frame.shape[:2]
        inside = (points[:, 0] >= 0) & (points[:, 0] < w) & (points[:, 1] >= 0) & (points[:, 1] < h)
        if inside.mean() < 0.5:
            return np.zeros((0, 4)), np.zeros(0)
        return landmark_box(points)[None], np.ones(1)

    def detect(self, frame: np.ndarray, index: int) -> np.ndarray | None:
        boxes, _ = self.detect_all(frame, index)
        return boxes[0] if len(boxes) else None


def make_face_detector(name: str, config: DetectionConfig, truth: ClipGroundTruth | None = None) -> FaceDetector:
    """``dlib``, ``sidecar``, or ``auto`` (sidecar when the clip has ground truth, else dlib)."""
    if name == "auto":
        name = "sidecar" if truth is not None else "dlib"
    if name == "dlib":
        return DlibFaceDetector(config)
    if name == "sidecar":
        if truth is None:
            raise ValueError("detector 'sidecar' needs the clip's ground-truth sidecar (sidecars/<clip>.npz)")
        return SidecarFaceDetector(truth)
    raise ValueError(f"unknown face detector {name!r}: use dlib or sidecar")

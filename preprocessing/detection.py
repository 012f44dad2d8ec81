"""Face detection behind one interface: dlib's HOG detector on real footage, or the ground-truth
landmark box of generated clips (``sidecar``). Detectors return *face* boxes (x1, y1, x2, y2) in
full-frame pixels; :func:`preprocessing.crop.face_to_head_box` turns them into head boxes."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

import numpy as np
from PIL import Image

from .config import DetectionConfig
from .crop import interpolate_boxes, landmark_box
from .sidecar import ClipGroundTruth


class FaceDetector(Protocol):
    name: str

    def detect(self, frame: np.ndarray, index: int) -> np.ndarray | None:
        """H×W×3 uint8 frame number ``index`` → face box [4] in pixels, or None."""


class DlibFaceDetector:
    """dlib's HOG frontal face detector. It also fires on non-faces (clothes, logos), so the
    largest detection above ``min_score`` wins."""

    name = "dlib"

    def __init__(self, config: DetectionConfig) -> None:
        import dlib

        self.config = config
        self._detector = dlib.get_frontal_face_detector()

    def detect_all(self, frame: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Every detection: boxes [N, 4] (pixels of ``frame``) and HOG scores [N]."""
        h, w = frame.shape[:2]
        scale = min(1.0, self.config.max_side / max(h, w))
        image = frame
        if scale < 1.0:
            image = np.asarray(Image.fromarray(frame).resize((round(w * scale), round(h * scale)), Image.Resampling.BILINEAR))
        rects, scores, _ = self._detector.run(np.ascontiguousarray(image), self.config.upsample, self.config.min_score)
        boxes = np.array([[r.left(), r.top(), r.right() + 1, r.bottom() + 1] for r in rects], np.float64).reshape(-1, 4)
        return boxes / scale, np.asarray(scores, np.float64)

    def detect(self, frame: np.ndarray, index: int) -> np.ndarray | None:
        boxes, scores = self.detect_all(frame)
        keep = scores >= self.config.min_score
        if not keep.any():
            return None
        boxes = boxes[keep]
        area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        return boxes[int(np.argmax(area))]


class SidecarFaceDetector:
    """The tight box of a generated clip's true 68 landmarks (what a perfect detector would see)."""

    name = "sidecar"

    def __init__(self, truth: ClipGroundTruth) -> None:
        self.truth = truth

    def detect(self, frame: np.ndarray, index: int) -> np.ndarray | None:
        if index >= self.truth.num_frames:
            return None
        return landmark_box(self.truth.landmarks[index, :68])


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


def detect_keyframes(keyframes: Iterable[tuple[int, np.ndarray]], detector: FaceDetector) -> tuple[int, np.ndarray | None]:
    """Run ``detector`` on the keyframes of a clip, (index, frame) in order with the clip's last
    frame last (FrameSource.keyframes), and interpolate the face boxes of the frames between.
    Returns the clip's frame count and boxes [K, 4], or None when no keyframe shows a face."""
    key_indices: list[int] = []
    key_boxes: list[np.ndarray | None] = []
    for index, frame in keyframes:
        key_indices.append(index)
        key_boxes.append(detector.detect(frame, index))
    count = key_indices[-1] + 1 if key_indices else 0
    return count, interpolate_boxes(count, key_indices, key_boxes)

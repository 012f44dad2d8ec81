"""68 + 2 landmarks on the crop behind one interface: dlib's 68-point shape predictor (pupils
estimated as the eye-contour centroids), or a generated clip's true landmarks moved into the crop
(``sidecar``). Landmarks are [70, 2] crop pixels (x right, y down, pixel centres at +0.5) in the
order of model.flame (iBUG 0–67, pupil of the image-left eye, pupil of the image-right eye)."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from .crop import to_crop
from .sidecar import ClipGroundTruth

RIGHT_EYE, LEFT_EYE = slice(36, 42), slice(42, 48)  # subject's right eye is the image-left one


@dataclass
class CropInfo:
    """Where a crop came from: frame ``index`` of the clip, the square ``crop_box`` (x0, y0, side)
    in full-frame pixels, the crop side ``size``, and the face box [4] in crop pixels."""

    index: int
    crop_box: np.ndarray
    size: int
    face_box: np.ndarray


class LandmarkDetector(Protocol):
    name: str

    def detect(self, crop: np.ndarray, info: CropInfo) -> np.ndarray | None:
        """size×size×3 uint8 crop → [70, 2] landmarks in crop pixels, or None (no face)."""


def with_pupils(points68: np.ndarray) -> np.ndarray:
    """[68, 2] → [70, 2]: pupils estimated as the centroids of the two eye contours."""
    return np.concatenate([points68, points68[RIGHT_EYE].mean(0, keepdims=True), points68[LEFT_EYE].mean(0, keepdims=True)])


def dlib_model_path(name: str = "shape_predictor_68_face_landmarks.dat") -> Path:
    """A model file shipped by ``face_recognition_models`` (located without importing it: its
    ``__init__`` needs pkg_resources, which current setuptools no longer provides)."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("package face_recognition_models is not installed (pip install face_recognition_models)")
    path = Path(list(spec.submodule_search_locations)[0]) / "models" / name
    if not path.is_file():
        raise FileNotFoundError(f"{path}: dlib model missing from face_recognition_models")
    return path


class DlibLandmarkDetector:
    """dlib's 68-point shape predictor. The face box it starts from is re-detected by HOG on the
    crop when possible (the predictor was trained on HOG boxes), else the tracked face box."""

    name = "dlib"

    def __init__(self, redetect: bool = True) -> None:
        import dlib

        self._dlib = dlib
        self._predictor = dlib.shape_predictor(str(dlib_model_path()))
        self._detector = dlib.get_frontal_face_detector() if redetect else None

    def _box(self, crop: np.ndarray, face_box: np.ndarray):
        if self._detector is not None:
            rects, scores, _ = self._detector.run(crop, 0, 0.0)
            if len(rects):
                # the detection overlapping the tracked face most (HOG also fires on non-faces)
                def overlap(r) -> float:
                    ix = max(0.0, min(r.right(), face_box[2]) - max(r.left(), face_box[0]))
                    iy = max(0.0, min(r.bottom(), face_box[3]) - max(r.top(), face_box[1]))
                    return ix * iy
                best = max(rects, key=overlap)
                if overlap(best) > 0:
                    return best
        x1, y1, x2, y2 = (int(round(v)) for v in face_box)
        return self._dlib.rectangle(x1, y1, x2 - 1, y2 - 1)

    def detect(self, crop: np.ndarray, info: CropInfo) -> np.ndarray | None:
        crop = np.ascontiguousarray(crop)
        shape = self._predictor(crop, self._box(crop, info.face_box))
        points = np.array([[p.x + 0.5, p.y + 0.5] for p in shape.parts()], np.float64)
        if points.shape != (68, 2):
            return None
        return with_pupils(points)


class SidecarLandmarkDetector:
    """A generated clip's true 70 landmarks (full-frame pixels) moved into the crop."""

    name = "sidecar"

    def __init__(self, truth: ClipGroundTruth) -> None:
        self.truth = truth

    def detect(self, crop: np.ndarray, info: CropInfo) -> np.ndarray | None:
        if info.index >= self.truth.num_frames:
            return None
        return to_crop(self.truth.landmarks[info.index], info.crop_box, info.size)


def make_landmark_detector(name: str, truth: ClipGroundTruth | None = None) -> LandmarkDetector:
    """``dlib``, ``sidecar``, or ``auto`` (sidecar when the clip has ground truth, else dlib)."""
    if name == "auto":
        name = "sidecar" if truth is not None else "dlib"
    if name == "dlib":
        return DlibLandmarkDetector()
    if name == "sidecar":
        if truth is None:
            raise ValueError("landmarks 'sidecar' need the clip's ground-truth sidecar (sidecars/<clip>.npz)")
        return SidecarLandmarkDetector(truth)
    raise ValueError(f"unknown landmark detector {name!r}: use dlib or sidecar")

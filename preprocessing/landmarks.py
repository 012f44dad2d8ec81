"""Landmarks on the crop behind one interface: MediaPipe FaceMesh (478 dense points; the 68 + 2
iBUG points read off them), dlib's 68-point shape predictor (pupils estimated as the eye-contour
centroids), or a generated clip's true landmarks moved into the crop (``sidecar``).

A detector returns [70 + D, C] crop pixels (x right, y down) or None when it sees no face: first
the 70 in the order of model.flame (iBUG 0–67, pupil of the image-left eye, pupil of the
image-right eye), then its ``dense_points`` = D dense points (478 for MediaPipe, 0 otherwise).
C = 2, or 3 for MediaPipe: its predicted depth (same scale as x, smaller is nearer).
None is an answer: a detector never falls back to a guess (a held box, a mean shape).
"""

from __future__ import annotations

import importlib.util
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from .crop import landmark_box, to_crop
from .detection import box_iou
from .face_tools import require_face_tools
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
    dense_points: int  # D: dense points after the 70 (0: none)

    def detect(self, crop: np.ndarray, info: CropInfo) -> np.ndarray | None:
        """size×size×3 uint8 crop → [70 + D, C] landmarks in crop pixels, or None (no face)."""


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
    """dlib's 68-point shape predictor, started from the HOG face re-detected on the crop (the
    predictor was trained on HOG boxes). No HOG face overlapping the expected face: no landmarks
    (the predictor returns 68 points on any image, a grey one included)."""

    name = "dlib"
    dense_points = 0

    def __init__(self) -> None:
        require_face_tools("dlib landmarks (preprocess.landmarks dlib)")
        import dlib

        self._predictor = dlib.shape_predictor(str(dlib_model_path()))
        self._detector = dlib.get_frontal_face_detector()

    def _box(self, crop: np.ndarray, face_box: np.ndarray):
        rects, _, _ = self._detector.run(crop, 0, 0.0)
        if not len(rects):
            return None
        boxes = np.array([[r.left(), r.top(), r.right() + 1, r.bottom() + 1] for r in rects], np.float64)
        iou = box_iou(boxes, np.asarray(face_box)[None])
        best = int(np.argmax(iou))
        return rects[best] if iou[best] > 0.2 else None

    def detect(self, crop: np.ndarray, info: CropInfo) -> np.ndarray | None:
        crop = np.ascontiguousarray(crop)
        rect = self._box(crop, info.face_box)
        if rect is None:
            return None
        shape = self._predictor(crop, rect)
        points = np.array([[p.x + 0.5, p.y + 0.5] for p in shape.parts()], np.float64)
        if points.shape != (68, 2):
            return None
        return with_pupils(points)


# MediaPipe FaceMesh index nearest to each of dlib's 68 iBUG points and the two pupils (iris
# centres), measured here: mean distance over 20 real portraits, 0.02–0.14 inter-ocular distances
# (the jaw line, where the two detectors' contours disagree most, is the worst).
MEDIAPIPE_TO_IBUG70 = (
    127, 227, 177, 215, 138, 136, 149, 148, 152, 377, 378, 365, 397, 435, 401, 454, 356,  # jaw 0–16
    70, 63, 105, 66, 55, 336, 296, 334, 293, 300,  # brows 17–26
    168, 197, 5, 4, 75, 97, 2, 326, 305,  # nose 27–35
    33, 160, 158, 155, 153, 144, 382, 385, 387, 263, 373, 380,  # eyes 36–47
    61, 39, 37, 0, 267, 269, 291, 405, 314, 17, 84, 181,  # outer lips 48–59
    78, 82, 13, 312, 308, 317, 14, 87,  # inner lips 60–67
    468, 473,  # pupils: iris centres (image-left eye, image-right eye)
)
MEDIAPIPE_POINTS = 478  # with refined irises
_MEDIAPIPE_LOCK = threading.Lock()


def import_mediapipe():
    """``mediapipe`` with its legacy ``solutions.face_mesh`` (0.10.14 on Python 3.11; later
    releases ship no solution models). Those wheels were built for protobuf 4, whose
    ``SymbolDatabase.GetPrototype`` / ``MessageFactory.GetPrototype`` protobuf 5+ (needed by
    wandb) no longer has; they are restored here as ``message_factory.GetMessageClass``, their
    documented replacement. (protobuf 7 also dropped ``FieldDescriptor.label``, which these
    wheels read: stay below 7.)"""
    try:
        from google.protobuf import message_factory, symbol_database
    except ImportError:  # pragma: no cover - protobuf comes with ray
        symbol_database = None
    if symbol_database is not None:
        for cls in (symbol_database.SymbolDatabase, message_factory.MessageFactory):
            if not hasattr(cls, "GetPrototype"):
                cls.GetPrototype = lambda self, descriptor: message_factory.GetMessageClass(descriptor)
    try:
        import mediapipe
        mediapipe.solutions.face_mesh  # noqa: B018 - fails on releases without the legacy solutions
    except (ImportError, AttributeError) as exc:
        raise ImportError(
            "landmarks 'mediapipe' needs mediapipe 0.10.14 with protobuf 6.33 (docs/preprocessing.md: "
            "pip install 'protobuf>=6.33.5,<7' && pip install --no-deps mediapipe==0.10.14 "
            f"opencv-contrib-python-headless absl-py), or use preprocess.landmarks=dlib ({exc})") from exc
    return mediapipe


def mediapipe_available() -> bool:
    try:
        import_mediapipe()
    except ImportError:
        return False
    return True


class MediapipeLandmarkDetector:
    """MediaPipe FaceMesh (legacy solution, refined irises: 478 points) on the crop, each crop on
    its own (``static_image_mode``: no state between frames, so the result does not depend on
    which frames were kept). Of the faces it finds, the one overlapping the expected face box most
    is used; none overlapping it (IoU < 0.2): no landmarks."""

    name = "mediapipe"
    dense_points = MEDIAPIPE_POINTS

    def __init__(self, max_faces: int = 3, min_confidence: float = 0.5) -> None:
        mp = import_mediapipe()
        with warnings.catch_warnings():  # protobuf 6 deprecates what the 0.10.14 graph setup reads
            warnings.filterwarnings("ignore", message=r"label\(\) is deprecated", category=DeprecationWarning)
            self._mesh = mp.solutions.face_mesh.FaceMesh(static_image_mode=True, max_num_faces=max_faces,
                                                         refine_landmarks=True, min_detection_confidence=min_confidence)

    def detect(self, crop: np.ndarray, info: CropInfo) -> np.ndarray | None:
        h, w = crop.shape[:2]
        with _MEDIAPIPE_LOCK:  # one graph per detector; Ray may call an actor from threads
            result = self._mesh.process(np.ascontiguousarray(crop))
        if not result.multi_face_landmarks:
            return None
        # x, y in crop pixels; z: depth relative to the head's centre, in the same scale as x (smaller: nearer)
        faces = [np.array([[p.x * w, p.y * h, p.z * w] for p in f.landmark], np.float64) for f in result.multi_face_landmarks]
        faces = [f for f in faces if f.shape == (MEDIAPIPE_POINTS, 3)]
        if not faces:
            return None
        iou = [float(box_iou(landmark_box(f[list(MEDIAPIPE_TO_IBUG70[:68]), :2]), info.face_box)) for f in faces]
        best = int(np.argmax(iou))
        if iou[best] < 0.2:
            return None
        dense = faces[best]
        return np.concatenate([dense[list(MEDIAPIPE_TO_IBUG70)], dense])


class SidecarLandmarkDetector:
    """A generated clip's true 70 landmarks (full-frame pixels) moved into the crop."""

    name = "sidecar"
    dense_points = 0

    def __init__(self, truth: ClipGroundTruth) -> None:
        self.truth = truth

    def detect(self, crop: np.ndarray, info: CropInfo) -> np.ndarray | None:
        if info.index >= self.truth.num_frames:
            return None
        return to_crop(self.truth.landmarks[info.index], info.crop_box, info.size)


def resolve_landmarks(name: str, truth: ClipGroundTruth | None = None) -> str:
    """The detector ``auto`` means for a clip: sidecar with ground truth, else mediapipe when it is
    installed, else dlib."""
    if name != "auto":
        return name
    if truth is not None:
        return "sidecar"
    return "mediapipe" if mediapipe_available() else "dlib"


def make_landmark_detector(name: str, truth: ClipGroundTruth | None = None) -> LandmarkDetector:
    """``mediapipe``, ``dlib``, ``sidecar``, or ``auto`` (:func:`resolve_landmarks`)."""
    name = resolve_landmarks(name, truth)
    if name == "mediapipe":
        return MediapipeLandmarkDetector()
    if name == "dlib":
        return DlibLandmarkDetector()
    if name == "sidecar":
        if truth is None:
            raise ValueError("landmarks 'sidecar' need the clip's ground-truth sidecar (sidecars/<clip>.npz)")
        return SidecarLandmarkDetector(truth)
    raise ValueError(f"unknown landmark detector {name!r}: use mediapipe, dlib or sidecar")

"""dlib face analysis for evaluation: HOG face detection, the 68-point shape predictor and the
ResNet face descriptor, all from the model files that ``face_recognition_models`` ships
(``shape_predictor_68_face_landmarks.dat``, ``dlib_face_recognition_resnet_model_v1.dat``).

dlib is imported when a :class:`DlibFaceAnalyzer` is built, not at module import. Images are
H×W×3 uint8 RGB; boxes (x1, y1, x2, y2) and landmarks [68, 2] are pixels with pixel centres at
+0.5 (x right, y down).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from preprocessing.face_tools import require_face_tools

LANDMARKS_68 = "shape_predictor_68_face_landmarks.dat"
FACE_DESCRIPTOR = "dlib_face_recognition_resnet_model_v1.dat"
# steady_landmarks: box centre shifts (× the box side) and scales the predictor is averaged over
BOX_SHIFTS = (-0.04, 0.0, 0.04)
BOX_SCALES = (0.96, 1.0, 1.04)


def dlib_model_file(name: str) -> Path:
    """A model file inside the installed ``face_recognition_models`` package (located without
    importing it: its ``__init__`` needs pkg_resources, which current setuptools lacks)."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"{name}: the package face_recognition_models is not installed "
                                "(pip install face_recognition_models)")
    path = Path(list(spec.submodule_search_locations)[0]) / "models" / name
    if not path.is_file():
        raise FileNotFoundError(f"{path}: dlib model file missing from face_recognition_models")
    return path


def box_from_points(points: np.ndarray) -> np.ndarray:
    """Tight box (x1, y1, x2, y2) of [N, 2] points."""
    p = np.asarray(points, np.float64)
    return np.concatenate([p.min(0), p.max(0)])


class DlibFaceAnalyzer:
    """Detection, 68 landmarks and 128-d face descriptors with dlib (CPU)."""

    detector_name = "dlib HOG frontal face detector"
    landmarks_name = f"dlib 68-point shape predictor ({LANDMARKS_68}, face_recognition_models)"
    descriptor_name = f"dlib ResNet face descriptor ({FACE_DESCRIPTOR}, face_recognition_models)"

    def __init__(self, upsample: int = 0, min_score: float = 0.0) -> None:
        require_face_tools("the face metrics (CSIM, AED, APD, AKD)")
        import dlib

        self._dlib = dlib
        self.upsample, self.min_score = upsample, min_score
        self._detector = dlib.get_frontal_face_detector()
        self._predictor = dlib.shape_predictor(str(dlib_model_file(LANDMARKS_68)))
        self._encoder = None  # the ResNet loads on first use (CSIM with ArcFace never needs it)

    def detect(self, image: np.ndarray, hint: np.ndarray | None = None) -> np.ndarray | None:
        """The best-scoring face box [4] above ``min_score`` — among those overlapping the ``hint``
        box (x1, y1, x2, y2) when one is given and any overlaps — or None. (HOG also fires weakly
        on non-faces, so neither "largest" nor "first" is safe.)"""
        rects, scores, _ = self._detector.run(np.ascontiguousarray(image), self.upsample, self.min_score)
        if not len(rects):
            return None
        boxes = np.array([[r.left(), r.top(), r.right() + 1, r.bottom() + 1] for r in rects], np.float64)
        scores = np.asarray(scores, np.float64)
        if hint is not None:
            ix = np.clip(np.minimum(boxes[:, 2], hint[2]) - np.maximum(boxes[:, 0], hint[0]), 0, None)
            iy = np.clip(np.minimum(boxes[:, 3], hint[3]) - np.maximum(boxes[:, 1], hint[1]), 0, None)
            overlapping = ix * iy > 0
            if overlapping.any():
                scores = np.where(overlapping, scores, -np.inf)
        return boxes[int(np.argmax(scores))]

    def _rect(self, box: np.ndarray):
        x1, y1, x2, y2 = (int(round(float(v))) for v in box)
        return self._dlib.rectangle(x1, y1, max(x1 + 1, x2 - 1), max(y1 + 1, y2 - 1))

    def landmarks(self, image: np.ndarray, box: np.ndarray) -> np.ndarray:
        """68 iBUG landmarks [68, 2] inside the face ``box`` (the predictor always answers)."""
        shape = self._predictor(np.ascontiguousarray(image), self._rect(box))
        return np.array([[p.x + 0.5, p.y + 0.5] for p in shape.parts()], np.float64)

    def steady_landmarks(self, image: np.ndarray, box: np.ndarray) -> np.ndarray:
        """68 landmarks [68, 2] averaged over the predictor run in BOX_SHIFTS × BOX_SHIFTS ×
        BOX_SCALES copies of ``box`` (27), moved and scaled slightly about its centre. dlib's
        regression trees jump by pixels with tiny changes of the box or the image; the mean is
        steadier: between a generated 64² face upsampled to 512² and the same face blurred by
        σ = 0.5 px, 2.4–3.4 px mean distance for one run, 1.3–1.5 px for the mean of 27."""
        x1, y1, x2, y2 = (float(v) for v in box)
        cx, cy, side = (x1 + x2) / 2, (y1 + y2) / 2, max(x2 - x1, y2 - y1)
        image = np.ascontiguousarray(image)
        runs = []
        for dx in BOX_SHIFTS:
            for dy in BOX_SHIFTS:
                for scale in BOX_SCALES:
                    half = side * scale / 2
                    x, y = cx + dx * side, cy + dy * side
                    runs.append(self.landmarks(image, np.array([x - half, y - half, x + half, y + half])))
        return np.mean(runs, axis=0)

    def descriptor(self, image: np.ndarray, landmarks68: np.ndarray) -> np.ndarray:
        """128-d face descriptor of the face with these 68 landmarks (dlib aligns its own 150²
        chip from them)."""
        dlib = self._dlib
        if self._encoder is None:
            self._encoder = dlib.face_recognition_model_v1(str(dlib_model_file(FACE_DESCRIPTOR)))
        pts = np.asarray(landmarks68, np.float64)
        parts = dlib.points([dlib.point(int(np.floor(x)), int(np.floor(y))) for x, y in pts])
        shape = dlib.full_object_detection(self._rect(box_from_points(pts)), parts)
        return np.asarray(self._encoder.compute_face_descriptor(np.ascontiguousarray(image), shape), np.float64)

"""The per-frame metrics of the paper's Table 1, on aligned 512² crops.

Self-reenactment (driver = the same identity's frame, i.e. the ground truth):
  PSNR, SSIM (on [0,1] RGB, scikit-image's definitions), LPIPS (AlexNet v0.1), CSIM, AED, APD, AKD.
Cross-reenactment (driver = another identity, no ground truth): CSIM, AED, APD.

Protocol (GAGAvatar issue #39): every image is first resized to ``size`` (512); the driving frame's five
keypoints (from dlib's 68 landmarks, or from the tracked FLAME landmarks when dlib finds no face)
give a square box ×``align_scale`` (3) around the face; that box crops both the driving frame
and the result, and the crops are resized to ``size`` again. The source is aligned the same way
by its own keypoints.

- CSIM: cosine similarity of identity embeddings (:mod:`pipeline.eval.metrics.identity`) of the aligned result and
  of the aligned **source** image (``csim_reference="source"``: identity preservation, what CSIM
  measures in this line of work; the paper's choice for self-reenactment is unverified) or of the
  aligned driving frame (``"driver"``). Cross-reenactment always compares with the source.
- AKD: mean L2 distance (pixels at 512²) between the 68 dlib landmarks of the aligned result and
  of the aligned driving frame, each inside the face box dlib's HOG detector finds on its own crop.
  Every landmark set here is the mean of the predictor over 27 slightly moved boxes
  (``DlibFaceAnalyzer.steady_landmarks``): a single run jitters by pixels.
- AED / APD: mean L1 distance of the expression / head-pose coefficients that the 3DMM estimator
  (:mod:`pipeline.eval.metrics.expression_estimator`) finds in the aligned result and the aligned driving frame.

Face metrics refuse what is not a face: CSIM, AED, APD and AKD of a frame are scored only when
dlib's HOG detector finds a face on the aligned crops they compare (the result and, for CSIM,
the source — or the driving frame with ``csim_reference="driver"`` —, for AED/APD/AKD the driving
frame). Otherwise the frame's value is NaN ("not scored": a failure that the report counts as a
detection rate next to the mean), never a similarity of whatever pixels the alignment box holds —
dlib's descriptor gives ~0.9 to a blurred orange blob. PSNR, SSIM and LPIPS compare pixels and are
always scored.

:class:`FaceMetrics` holds the networks (built once per worker) and caches the analysis of
sources and driving frames by key, since the same frames recur across pairs.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch

from model.metrics import psnr, ssim

from .alignment import alignment_box, box_points, crop_resize, five_points, resize_to
from .expression_estimator import ExpressionPose, ExpressionPoseEstimator
from .face_analysis import box_from_points
from .identity import IdentityEncoder, cosine_similarity, to_uint8

SELF_METRICS = ("psnr", "ssim", "lpips", "csim", "aed", "apd", "akd")
CROSS_METRICS = ("csim", "aed", "apd")
# metrics that need a detected face on both images they compare (NaN = not scored)
FACE_METRICS = ("csim", "aed", "apd", "akd")


def keypoint_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Mean L2 distance between corresponding points [N,2] (pixels)."""
    return float(np.linalg.norm(np.asarray(a, np.float64) - np.asarray(b, np.float64), axis=-1).mean())


def mean_l1(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).mean())


@dataclass
class FaceView:
    """A face crop at the metric size with its landmarks."""

    image: torch.Tensor  # [3,S,S] float in [0,1]
    landmarks: np.ndarray  # [68,2] pixels of ``image``
    detected: bool  # dlib's detector found the face (else: predictor started from a fallback box)
    embedding: np.ndarray | None = None
    code: ExpressionPose | None = None


@dataclass
class DriverAlignment:
    box: np.ndarray  # alignment box (x0, y0, side) in pixels of the driver resized to S
    keypoints_from: str  # "dlib" | "tracked" (FLAME landmarks of the driver's parameters) | "none"
    view: FaceView  # the aligned driving frame


class _LRU(OrderedDict):
    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def get_or(self, key, make):
        if key is not None and key in self:
            self.move_to_end(key)
            return self[key]
        value = make()
        if key is not None:
            self[key] = value
            while len(self) > self.size:
                self.popitem(last=False)
        return value


class FaceMetrics:
    """Per-frame Table 1 metrics. ``analyzer``: :class:`pipeline.eval.metrics.face_analysis.DlibFaceAnalyzer`;
    ``lpips``: a module (x, y [B,3,H,W] in [0,1] → [B]) or None (LPIPS left out)."""

    def __init__(self, analyzer, identity: IdentityEncoder, estimator: ExpressionPoseEstimator,
                 lpips: torch.nn.Module | None = None, size: int = 512, align_scale: float = 3.0,
                 csim_reference: str = "source", cache_size: int = 256) -> None:
        if csim_reference not in ("source", "driver"):
            raise ValueError(f"csim_reference must be 'source' or 'driver', got {csim_reference!r}")
        self.analyzer, self.identity, self.estimator, self.lpips = analyzer, identity, estimator, lpips
        self.size, self.align_scale, self.csim_reference = int(size), float(align_scale), csim_reference
        self._drivers = _LRU(cache_size)
        self._sources = _LRU(cache_size)

    # ------------------------------------------------------------------ analysis

    def _landmarks(self, image: torch.Tensor, hint: np.ndarray | None) -> tuple[np.ndarray, bool]:
        """dlib landmarks on a [3,S,S] image: detector box, else the hint points' box, else the
        middle third (where the ×3 alignment puts the face)."""
        u8 = to_uint8(image)
        hint_box = box_from_points(hint) if hint is not None else None
        box = self.analyzer.detect(u8, hint_box)
        detected = box is not None
        if box is None:
            s = image.shape[-1]
            box = hint_box if hint_box is not None else np.array([s / 3, s / 3, 2 * s / 3, 2 * s / 3])
        return self.analyzer.steady_landmarks(u8, box), detected

    def _align(self, image: torch.Tensor, fallback: np.ndarray | None) -> DriverAlignment:
        """Keypoints of a full frame [3,H,W] (resized to S here) → box and the aligned view."""
        s = self.size
        frame = resize_to(image.float(), s)
        u8 = to_uint8(frame)
        face = self.analyzer.detect(u8)
        points = None
        if face is not None:
            points, source = self.analyzer.steady_landmarks(u8, face), "dlib"
        elif fallback is not None:
            points, source = np.asarray(fallback, np.float64)[:68] * (s / image.shape[-1]), "tracked"
        if points is None:
            box, source, hint = np.array([0.0, 0.0, float(s)]), "none", None
        else:
            box = alignment_box(five_points(points), self.align_scale)
            hint = box_points(points, box, s)
        aligned = crop_resize(frame, box, s)
        landmarks, detected = self._landmarks(aligned, hint)
        return DriverAlignment(box=box, keypoints_from=source, view=FaceView(aligned, landmarks, detected))

    def driver(self, image: torch.Tensor, fallback: np.ndarray | None = None, key: str | None = None) -> DriverAlignment:
        """The aligned driving frame (cached by ``key``). fallback: [≥68,2] tracked landmarks in
        ``image`` pixels, used when dlib finds no face."""
        return self._drivers.get_or(key, lambda: self._align(image, fallback))

    def source(self, image: torch.Tensor, fallback: np.ndarray | None = None, key: str | None = None) -> FaceView:
        """The source aligned by its own keypoints, with its identity embedding when dlib finds a
        face on the aligned crop (``embedding`` None otherwise; cached by ``key``)."""
        def make() -> FaceView:
            view = self._align(image, fallback).view
            self._embedding(view)
            return view
        return self._sources.get_or(key, make)

    def _embedding(self, view: FaceView) -> np.ndarray | None:
        """The identity embedding of a detected face; None when the crop holds no face."""
        if view.embedding is None and view.detected:
            view.embedding = self.identity.embed(view.image, view.landmarks)
        return view.embedding

    def _code(self, view: FaceView) -> ExpressionPose:
        if view.code is None:
            view.code = self.estimator.estimate(view.image, view.landmarks)
        return view.code

    # ------------------------------------------------------------------ metrics

    def evaluate(self, source: torch.Tensor, driver: torch.Tensor, result: torch.Tensor, cross: bool,
                 driver_fallback: np.ndarray | None = None, source_fallback: np.ndarray | None = None,
                 driver_key: str | None = None, source_key: str | None = None) -> dict[str, float | str | bool]:
        """source, driver, result: [3,H,W] float images in [0,1] (any sizes: each is resized to S
        first). Returns every metric of its table half (NaN for the other half, and NaN for a face
        metric whose images hold no detected face: not scored) and how the faces were found:
        ``keypoints_from`` (driver alignment), ``result_face`` / ``driver_face`` / ``source_face``
        (dlib detected the face on the aligned crop)."""
        s = self.size
        drv = self.driver(driver, driver_fallback, driver_key)
        res_img = crop_resize(resize_to(result.float().clamp(0, 1), s), drv.box, s)
        res_lmk, res_detected = self._landmarks(res_img, drv.view.landmarks)
        res = FaceView(res_img, res_lmk, res_detected)
        out: dict[str, float | str | bool] = {m: math.nan for m in SELF_METRICS}
        out.update(keypoints_from=drv.keypoints_from, result_face=res.detected, driver_face=drv.view.detected)
        # landmarks, expression and pose of a non-face mean nothing: both faces or no number
        both_faces = res.detected and drv.view.detected

        if not cross:
            pred, gt = res.image[None], drv.view.image[None]
            out["psnr"] = float(psnr(pred, gt)[0])
            out["ssim"] = float(ssim(pred, gt)[0])
            if self.lpips is not None:
                with torch.no_grad():
                    dev = next(self.lpips.parameters()).device
                    out["lpips"] = float(self.lpips(pred.to(dev), gt.to(dev))[0])
            if both_faces:
                out["akd"] = keypoint_distance(res.landmarks, drv.view.landmarks)

        if cross or self.csim_reference == "source":
            src = self.source(source, source_fallback, source_key)
            out["source_face"] = src.detected
            reference = src.embedding
        else:
            reference = self._embedding(drv.view)
        if res.detected and reference is not None:
            out["csim"] = cosine_similarity(self._embedding(res), reference)

        if both_faces:
            code_res, code_drv = self._code(res), self._code(drv.view)
            out["aed"] = mean_l1(code_res.expression, code_drv.expression)
            out["apd"] = mean_l1(code_res.pose, code_drv.pose)
        return out

"""3DMM estimators behind one interface, for AED (expression distance) and APD (head-pose
distance): mean L1 between the coefficients estimated from the result and from the driving frame.

- :class:`FlameTrackerEstimator` (default): our FLAME landmark tracker on the single image
  (``preprocessing.tracking.track_landmarks``). Expression = the first ``n_expression`` FLAME
  expression coefficients + the jaw axis-angle (3); pose = head (yaw, pitch, roll) in radians
  from the tracked camera (head rotation lives in the camera, as in GAGAvatar).
The paper's estimator (Deep3DFaceRecon, BFM: 64 expression coefficients, 3 rotation angles) is
not available here; every report names the fallback (docs/evaluation.md). The FLAME tracker lives
in ``preprocessing``; it is imported when the estimator is built.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

from model.geometry import matrix_to_euler

_RIGHT_EYE, _LEFT_EYE = slice(36, 42), slice(42, 48)
# look_at_transform's base rotation (PyTorch3D look-at from +z): R = Rhᵀ·R0 with R0 = R0⁻¹
_R0 = np.diag([-1.0, 1.0, -1.0])


@dataclass
class ExpressionPose:
    expression: np.ndarray  # [E] expression coefficients (estimator-specific layout)
    pose: np.ndarray  # [3] head yaw, pitch, roll in radians


class ExpressionPoseEstimator(Protocol):
    name: str

    def estimate(self, image: torch.Tensor, landmarks68: np.ndarray) -> ExpressionPose:
        """[3,S,S] float image in [0,1] (an aligned 512² crop) and its [68,2] landmarks."""


def head_pose_angles(transform_matrix: np.ndarray) -> np.ndarray:
    """Tracker camera [R|T] [3,4] (PyTorch3D row vectors) → head (yaw, pitch, roll) in radians,
    the rotation Rh of :func:`model.geometry.look_at_transform` (R = Rhᵀ·R0): a frontal head is
    (0, 0, 0)."""
    rotation = np.asarray(transform_matrix, np.float64)[:3, :3]
    head = (rotation @ _R0).T
    return matrix_to_euler(torch.from_numpy(head)).numpy()


def with_pupils(landmarks68: np.ndarray) -> np.ndarray:
    """[68,2] → [70,2]: pupils as the eye-contour centroids (the tracker's 70-point layout)."""
    p = np.asarray(landmarks68, np.float64)[:68]
    return np.concatenate([p, p[_RIGHT_EYE].mean(0, keepdims=True), p[_LEFT_EYE].mean(0, keepdims=True)])


class FlameTrackerEstimator:
    """Single-image FLAME fit to the 68 landmarks (+ pupils); see the module docstring."""

    def __init__(self, flame: Any, tracking: Any, focal: float, n_expression: int = 50,
                 device: torch.device | str = "cpu") -> None:
        """flame: model.flame.FlameModel; tracking: preprocessing.config.TrackingConfig."""
        from preprocessing.tracking import LandmarkFlame

        if not 0 < n_expression <= flame.n_expression:
            raise ValueError(f"n_expression must be in 1..{flame.n_expression}, got {n_expression}")
        self.device = torch.device(device)
        self.flame = flame.to(self.device)
        self.lmk_flame = LandmarkFlame(self.flame).to(self.device)
        self.tracking, self.focal, self.n_expression = tracking, float(focal), int(n_expression)
        self.name = (f"FLAME landmark tracker (single image; first {n_expression} expression coefficients + jaw; "
                     f"pose = camera yaw/pitch/roll, radians)")

    def estimate(self, image: torch.Tensor, landmarks68: np.ndarray) -> ExpressionPose:
        from preprocessing.tracking import track_landmarks

        size = int(image.shape[-1])
        points = with_pupils(landmarks68)[None].astype(np.float32)
        track = track_landmarks(self.flame, points, np.ones(1, bool), size, self.focal, self.tracking,
                                self.device, self.lmk_flame)
        expression = np.concatenate([track.expression[0, :self.n_expression], track.jaw[0]]).astype(np.float64)
        return ExpressionPose(expression=expression, pose=head_pose_angles(track.transform_matrix[0]))


def build_estimator(flame: Any, tracking: Any, focal: float, n_expression: int = 50,
                    device: torch.device | str = "cpu") -> ExpressionPoseEstimator:
    """The AED/APD estimator: our FLAME tracker (the paper's Deep3DFaceRecon is not available here:
    docs/evaluation.md)."""
    return FlameTrackerEstimator(flame, tracking, focal, n_expression, device)

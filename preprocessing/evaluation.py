"""Tracking accuracy against the ground truth of generated clips (preprocessing.sidecar).

The tracker sees a crop with its own focal (12 NDC of the crop) and a centred principal point;
the generator's camera films the full frame. Cropping changes only the principal point and the
scale, which the tracker absorbs by looking straight at the head: its camera is the generator's
camera turned towards the head. Rotations are therefore compared after turning each camera so that
its optical axis passes through the head's landmark centroid ("ray-aligned"), which is the same
for both cameras up to the tracking error.
"""

from __future__ import annotations

import numpy as np
import torch

from model.flame import FlameModel
from model.geometry import axis_angle_to_matrix

from .crop import to_crop
from .sidecar import ClipGroundTruth
from .tracking import REFERENCE_SIZE, TrackResult


def _align_z(direction: torch.Tensor) -> torch.Tensor:
    """[K, 3] unit vectors → [K, 3, 3] rotations Q (column vectors) with Q d = +z, minimal angle."""
    z = direction.new_tensor([0.0, 0.0, 1.0]).expand_as(direction)
    axis = torch.cross(direction, z, dim=-1)
    sin = axis.norm(dim=-1, keepdim=True)
    cos = (direction * z).sum(-1, keepdim=True)
    angle = torch.atan2(sin, cos)
    return axis_angle_to_matrix(axis / sin.clamp_min(1e-12) * angle)


def ray_aligned_rotation(transform_matrix: torch.Tensor, anchor: torch.Tensor) -> torch.Tensor:
    """Tracker cameras [K, 3, 4] and a world point per frame [K, 3] (the head) → [K, 3, 3] the
    row-vector rotation of the camera turned to look straight at the point: X_cam' = X R Qᵀ + T Qᵀ."""
    rotation, translation = transform_matrix[..., :3, :3], transform_matrix[..., :3, 3]
    cam = (anchor.unsqueeze(-2) @ rotation).squeeze(-2) + translation
    q = _align_z(cam / cam.norm(dim=-1, keepdim=True))
    return rotation @ q.transpose(-1, -2)


def rotation_angle_deg(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Geodesic angle between rotation matrices [..., 3, 3] in degrees."""
    rel = a.transpose(-1, -2) @ b
    cos = ((rel.diagonal(dim1=-2, dim2=-1).sum(-1) - 1.0) / 2.0).clamp(-1.0, 1.0)
    return torch.rad2deg(torch.acos(cos))


def _landmark_centroid(flame: FlameModel, shape: np.ndarray, expression: np.ndarray, jaw: np.ndarray,
                       eyes: np.ndarray) -> torch.Tensor:
    k = expression.shape[0]
    pose = np.concatenate([np.zeros((k, 3), np.float32), jaw], 1)
    device = flame.v_template.device
    as_t = lambda a: torch.as_tensor(np.asarray(a), dtype=torch.float32, device=device)
    with torch.no_grad():
        out = flame(as_t(shape).reshape(1, -1).expand(k, -1), as_t(expression), as_t(pose), as_t(eyes))
    return out.landmarks[:, :68].mean(1).cpu()


def compare_with_truth(track: TrackResult, truth: ClipGroundTruth, frame_ids: np.ndarray, crop_boxes: np.ndarray,
                       flame: FlameModel) -> dict[str, float]:
    """Medians over the tracked frames (``frame_ids`` index the sidecar's frames; ``crop_boxes``
    [K, 3] are the crops the tracker saw):

    - ``rotation_error_deg``: head rotation, ray-aligned (see module docstring)
    - ``landmark_error_px``: fitted vs true 68 landmarks, pixels at 512²
    - ``jaw_error_deg``, ``eye_error_deg``: geodesic angles
    - ``expression_l1``: mean |Δ| of the 100 expression coefficients (meaningful only when the
      tracker uses the generator's FLAME)
    """
    ids = np.asarray(frame_ids, np.int64)
    true_centroid = _landmark_centroid(flame, truth.shape, truth.expression[ids], truth.pose[ids, 3:], truth.eyes[ids])
    fit_centroid = _landmark_centroid(flame, track.shape, track.expression, track.jaw, track.eyes)
    r_true = ray_aligned_rotation(torch.as_tensor(truth.transform_matrix[ids]), true_centroid)
    r_fit = ray_aligned_rotation(torch.as_tensor(track.transform_matrix), fit_centroid)
    rot_err = rotation_angle_deg(r_true, r_fit)
    true_lmk = to_crop(truth.landmarks[ids], crop_boxes, track.image_size)
    lmk_err = np.linalg.norm(track.landmarks[:, :68] - true_lmk[:, :68], axis=-1) * (REFERENCE_SIZE / track.image_size)
    jaw_err = rotation_angle_deg(axis_angle_to_matrix(torch.as_tensor(truth.pose[ids, 3:])),
                                 axis_angle_to_matrix(torch.as_tensor(track.jaw)))
    eye_true = axis_angle_to_matrix(torch.as_tensor(truth.eyes[ids]).reshape(-1, 2, 3))
    eye_fit = axis_angle_to_matrix(torch.as_tensor(track.eyes).reshape(-1, 2, 3))
    eye_err = rotation_angle_deg(eye_true, eye_fit)
    n_exp = min(truth.expression.shape[1], track.expression.shape[1])
    return {
        "rotation_error_deg": float(rot_err.median()),
        "landmark_error_px": float(np.median(lmk_err)),
        "jaw_error_deg": float(jaw_err.median()),
        "eye_error_deg": float(eye_err.median()),
        "expression_l1": float(np.abs(truth.expression[ids, :n_exp] - track.expression[:, :n_exp]).mean()),
    }

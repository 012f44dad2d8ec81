"""FLAME + camera tracking from 2D landmarks, in the GAGAvatar tracker's convention.

Output per frame: FLAME shape (one per clip), expression, jaw, eyes, and the camera
``transform_matrix`` [R|T] (PyTorch3D row vectors, FLAME ×5 world, focal ``focal`` NDC on the
square crop, principal point at the centre). The FLAME global rotation is zero: head rotation lives
in the camera, as in GAGAvatar.

The fit is batched over all frames of a clip: a per-frame PnP start (scaled orthography refined
by POSIT, closed form, on the mean face), then Adam on the camera only, then Adam on everything,
minimising the pseudo-Huber landmark reprojection error in pixels at 512² plus priors on
shape/expression/jaw/eyes, a prior that keeps expression from moving the rigid points of the face
(eye corners, nose: their motion must come from head rotation) and a temporal smoothness term.
Landmarks: the 70 iBUG points, optionally followed by D dense MediaPipe points through their own
embedding (preprocessing.mediapipe_embedding). Only the vertices that carry the landmarks are
skinned during the fit (the full mesh once at the end, for the head box).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from model.flame import FlameModel, rigid_transforms
from model.frame_params import FrameParams
from model.geometry import (
    axis_angle_to_matrix,
    matrix_to_rotation_6d,
    project_points,
    rotation_6d_to_matrix,
)

from .config import TrackingConfig

NUM_LANDMARKS = 70  # iBUG 68 + 2 pupils
CONTOUR = slice(0, 17)
INNER = slice(17, 68)
PUPILS = slice(68, 70)
# iBUG points that expression barely moves: nose bridge and base, the eyes' corners
RIGID_POINTS = (27, 28, 29, 30, 31, 33, 35, 36, 39, 42, 45)
REFERENCE_SIZE = 512.0  # residuals and loss are measured in pixels of a 512² crop


def resolve_device(name: str) -> torch.device:
    """``auto`` → CUDA when present, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


class LandmarkFlame(nn.Module):
    """FLAME restricted to the vertices under the landmarks: same LBS, ~25× less work. The 70
    landmarks of the model's embedding, then those of ``dense`` (an extra embedding, e.g.
    MediaPipe's) when given.

    Joints depend linearly on shape/expression, so their blend basis is precomputed once."""

    def __init__(self, flame: FlameModel, dense=None) -> None:
        super().__init__()
        corner_ids = flame.landmark_vertex_ids
        barycentric = flame.landmark_barycentric
        if dense is not None and dense.size:
            faces = torch.as_tensor(np.asarray(dense.faces), dtype=torch.long, device=flame.faces.device)
            corner_ids = torch.cat([corner_ids, flame.faces[faces]])
            barycentric = torch.cat([barycentric, torch.as_tensor(np.asarray(dense.barycentric), dtype=barycentric.dtype,
                                                                  device=barycentric.device)])
        self.num_landmarks = int(corner_ids.shape[0])
        ids = corner_ids.reshape(-1)
        used, inverse = torch.unique(ids, return_inverse=True)
        n_pose = flame.posedirs.shape[0]
        num_vertices = flame.num_vertices
        self.scale = flame.scale
        self.parents = flame.parents
        self.n_shape, self.n_expression = flame.n_shape, flame.n_expression
        buffers = {
            "corner_index": inverse.view(-1, 3),  # [L, 3] into the used vertices
            "barycentric": barycentric,  # [L, 3]
            "v_template": flame.v_template[used],  # [U, 3]
            "shapedirs": flame.shapedirs[used],  # [U, 3, S+E]
            "posedirs": flame.posedirs.view(n_pose, num_vertices, 3)[:, used].reshape(n_pose, -1),
            "lbs_weights": flame.lbs_weights[used],  # [U, J]
            "joint_template": flame.j_regressor @ flame.v_template,  # [J, 3]
            "joint_dirs": torch.einsum("jv,vck->jck", flame.j_regressor, flame.shapedirs),  # [J, 3, S+E]
        }
        rigid_corners = buffers["corner_index"][list(RIGID_POINTS)]  # [R, 3]
        expr_dirs = buffers["shapedirs"][:, :, flame.n_shape:]  # [U, 3, E]
        # expression's (linear) motion of the rigid points, before LBS: [R, 3, E]
        buffers["rigid_expression_dirs"] = (expr_dirs[rigid_corners] * barycentric[list(RIGID_POINTS)][:, :, None, None]).sum(1)
        for name, value in buffers.items():
            self.register_buffer(name, value.clone(), persistent=False)

    def rigid_expression_motion(self, expression: torch.Tensor) -> torch.Tensor:
        """expression [B, E] → [B, R, 3] motion of the RIGID_POINTS it causes (×scale)."""
        return torch.einsum("rce,be->brc", self.rigid_expression_dirs, expression) * self.scale

    def forward(self, shape: torch.Tensor, expression: torch.Tensor, jaw: torch.Tensor, eyes: torch.Tensor) -> torch.Tensor:
        """shape [B|1, S], expression [B, E], jaw [B, 3], eyes [B, 6] → landmarks [B, L, 3] (×scale),
        global and neck rotation zero (L = 70 + dense points)."""
        b = expression.shape[0]
        betas = torch.cat([shape.expand(b, -1), expression], dim=1)
        v_shaped = self.v_template + torch.einsum("bk,uck->buc", betas, self.shapedirs)
        joints = self.joint_template + torch.einsum("bk,jck->bjc", betas, self.joint_dirs)
        zeros = jaw.new_zeros(b, 6)
        full_pose = torch.cat([zeros, jaw, eyes], dim=1).view(b, -1, 3)  # global, neck, jaw, eye, eye
        rot_mats = axis_angle_to_matrix(full_pose)
        eye3 = torch.eye(3, dtype=jaw.dtype, device=jaw.device)
        pose_feature = (rot_mats[:, 1:] - eye3).reshape(b, -1)
        v_posed = v_shaped + (pose_feature @ self.posedirs).view(b, -1, 3)
        _, skin = rigid_transforms(rot_mats, joints, self.parents)
        blend = torch.einsum("uj,bjxy->buxy", self.lbs_weights, skin)
        verts = (blend[..., :3, :3] @ v_posed.unsqueeze(-1)).squeeze(-1) + blend[..., :3, 3]
        tri = verts[:, self.corner_index]  # [B, L, 3, 3]
        return (tri * self.barycentric[None, :, :, None]).sum(2) * self.scale


@dataclass
class TrackResult:
    """A tracked clip (numpy float32; K frames, crop of ``image_size`` pixels)."""

    shape: np.ndarray  # [300], shared by the clip
    expression: np.ndarray  # [K, 100]
    jaw: np.ndarray  # [K, 3] axis-angle
    eyes: np.ndarray  # [K, 6]
    transform_matrix: np.ndarray  # [K, 3, 4]
    bbox: np.ndarray  # [K, 4] head box (x1, y1, x2, y2) on the crop, in [0, 1]
    landmarks: np.ndarray  # [K, 70, 2] fitted iBUG landmarks, crop pixels
    residual_px: np.ndarray  # [K] median reprojection error of the fitted landmarks (68 iBUG, or the dense ones), crop pixels
    image_size: int
    focal: float

    @property
    def num_frames(self) -> int:
        return int(self.expression.shape[0])

    def frame_params(self, k: int) -> FrameParams:
        pose = np.concatenate([np.zeros(3, np.float32), self.jaw[k]])
        return FrameParams(
            shape=self.shape, expression=self.expression[k], pose=pose, eyes=self.eyes[k],
            transform_matrix=self.transform_matrix[k], bbox=self.bbox[k],
        )

    def packed(self) -> np.ndarray:
        """[K, 428] flat parameters (model.frame_params layout)."""
        return np.stack([self.frame_params(k).pack() for k in range(self.num_frames)])


def landmark_weights(valid: np.ndarray | torch.Tensor, config: TrackingConfig, dense: int = 0) -> torch.Tensor:
    """Per-landmark weights [K, 70 + dense] from a validity mask [K, 70 + dense] (or [K]: whole frames)."""
    valid = torch.as_tensor(np.asarray(valid), dtype=torch.float32)
    total = NUM_LANDMARKS + dense
    if valid.dim() == 1:
        valid = valid[:, None].expand(-1, total)
    per_point = torch.ones(total)
    per_point[CONTOUR] = config.contour_weight
    per_point[PUPILS] = config.pupil_weight
    if dense:
        per_point[:NUM_LANDMARKS] *= config.ibug_weight_with_dense
    return valid * per_point


def closed_form_camera(model_points: torch.Tensor, image_points: torch.Tensor, weights: torch.Tensor,
                       focal: float, image_size: int, iterations: int = 4) -> torch.Tensor:
    """Per-frame camera from 2D–3D correspondences by scaled orthography with POSIT refinement.

    model_points [L, 3] (FLAME ×5 world), image_points [K, L, 2] (crop pixels), weights [K, L]
    → transform_matrix [K, 3, 4] in the tracker convention (row vectors, PyTorch3D NDC)."""
    dtype = image_points.dtype
    f_px = focal * image_size / 2.0
    # PyTorch3D NDC: u = S/2 - f·X/Z, v = S/2 - f·Y/Z → normalised image coordinates a = X/Z, b = Y/Z
    ab = (image_size / 2.0 - image_points) / f_px  # [K, L, 2]
    w = weights.clamp_min(0).to(dtype)
    wsum = w.sum(1, keepdim=True).clamp_min(1e-8)  # [K,1]
    centre = (w[..., None] * model_points).sum(1) / wsum  # [K,3]
    m = model_points[None] - centre[:, None]  # [K, L, 3]
    eps = torch.zeros(ab.shape[:2], dtype=dtype, device=ab.device)  # perspective correction, POSIT
    for _ in range(iterations):
        target = ab * (1.0 + eps[..., None])
        t_mean = (w[..., None] * target).sum(1) / wsum  # [K, 2]
        a = m * w[..., None].sqrt()
        y = (target - t_mean[:, None]) * w[..., None].sqrt()
        # least squares P [K, 3, 2]: m @ P ≈ target - mean
        ata = a.transpose(1, 2) @ a + 1e-9 * torch.eye(3, dtype=dtype, device=ab.device)
        p = torch.linalg.solve(ata, a.transpose(1, 2) @ y)  # [K, 3, 2]
        u, s, vh = torch.linalg.svd(p.transpose(1, 2), full_matrices=False)  # p^T = [K,2,3]
        rows = u @ vh  # nearest matrix with orthonormal rows [K, 2, 3]
        scale = s.mean(-1)  # 1/Z of the centroid
        r3 = torch.cross(rows[:, 0], rows[:, 1], dim=-1)
        r_col = torch.cat([rows, r3[:, None]], dim=1)  # camera rows (column-vector convention)
        z0 = 1.0 / scale.clamp_min(1e-8)
        eps = (m @ r3[..., None]).squeeze(-1) / z0[:, None]
    # X_cam(centre) = (t_mean·z0, z0); X_cam = R_col X + T → T = X_cam(centre) - R_col centre
    cam_centre = torch.cat([t_mean * z0[:, None], z0[:, None]], dim=-1)
    translation = cam_centre - (r_col @ centre[..., None]).squeeze(-1)
    return torch.cat([r_col.transpose(1, 2), translation[..., None]], dim=-1)


def _fill_unobserved(transform: torch.Tensor, observed: torch.Tensor) -> torch.Tensor:
    """Cameras of frames without landmarks [K, 3, 4] start from the nearest observed frame."""
    if bool(observed.all()) or not bool(observed.any()):
        return transform
    frames = torch.arange(len(observed), device=transform.device)
    seen = frames[observed]
    nearest = seen[(frames[:, None] - seen[None]).abs().argmin(1)]
    return transform[nearest]


def _pseudo_huber(dist: torch.Tensor, delta: float) -> torch.Tensor:
    return delta * delta * (torch.sqrt(1.0 + (dist / delta) ** 2) - 1.0) * 2.0


def _cosine(step: int, total: int, floor: float = 0.05) -> float:
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * min(step, total) / max(total, 1)))


class _Fit:
    """Parameters of one batch of frames and the loss over them."""

    def __init__(self, lmk_flame: LandmarkFlame, target: torch.Tensor, weights: torch.Tensor,
                 init_transform: torch.Tensor, shape: torch.Tensor | None, config: TrackingConfig,
                 image_size: int, focal: float, depth: torch.Tensor | None = None) -> None:
        k = target.shape[0]
        dev, dt = target.device, target.dtype
        self.flame, self.config, self.image_size, self.focal = lmk_flame, config, image_size, focal
        self.target, self.weights = target, weights
        # detector depths [K, L] (crop px, any origin; NaN: none) relative to each frame's mean
        self.depth_mask = None
        if depth is not None and config.dense_depth_weight > 0 and bool(torch.isfinite(depth).any()):
            self.depth_mask = torch.isfinite(depth) & (weights > 0)
            filled = torch.where(self.depth_mask, depth, torch.zeros_like(depth))
            count = self.depth_mask.sum(1, keepdim=True).clamp_min(1)
            self.depth = filled - filled.sum(1, keepdim=True) / count
        self.norm = weights.sum(1).clamp_min(1e-6)  # [K]
        self.frame_valid = (weights.sum(1) > 0).to(dt)
        self.shared_shape = shape is None
        self.shape = nn.Parameter(torch.zeros(1, lmk_flame.n_shape, device=dev, dtype=dt)) if shape is None \
            else shape.detach().reshape(1, -1).to(dev, dt)
        self.expression = nn.Parameter(torch.zeros(k, lmk_flame.n_expression, device=dev, dtype=dt))
        self.jaw = nn.Parameter(torch.zeros(k, 3, device=dev, dtype=dt))
        self.eyes = nn.Parameter(torch.zeros(k, 6, device=dev, dtype=dt))
        self.rot6d = nn.Parameter(matrix_to_rotation_6d(init_transform[:, :, :3]).clone())
        self.translation = nn.Parameter(init_transform[:, :, 3].clone())

    def transform(self) -> torch.Tensor:
        return torch.cat([rotation_6d_to_matrix(self.rot6d), self.translation[..., None]], dim=-1)

    def points(self) -> torch.Tensor:
        return self.flame(self.shape, self.expression, self.jaw, self.eyes)

    def project(self, points: torch.Tensor | None = None) -> torch.Tensor:
        points = self.points() if points is None else points
        return project_points(points, self.transform(), self.focal, self.image_size, self.image_size)

    def _depth_loss(self, points: torch.Tensor, transform: torch.Tensor) -> torch.Tensor:
        """Pseudo-Huber gap (px at 512²) between the model's relative depths, scaled to pixels
        like x (f/z̄), and the detector's, over the points that have one."""
        mask = self.depth_mask.to(points.dtype)
        z = (points @ transform[:, :, :3] + transform[:, None, :, 3])[..., 2]  # [K, L] camera depth
        count = mask.sum(1).clamp_min(1.0)
        mean = (z * mask).sum(1) / count
        model_px = (z - mean[:, None]) * (self.focal * self.image_size / 2.0) / mean[:, None].clamp_min(1e-3)
        gap = (model_px - self.depth) * (REFERENCE_SIZE / self.image_size)
        return ((_pseudo_huber(gap, self.config.robust_px) * mask).sum(1) / count).mean()

    def loss(self, rigid_only: bool, points: torch.Tensor | None = None) -> torch.Tensor:
        c = self.config
        to_ref = REFERENCE_SIZE / self.image_size
        points = self.points() if points is None else points
        transform = self.transform()
        uv = project_points(points, transform, self.focal, self.image_size, self.image_size)
        dist = (uv - self.target).norm(dim=-1) * to_ref  # [K, L] px at 512²
        data = ((_pseudo_huber(dist, c.robust_px) * self.weights).sum(1) / self.norm)
        loss = (data * self.frame_valid).sum() / self.frame_valid.sum().clamp_min(1.0)
        if self.depth_mask is not None:
            loss = loss + c.dense_depth_weight * self._depth_loss(points, transform)
        if len(self.rot6d) > 1:
            diff = lambda x: (x[1:] - x[:-1]).pow(2).sum(-1).mean()
            # 6D entries move ~0.017 per degree: ×100 weighs a degree of jitter like ~5 cm of head translation
            camera = diff(self.rot6d) * 100.0 + diff(self.translation)
            loss = loss + c.smoothness * camera
            if not rigid_only:
                loss = loss + c.smoothness * (diff(self.expression) + diff(self.jaw) * 10.0 + diff(self.eyes))
        if not rigid_only:
            loss = loss + c.expression_prior * self.expression.pow(2).sum(-1).mean()
            if c.rigid_expression_prior > 0:
                # image motion (px at 512²) that expression alone gives the rigid points: ~f/z per unit
                depth = self.translation[:, 2].detach().abs().clamp_min(1e-3)
                px = self.flame.rigid_expression_motion(self.expression).norm(dim=-1) * (
                    self.focal * REFERENCE_SIZE / 2.0 / depth)[:, None]
                loss = loss + c.rigid_expression_prior * px.pow(2).mean()
            loss = loss + c.jaw_prior * self.jaw.pow(2).sum(-1).mean() + c.eye_prior * self.eyes.pow(2).sum(-1).mean()
            if self.shared_shape:
                loss = loss + c.shape_prior * self.shape.pow(2).sum()
        return loss

    def optimise(self, steps: int, rigid_only: bool) -> None:
        c = self.config
        groups = [{"params": [self.rot6d], "lr": c.lr_pose}, {"params": [self.translation], "lr": c.lr_translation}]
        if not rigid_only:
            groups += [
                {"params": [self.expression], "lr": c.lr_expression},
                {"params": [self.jaw], "lr": c.lr_jaw},
                {"params": [self.eyes], "lr": c.lr_eyes},
            ]
            if self.shared_shape:
                groups.append({"params": [self.shape], "lr": c.lr_shape})
        optimiser = torch.optim.Adam(groups)
        base = [g["lr"] for g in optimiser.param_groups]
        fixed = None
        if rigid_only:  # the mesh does not move in this stage: skin it once
            with torch.no_grad():
                fixed = self.points()
        for step in range(steps):
            factor = _cosine(step, steps)
            for group, lr in zip(optimiser.param_groups, base):
                group["lr"] = lr * factor
            optimiser.zero_grad(set_to_none=True)
            self.loss(rigid_only, fixed).backward()
            optimiser.step()


def head_bbox(flame: FlameModel, shape: torch.Tensor, expression: torch.Tensor, jaw: torch.Tensor,
              eyes: torch.Tensor, transform: torch.Tensor, focal: float, image_size: int,
              chunk: int = 64) -> torch.Tensor:
    """Head box of the projected FLAME mesh [K, 4] (x1, y1, x2, y2) normalised to [0, 1]."""
    boxes = []
    for start in range(0, expression.shape[0], chunk):
        sl = slice(start, start + chunk)
        n = expression[sl].shape[0]
        pose = torch.cat([jaw.new_zeros(n, 3), jaw[sl]], dim=1)
        verts = flame(shape.expand(n, -1), expression[sl], pose, eyes[sl]).vertices
        uv = project_points(verts, transform[sl], focal, image_size, image_size)
        boxes.append(torch.cat([uv.amin(1), uv.amax(1)], dim=-1))
    return (torch.cat(boxes) / image_size).clamp(0.0, 1.0)


@torch.no_grad()
def _median_residual(pred: torch.Tensor, target: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """[K] median distance (crop pixels) over the points the fit used, pupils aside: the 68 iBUG
    points, or the dense ones when only those are weighted."""
    dist = (pred - target).norm(dim=-1)
    used = weights > 0
    used[:, PUPILS] = False
    dist = torch.where(used, dist, torch.full_like(dist, float("nan")))
    return dist.nanquantile(0.5, dim=1)  # the mean of the two middle values, as numpy's median


def track_landmarks(flame: FlameModel, landmarks: np.ndarray, valid: np.ndarray, image_size: int, focal: float,
                    config: TrackingConfig, device: torch.device | str | None = None,
                    lmk_flame: LandmarkFlame | None = None, dense: np.ndarray | None = None) -> TrackResult:
    """Fit one clip: landmarks [K, 70, 2] in crop pixels (x right, y down, pixel centres at +0.5),
    valid [K] or [K, 70 + D] (False: not observed), optionally ``dense`` [K, D, 2 | 3] points of the
    extra embedding ``lmk_flame`` was built with (third column: the detector's depth, crop pixels,
    smaller is nearer; NaN: none) → :class:`TrackResult`. One shape for all
    frames; frames beyond ``config.max_frames_per_batch`` reuse the shape of the first batch."""
    device = resolve_device(config.device) if device is None else torch.device(device)
    flame = flame.to(device)
    lmk_flame = (lmk_flame or LandmarkFlame(flame)).to(device)
    landmarks = np.asarray(landmarks)
    if landmarks.ndim != 3 or landmarks.shape[1:] != (NUM_LANDMARKS, 2):
        raise ValueError(f"landmarks must be [K, {NUM_LANDMARKS}, 2], got {tuple(landmarks.shape)}")
    n_dense = lmk_flame.num_landmarks - NUM_LANDMARKS
    depth_all = None
    if n_dense:
        dense = None if dense is None else np.asarray(dense)
        if dense is None or dense.shape[:2] != (len(landmarks), n_dense) or dense.shape[2] not in (2, 3):
            raise ValueError(f"this tracker fits {n_dense} dense points: dense must be [K, {n_dense}, 2 or 3]")
        if dense.shape[2] == 3:  # the detector's relative depth of each dense point (crop px)
            depth = np.full((len(landmarks), NUM_LANDMARKS + n_dense), np.nan, np.float32)
            depth[:, NUM_LANDMARKS:] = dense[:, :, 2]
            depth_all = torch.as_tensor(depth, device=device)
        landmarks = np.concatenate([landmarks, dense[:, :, :2].astype(landmarks.dtype)], 1)
    target_all = torch.as_tensor(landmarks, dtype=torch.float32, device=device)
    weights_all = landmark_weights(valid, config, n_dense).to(device)
    with torch.no_grad():
        zero = torch.zeros(1, lmk_flame.n_expression, device=device)
        mean_points = lmk_flame(torch.zeros(1, lmk_flame.n_shape, device=device), zero,
                                torch.zeros(1, 3, device=device), torch.zeros(1, 6, device=device))[0]
    shape: torch.Tensor | None = None
    parts: list[dict[str, torch.Tensor]] = []
    for start in range(0, target_all.shape[0], config.max_frames_per_batch):
        sl = slice(start, start + config.max_frames_per_batch)
        target, weights = target_all[sl], weights_all[sl]
        init_w = weights.clone()
        init_w[:, CONTOUR] *= 0.5  # the mean face's contour fits least; lean on the inner landmarks
        init = closed_form_camera(mean_points, target, init_w, focal, image_size)
        init = _fill_unobserved(init, weights.sum(1) > 0)
        fit = _Fit(lmk_flame, target, weights, init, shape, config, image_size, focal,
                   None if depth_all is None else depth_all[sl])
        fit.optimise(config.rigid_steps, rigid_only=True)
        fit.optimise(config.steps, rigid_only=False)
        shape = fit.shape.detach()
        with torch.no_grad():
            parts.append({
                "expression": fit.expression.detach(), "jaw": fit.jaw.detach(), "eyes": fit.eyes.detach(),
                "transform": fit.transform().detach(), "landmarks": fit.project().detach(),
            })
    cat = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
    with torch.no_grad():
        bbox = head_bbox(flame, shape, cat["expression"], cat["jaw"], cat["eyes"], cat["transform"], focal, image_size)
        residual = _median_residual(cat["landmarks"], target_all, weights_all)
    cat["landmarks"] = cat["landmarks"][:, :NUM_LANDMARKS]
    as_np = lambda t: t.detach().float().cpu().numpy()
    return TrackResult(
        shape=as_np(shape[0]), expression=as_np(cat["expression"]), jaw=as_np(cat["jaw"]), eyes=as_np(cat["eyes"]),
        transform_matrix=as_np(cat["transform"]), bbox=as_np(bbox), landmarks=as_np(cat["landmarks"]),
        residual_px=as_np(residual), image_size=int(image_size), focal=float(focal),
    )

"""Rotation and camera conventions, in one place.

Rotations: axis-angle ↔ matrix ↔ 6D (PyTorch3D's 6D: the first two *rows* of the matrix).

Cameras: the GAGAvatar tracker stores a PyTorch3D-style ``transform_matrix`` [R|T] of shape
[..., 3, 4] mapping world (FLAME ×5) points to camera space with *row vectors*:
``X_cam = X_world @ R + T``. PyTorch3D camera space has +x left, +y up, +z forward; with a
focal length ``f`` in NDC units (principal point 0) a point lands at ``x_ndc = f·X/Z``,
``y_ndc = f·Y/Z`` where NDC +1 is the left / top image edge (square images).

The rasterizer API takes OpenCV world-to-camera 4×4 matrices (column vectors, +x right,
+y down) and pixel intrinsics with pixel (i, j)'s centre at (j + 0.5, i + 0.5):
``fx = fy = focal · min(W, H) / 2``, ``cx = W / 2``, ``cy = H / 2``.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

_FLIP_XY = (-1.0, -1.0, 1.0)


def device_constant(values: tuple, dtype: torch.dtype, device: torch.device | str | None) -> torch.Tensor:
    """A small constant tensor, made once per (values, dtype, device). Building it from Python
    data on every call is a copy from pageable host memory, which on CUDA waits for everything
    queued on the stream: one such copy per training step stalls the host's run-ahead.
    Do not modify the result in place. Inside ``torch.compile`` it is a traced constant."""
    if torch.compiler.is_compiling():
        return torch.tensor(values, dtype=dtype, device=device)
    return _cached_constant(values, dtype, torch.device(device) if device is not None else torch.device("cpu"))


@functools.lru_cache(maxsize=128)
def _cached_constant(values: tuple, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    with torch.inference_mode(False):  # first made under inference_mode, it must still work in autograd
        return torch.tensor(values, dtype=dtype, device=device)


def _skew(v: torch.Tensor) -> torch.Tensor:
    """[..., 3] → [..., 3, 3] cross-product matrices."""
    x, y, z = v.unbind(-1)
    o = torch.zeros_like(x)
    return torch.stack([o, -z, y, z, o, -x, -y, x, o], dim=-1).reshape(*v.shape[:-1], 3, 3)


def axis_angle_to_matrix(axis_angle: torch.Tensor) -> torch.Tensor:
    """Rodrigues. [..., 3] axis·angle (radians) → [..., 3, 3] rotation matrices (column-vector
    convention, ``R @ x`` rotates x). Smooth at zero (Taylor terms below 1e-4 rad)."""
    theta2 = (axis_angle * axis_angle).sum(-1, keepdim=True).unsqueeze(-1)  # [...,1,1]
    theta = theta2.clamp_min(1e-12).sqrt()
    small = theta2 < 1e-8
    a = torch.where(small, 1.0 - theta2 / 6.0, torch.sin(theta) / theta)
    b = torch.where(small, 0.5 - theta2 / 24.0, (1.0 - torch.cos(theta)) / theta2.clamp_min(1e-12))
    k = _skew(axis_angle)
    eye = torch.eye(3, dtype=axis_angle.dtype, device=axis_angle.device).expand_as(k)
    return eye + a * k + b * (k @ k)


def matrix_to_axis_angle(matrix: torch.Tensor) -> torch.Tensor:
    """[..., 3, 3] → [..., 3] axis·angle, angle in [0, π]. Via quaternions for stability."""
    q = matrix_to_quaternion(matrix)
    w, xyz = q[..., :1], q[..., 1:]
    norm = xyz.norm(dim=-1, keepdim=True)
    angle = 2.0 * torch.atan2(norm, w)
    # |xyz| = sin(angle/2); near zero angle/sin(angle/2) ≈ 2 + angle²/12
    scale = torch.where(norm < 1e-6, 2.0 + angle**2 / 12.0, angle / norm.clamp_min(1e-12))
    return xyz * scale


def quaternion_to_matrix(q: torch.Tensor, normalize: bool = True) -> torch.Tensor:
    """[..., 4] quaternion (w, x, y, z) → [..., 3, 3]. With ``normalize=False`` the textbook
    formula is applied to q as given, so a non-unit q gives a non-orthogonal matrix, exactly as
    graphdeco's ``computeCov3D`` does (the released GAGAvatar rasterizer relies on it)."""
    if normalize:
        q = F.normalize(q, dim=-1)
    w, x, y, z = q.unbind(-1)
    return torch.stack(
        [
            1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
            2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
            2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
        ],
        dim=-1,
    ).reshape(*q.shape[:-1], 3, 3)


def matrix_to_quaternion(m: torch.Tensor) -> torch.Tensor:
    """[..., 3, 3] → [..., 4] (w, x, y, z) with w ≥ 0. Picks the best-conditioned branch."""
    m00, m01, m02 = m[..., 0, 0], m[..., 0, 1], m[..., 0, 2]
    m10, m11, m12 = m[..., 1, 0], m[..., 1, 1], m[..., 1, 2]
    m20, m21, m22 = m[..., 2, 0], m[..., 2, 1], m[..., 2, 2]
    candidates = torch.stack(
        [
            torch.stack([1 + m00 + m11 + m22, m21 - m12, m02 - m20, m10 - m01], -1),
            torch.stack([m21 - m12, 1 + m00 - m11 - m22, m01 + m10, m02 + m20], -1),
            torch.stack([m02 - m20, m01 + m10, 1 - m00 + m11 - m22, m12 + m21], -1),
            torch.stack([m10 - m01, m02 + m20, m12 + m21, 1 - m00 - m11 + m22], -1),
        ],
        dim=-2,
    )  # [..., 4 branches, 4]; branch k has 4·q_k² in slot k
    diag = torch.stack([1 + m00 + m11 + m22, 1 + m00 - m11 - m22, 1 - m00 + m11 - m22, 1 - m00 - m11 + m22], -1)
    best = diag.argmax(-1, keepdim=True)
    chosen = torch.gather(candidates, -2, best.unsqueeze(-1).expand(*best.shape[:-1], 1, 4)).squeeze(-2)
    q = chosen / (2.0 * torch.gather(diag, -1, best).clamp_min(1e-12).sqrt())
    return torch.where(q[..., :1] < 0, -q, q)


def rotation_6d_to_matrix(d6: torch.Tensor) -> torch.Tensor:
    """[..., 6] → [..., 3, 3] by Gram–Schmidt; the two 3-vectors become the first two rows."""
    a1, a2 = d6[..., :3], d6[..., 3:]
    b1 = F.normalize(a1, dim=-1)
    b2 = F.normalize(a2 - (b1 * a2).sum(-1, keepdim=True) * b1, dim=-1)
    b3 = torch.cross(b1, b2, dim=-1)
    return torch.stack((b1, b2, b3), dim=-2)


def matrix_to_rotation_6d(matrix: torch.Tensor) -> torch.Tensor:
    """[..., 3, 3] → [..., 6] (first two rows)."""
    return matrix[..., :2, :].reshape(*matrix.shape[:-2], 6)


def euler_to_matrix(yaw: torch.Tensor, pitch: torch.Tensor, roll: torch.Tensor) -> torch.Tensor:
    """Head rotation from yaw (about +y), pitch (about +x), roll (about +z), radians:
    R = R_y(yaw) @ R_x(pitch) @ R_z(roll). [...] each → [..., 3, 3]."""
    zeros = torch.zeros_like(yaw)
    ry = axis_angle_to_matrix(torch.stack([zeros, yaw, zeros], -1))
    rx = axis_angle_to_matrix(torch.stack([pitch, zeros, zeros], -1))
    rz = axis_angle_to_matrix(torch.stack([zeros, zeros, roll], -1))
    return ry @ rx @ rz


def matrix_to_euler(matrix: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`euler_to_matrix`: [..., 3, 3] → [..., 3] (yaw, pitch, roll)."""
    pitch = torch.asin((-matrix[..., 1, 2]).clamp(-1.0, 1.0))
    yaw = torch.atan2(matrix[..., 0, 2], matrix[..., 2, 2])
    roll = torch.atan2(matrix[..., 1, 0], matrix[..., 1, 1])
    return torch.stack([yaw, pitch, roll], -1)


# ----------------------------------------------------------------------------- cameras


def look_at_transform(distance: float | torch.Tensor, head_rotation: torch.Tensor | None = None,
                      translation: torch.Tensor | None = None) -> torch.Tensor:
    """The tracker-convention ``transform_matrix`` [..., 3, 4] of a camera on the world +z axis at
    ``distance`` looking at the origin (the face looks towards +z), for a head rotated by
    ``head_rotation`` [..., 3, 3] (column-vector, world frame) and shifted by ``translation`` [..., 3].

    Head motion is expressed as camera motion, as GAGAvatar does: rotating the head by Rh equals
    viewing the unrotated head with R = Rhᵀ-composed camera rotation.
    """
    if head_rotation is None:
        head_rotation = torch.eye(3)
    batch = head_rotation.shape[:-2]
    dtype, device = head_rotation.dtype, head_rotation.device
    # PyTorch3D look_at from +z towards the origin: R0 = diag(-1, 1, -1) (row-vector convention).
    r0 = torch.diag(torch.tensor([-1.0, 1.0, -1.0], dtype=dtype, device=device))
    # X_cam = (Rh X + t) @ R0 + T0 = X @ (Rhᵀ R0) + (t @ R0 + T0)
    rotation = head_rotation.transpose(-1, -2) @ r0
    distance_t = torch.as_tensor(distance, dtype=dtype, device=device)
    t0 = torch.stack([torch.zeros_like(distance_t), torch.zeros_like(distance_t), distance_t], -1)
    t0 = t0.expand(*batch, 3) if t0.dim() == 1 else t0
    if translation is not None:
        t0 = t0 + (translation.unsqueeze(-2) @ r0).squeeze(-2)
    return torch.cat([rotation, t0.unsqueeze(-1)], dim=-1)


def transform_to_viewmat(transform_matrix: torch.Tensor) -> torch.Tensor:
    """Tracker [R|T] (PyTorch3D, row vectors) [..., 3, 4] → OpenCV world-to-camera [..., 4, 4].

    X_p3d = Rᵀ X + T (column form); OpenCV flips x and y: R_cv = diag(-1,-1,1) Rᵀ, t_cv = diag(-1,-1,1) T.
    """
    rotation, translation = transform_matrix[..., :3, :3], transform_matrix[..., :3, 3]
    flip = device_constant(_FLIP_XY, transform_matrix.dtype, transform_matrix.device)
    view = torch.zeros(*transform_matrix.shape[:-2], 4, 4, dtype=transform_matrix.dtype, device=transform_matrix.device)
    view[..., :3, :3] = flip[:, None] * rotation.transpose(-1, -2)
    view[..., :3, 3] = flip * translation
    view[..., 3, 3] = 1.0
    return view


def viewmat_to_transform(viewmat: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`transform_to_viewmat`: [..., 4, 4] → [..., 3, 4]."""
    flip = device_constant(_FLIP_XY, viewmat.dtype, viewmat.device)
    rotation = (flip[:, None] * viewmat[..., :3, :3]).transpose(-1, -2)
    translation = flip * viewmat[..., :3, 3]
    return torch.cat([rotation, translation.unsqueeze(-1)], dim=-1)


def intrinsics(focal: float, width: int, height: int, batch_shape: tuple[int, ...] = (),
               dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> torch.Tensor:
    """Pixel intrinsics [*batch_shape, 3, 3] for an NDC focal (PyTorch3D, square-pixel NDC)."""
    f = focal * min(width, height) / 2.0
    k = device_constant(((f, 0.0, width / 2.0), (0.0, f, height / 2.0), (0.0, 0.0, 1.0)), dtype, device)
    return k.expand(*batch_shape, 3, 3).clone()


def camera_center(transform_matrix: torch.Tensor) -> torch.Tensor:
    """World position of the camera [..., 3]: X_cam = 0 ⇔ X = -T Rᵀ."""
    rotation, translation = transform_matrix[..., :3, :3], transform_matrix[..., :3, 3]
    return -(translation.unsqueeze(-2) @ rotation.transpose(-1, -2)).squeeze(-2)


def camera_forward(transform_matrix: torch.Tensor) -> torch.Tensor:
    """World direction of the camera's optical axis [..., 3] (PyTorch3D +z): v = R (0,0,1)."""
    return transform_matrix[..., :3, 2]


def project_points(points: torch.Tensor, transform_matrix: torch.Tensor, focal: float,
                   width: int, height: int) -> torch.Tensor:
    """Project world points [B, N, 3] with a tracker camera [B, 3, 4] to pixels [B, N, 2]
    (x right, y down, pixel centres at +0.5), through PyTorch3D NDC."""
    cam = points @ transform_matrix[..., :3, :3] + transform_matrix[..., None, :3, 3]
    z = cam[..., 2:3]
    ndc = focal * cam[..., :2] / z
    s = min(width, height) / 2.0
    u = width / 2.0 - ndc[..., 0] * s
    v = height / 2.0 - ndc[..., 1] * s
    return torch.stack([u, v], dim=-1)


def project_points_opencv(points: torch.Tensor, viewmat: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """Project world points [B, N, 3] with OpenCV matrices ([B,4,4], [B,3,3]) to pixels [B, N, 2]."""
    cam = points @ viewmat[..., :3, :3].transpose(-1, -2) + viewmat[..., None, :3, 3]
    uvw = cam @ K.transpose(-1, -2)
    return uvw[..., :2] / uvw[..., 2:3]

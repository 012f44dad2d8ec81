"""Types and helpers shared by every rasterizer backend (no backend imports here)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from model.geometry import device_constant, matrix_to_quaternion, quaternion_to_matrix

# The 2D low-pass added to the projected covariance's diagonal (pixels²), hard-coded in both
# graphdeco's and gsplat's kernels: every Gaussian covers at least about one pixel.
LOW_PASS = 0.3
ALPHA_MIN = 1.0 / 255.0  # contributions below this alpha are skipped
ALPHA_MAX = 0.99  # graphdeco's clamp (gsplat clamps at 0.999; equal below 0.99)
T_MIN = 1e-4  # a pixel stops compositing once its transmittance would fall below this


@dataclass
class RenderOutput:
    """What :func:`model.rasterizer.render_gaussians` returns.

    image: [B, C, H, W] features composited over ``background``.
    alpha: [B, 1, H, W] accumulated opacity 1 − T; None only for inria builds that return none.
    depth: [B, 1, H, W] expected camera z (Σ wᵢzᵢ / Σ wᵢ, 0 where alpha is 0), or None when
        ``RasterizerConfig.render_depth`` is off or the backend cannot render it.
    backend: the backend that rendered ("torch", "gsplat" or "inria").
    """

    image: torch.Tensor
    alpha: torch.Tensor | None
    depth: torch.Tensor | None
    backend: str


@dataclass
class SplatInputs:
    """Validated, shape-normalised inputs handed to a backend.

    means [B,N,3]; quats [B,N,4] and scales [B,N,3] (None when ``covariances`` is given);
    covariances [B,N,3,3] or None; opacities [B,N]; features [B,N,C]; viewmats [B,4,4];
    Ks [B,3,3]; background [C].
    """

    means: torch.Tensor
    quats: torch.Tensor | None
    scales: torch.Tensor | None
    covariances: torch.Tensor | None
    opacities: torch.Tensor
    features: torch.Tensor
    viewmats: torch.Tensor
    Ks: torch.Tensor
    width: int
    height: int
    background: torch.Tensor

    @property
    def batch(self) -> int:
        return self.means.shape[0]

    @property
    def channels(self) -> int:
        return self.features.shape[-1]


def quaternion_rotation(quats: torch.Tensor, normalize: bool) -> torch.Tensor:
    """[..., 4] (w, x, y, z) → [..., 3, 3]; without ``normalize`` the raw quaternion, as
    graphdeco's ``computeCov3D`` (its normalisation is commented out)."""
    return quaternion_to_matrix(quats, normalize=normalize)


# The same R(q) as (flat index into q qᵀ, coefficient) pairs: R = I + Σ coef·qₐq_b, two terms per
# entry of the row-major R.
_W, _X, _Y, _Z = 0, 1, 2, 3
_R_TERMS = (
    ((_Y, _Y, -2.0), (_Z, _Z, -2.0)), ((_X, _Y, 2.0), (_W, _Z, -2.0)), ((_X, _Z, 2.0), (_W, _Y, 2.0)),
    ((_X, _Y, 2.0), (_W, _Z, 2.0)), ((_X, _X, -2.0), (_Z, _Z, -2.0)), ((_Y, _Z, 2.0), (_W, _X, -2.0)),
    ((_X, _Z, 2.0), (_W, _Y, -2.0)), ((_Y, _Z, 2.0), (_W, _X, 2.0)), ((_X, _X, -2.0), (_Y, _Y, -2.0)),
)


def _covariance_few_ops(q: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """Σ in ~10 batched ops and no matmul. For GPUs: at 180k Gaussians per sample the nine
    stacked expressions cost more in launches than in arithmetic, and a batched matmul of
    millions of 3×3 matrices is slow. (On CPU the broadcasts over tiny trailing dims are slow.)"""
    dev, dt = q.device, q.dtype
    idx = device_constant(tuple(tuple(4 * a + b for a, b, _ in t) for t in _R_TERMS), torch.int64, dev).T  # [2, 9]
    coef = device_constant(tuple(tuple(c for _, _, c in t) for t in _R_TERMS), dt, dev).T
    qq = (q.unsqueeze(-1) * q.unsqueeze(-2)).flatten(-2)  # [..., 16]
    r = torch.eye(3, dtype=dt, device=dev).flatten() + qq[..., idx[0]] * coef[0] + qq[..., idx[1]] * coef[1]
    m = r.unflatten(-1, (3, 3)) * scales.unsqueeze(-2)  # R S
    return (m.unsqueeze(-2) * m.unsqueeze(-3)).sum(-1)  # M Mᵀ


def covariance_from_quat_scale(quats: torch.Tensor, scales: torch.Tensor, normalize: bool) -> torch.Tensor:
    """World-space 3D covariance Σ = R(q) S Sᵀ R(q)ᵀ.

    quats: [..., 4] (w, x, y, z); scales: [..., 3] linear standard deviations → [..., 3, 3].
    ``normalize=False`` reproduces the released GAGAvatar rasterizer, which builds R from the
    raw quaternion: its expression Gaussians have |q| ≈ 0.004–0.06, so R ≈ I and Σ ≈ S².
    ``normalize=True`` is what gsplat and most 3DGS code do. Both agree for unit quaternions.
    """
    if quats.is_cuda:
        return _covariance_few_ops(F.normalize(quats, dim=-1) if normalize else quats, scales)
    m = quaternion_rotation(quats, normalize) * scales.unsqueeze(-2)  # R S: scales the columns
    return m @ m.transpose(-1, -2)


def quat_scale_from_covariance(cov: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit quaternions [..., 4] (w, x, y, z) and scales [..., 3] with R(q) S² R(q)ᵀ = ``cov``
    [..., 3, 3] (symmetric PSD), by eigendecomposition in float64. Lets a rasterizer that
    normalises quaternions (gsplat) draw Gaussians whose covariance came from raw quaternions,
    without a per-call covariance input. No gradient: for cached, inference-only Gaussians."""
    with torch.no_grad():
        values, vectors = torch.linalg.eigh(cov.double())  # columns: eigenvectors
        # a reflection → a rotation: flipping every column keeps v vᵀ, and so Σ
        vectors = vectors * torch.where(torch.linalg.det(vectors) < 0, -1.0, 1.0)[..., None, None]
        quats = matrix_to_quaternion(vectors)
        scales = values.clamp_min(0).sqrt()
    return quats.to(cov.dtype), scales.to(cov.dtype)


class CovarianceFromQuatScale(torch.nn.Module):
    """``covariance_from_quat_scale`` as a parameter-free module, so that a model can hand it to
    ``torch.compile`` with its other regions: compiled, forward and backward are one fused kernel
    each instead of ~10 launches over every Gaussian of the batch."""

    def __init__(self, normalize: bool) -> None:
        super().__init__()
        self.normalize = normalize

    def forward(self, quats: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
        return covariance_from_quat_scale(quats, scales, self.normalize)


def upper_triangle(cov: torch.Tensor) -> torch.Tensor:
    """[..., 3, 3] symmetric → [..., 6] (xx, xy, xz, yy, yz, zz), the CUDA kernels' layout."""
    # basic indexing and one stack: an index list would be a host→device copy (a stream wait)
    return torch.stack([cov[..., r, c] for r, c in ((0, 0), (0, 1), (0, 2), (1, 1), (1, 2), (2, 2))], dim=-1)


def prepare_inputs(
    means: torch.Tensor,
    quats: torch.Tensor | None,
    scales: torch.Tensor | None,
    opacities: torch.Tensor,
    features: torch.Tensor,
    viewmats: torch.Tensor,
    Ks: torch.Tensor,
    width: int,
    height: int,
    background: torch.Tensor | None,
    covariances: torch.Tensor | None,
) -> SplatInputs:
    """Checks shapes (metadata only, no device sync) and fills defaults."""
    if means.dim() != 3 or means.shape[-1] != 3:
        raise ValueError(f"means must be [B,N,3], got {tuple(means.shape)}")
    B, N = means.shape[:2]

    def check(name: str, t: torch.Tensor, shape: tuple[int, ...]) -> None:
        if tuple(t.shape) != shape:
            raise ValueError(f"{name} must have shape {list(shape)}, got {list(t.shape)}")

    if covariances is not None:
        check("covariances", covariances, (B, N, 3, 3))
        quats = scales = None
    else:
        if quats is None or scales is None:
            raise ValueError("give either quats and scales, or covariances")
        check("quats", quats, (B, N, 4))
        check("scales", scales, (B, N, 3))
    if opacities.dim() == 3:
        check("opacities", opacities, (B, N, 1))
        opacities = opacities.squeeze(-1)
    check("opacities", opacities, (B, N))
    if features.dim() != 3 or features.shape[:2] != (B, N):
        raise ValueError(f"features must be [B,N,C] with B,N = {B},{N}, got {list(features.shape)}")
    check("viewmats", viewmats, (B, 4, 4))
    check("Ks", Ks, (B, 3, 3))
    C = features.shape[-1]
    if background is None:
        background = features.new_zeros(C)
    check("background", background, (C,))
    return SplatInputs(
        means=means, quats=quats, scales=scales, covariances=covariances, opacities=opacities,
        features=features, viewmats=viewmats, Ks=Ks, width=int(width), height=int(height),
        background=background.to(features.dtype),
    )

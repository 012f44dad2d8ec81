"""gsplat (nerfstudio) backend: one ``gsplat.rasterization`` call for the whole batch.

gsplat ≥ 1.5 takes leading batch dimensions: means [B,N,3] with viewmats [B,1,4,4] renders
one camera per batch element, no Python loop. gsplat normalises quaternions, so unless
``config.normalize_quats`` is set we hand it covariances built from the raw quaternion
(graphdeco's semantic) through its ``covars`` argument; this needs no device sync.
"""

from __future__ import annotations

from model.config import RasterizerConfig
from model.rasterizer.common import RenderOutput, SplatInputs, covariance_from_quat_scale


def render(inp: SplatInputs, config: RasterizerConfig) -> RenderOutput:
    """Shapes as in :class:`SplatInputs`; CUDA float32 tensors."""
    import gsplat  # CUDA kernels: imported only when this backend is chosen

    if not inp.means.is_cuda:
        raise RuntimeError("the gsplat backend needs CUDA tensors; use backend='torch' on CPU")
    B, C = inp.batch, inp.channels
    covars, quats, scales = inp.covariances, inp.quats, inp.scales
    if covars is None and not config.normalize_quats:
        covars = covariance_from_quat_scale(quats, scales, normalize=False)
    if covars is not None:
        quats = scales = None  # gsplat ignores them when covars is given
    depth = config.render_depth
    colors, alphas, _ = gsplat.rasterization(
        inp.means,  # [B,N,3]
        quats,  # [B,N,4] or None
        scales,  # [B,N,3] or None
        inp.opacities,  # [B,N]
        inp.features,  # [B,N,C]
        inp.viewmats.unsqueeze(1),  # [B,1,4,4]: one camera per batch element
        inp.Ks.unsqueeze(1),  # [B,1,3,3]
        inp.width,
        inp.height,
        near_plane=config.near_plane,
        far_plane=config.far_plane,
        sh_degree=None,
        packed=False,
        backgrounds=inp.background.expand(B, 1, C).contiguous(),  # [B,1,C]
        render_mode="RGB+ED" if depth else "RGB",
        covars=covars,  # [B,N,3,3] or None
        # one kernel pass for the features and the depth channel (the default of 32 would
        # split C=32 features + depth into two passes)
        channel_chunk=C + int(depth),
    )
    colors = colors[:, 0].permute(0, 3, 1, 2)  # [B,1,H,W,C(+1)] → [B,C(+1),H,W]
    return RenderOutput(
        image=colors[:, :C],
        alpha=alphas[:, 0].permute(0, 3, 1, 2),
        depth=colors[:, C:] if depth else None,
        backend="gsplat",
    )

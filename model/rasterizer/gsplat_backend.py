"""gsplat (nerfstudio) backend: the whole batch in one pass of gsplat's CUDA stages.

gsplat ≥ 1.5 takes leading batch dimensions: means [B,N,3] with viewmats [B,1,4,4] renders one
camera per batch element, no Python loop. We call its stages ourselves — projection, tile
intersection, offsets, rasterization — exactly as ``gsplat.rasterization`` chains them for our
case (post-activation features, pinhole, classic mode, not packed, tile 16, eps2d 0.3, the
opacity-aware radii), without its conveniences we do not use:

- covariances go in as the 6-value upper triangle the projection kernel takes, gathered here
  with a cached device index: ``rasterization()`` gathers them with a Python index list, a host→device copy
  that makes the host wait for the stream on every call (and a scatter in backward);
- the depth channel is appended only when ``config.render_depth`` asks for it.

gsplat normalises quaternions, so unless ``config.normalize_quats`` is set we hand it
covariances built from the raw quaternion (graphdeco's semantic). The tile-intersection stage
sizes its buffers from a device count (one host sync per call, inside gsplat).
"""

from __future__ import annotations

import math

import torch

from model.config import RasterizerConfig
from model.geometry import device_constant
from model.rasterizer.common import RenderOutput, SplatInputs, covariance_from_quat_scale

TILE_SIZE = 16  # gsplat.rasterization's default
EPS_2D = 0.3  # the 2D low-pass gsplat (and graphdeco) add to projected covariances
UPPER = (0, 1, 2, 4, 5, 8)  # xx, xy, xz, yy, yz, zz in a row-major 3×3


def _upper_triangle(cov: torch.Tensor) -> torch.Tensor:
    """[..., 3, 3] → [..., 6]: one gather with a cached device index (backward: one scatter)."""
    return cov.flatten(-2).index_select(-1, device_constant(UPPER, torch.int64, cov.device))


def render(inp: SplatInputs, config: RasterizerConfig) -> RenderOutput:
    """Shapes as in :class:`SplatInputs`; CUDA float32 tensors."""
    from gsplat.cuda._wrapper import (  # CUDA kernels: imported only when this backend is chosen
        fully_fused_projection,
        isect_offset_encode,
        isect_tiles,
        rasterize_to_pixels,
    )

    if not inp.means.is_cuda:
        raise RuntimeError("the gsplat backend needs CUDA tensors; use backend='torch' on CPU")
    B, C, W, H = inp.batch, inp.channels, inp.width, inp.height
    covars, quats, scales = inp.covariances, inp.quats, inp.scales
    if covars is None and not config.normalize_quats:
        covars = covariance_from_quat_scale(quats, scales, normalize=False)
    if covars is not None:
        covars, quats, scales = _upper_triangle(covars), None, None  # [B,N,6]
    viewmats, Ks = inp.viewmats.unsqueeze(1), inp.Ks.unsqueeze(1)  # [B,1,4,4], [B,1,3,3]: one camera each
    radii, means2d, depths, conics, _ = fully_fused_projection(
        inp.means, covars, quats, scales, viewmats, Ks, W, H, eps2d=EPS_2D, near_plane=config.near_plane,
        far_plane=config.far_plane, radius_clip=0.0, packed=False, calc_compensations=False,
        opacities=inp.opacities,  # a tighter radius bound, as rasterization() does
    )  # [B,1,N,2], [B,1,N,2], [B,1,N], [B,1,N,3]
    colors = inp.features.unsqueeze(1)  # [B,1,N,C]
    background = inp.background.expand(B, 1, C)
    depth = config.render_depth
    if depth:  # expected depth: Σwz composited as one more channel, divided by alpha below
        colors = torch.cat([colors, depths.unsqueeze(-1)], dim=-1)
        background = torch.cat([background, background.new_zeros(B, 1, 1)], dim=-1)
    tile_w, tile_h = math.ceil(W / TILE_SIZE), math.ceil(H / TILE_SIZE)
    _, isect_ids, flatten_ids = isect_tiles(means2d, radii, depths, TILE_SIZE, tile_w, tile_h, packed=False)
    offsets = isect_offset_encode(isect_ids, B, tile_w, tile_h).view(B, 1, tile_h, tile_w)
    image, alpha = rasterize_to_pixels(
        means2d, conics, colors, inp.opacities.unsqueeze(1), W, H, TILE_SIZE, offsets, flatten_ids,
        backgrounds=background.contiguous(),
    )  # [B,1,H,W,C(+1)], [B,1,H,W,1]
    image, alpha = image[:, 0].permute(0, 3, 1, 2), alpha[:, 0].permute(0, 3, 1, 2)  # NHWC memory, NCHW shape
    return RenderOutput(
        image=image[:, :C],
        alpha=alpha,
        depth=image[:, C:] / alpha.clamp(min=1e-10) if depth else None,
        backend="gsplat",
    )

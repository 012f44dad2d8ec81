"""Pure-PyTorch 3D Gaussian splatting: the reference every CUDA backend is tested against.

Same maths as graphdeco's and gsplat's kernels (EWA projection, 0.3 low-pass, depth-sorted
front-to-back compositing with alpha = min(0.99, o·exp(−½dᵀΣ⁻¹d)), alphas below 1/255
skipped, a pixel stops once its transmittance would fall below 1e-4), written as dense tensor
work over pixel tiles so autograd gives the backward pass. Runs on CPU and GPU.

How the work is laid out:
1. project every Gaussian (differentiable), then, without grad, bound the pixels where its
   alpha can reach 1/255 (the exact ellipse dᵀΣ⁻¹d ≤ 2·ln(255·o), so the box never changes
   the image) and list the (tile, Gaussian) pairs, sorted by tile then depth;
2. composite tiles in steps of at most ``torch_max_elements`` (pixel × Gaussian) pairs: each
   step takes the next ≤ ``torch_chunk_size`` depth-sorted Gaussians of every still-busy tile,
   evaluates alphas densely on the tile's pixels, carries the transmittance between steps and
   accumulates Σ wᵢfᵢ with one batched matmul. Tiles are ordered by their Gaussian count, so
   the busy tiles of a step are always a prefix. With more than one step and
   ``torch_recompute`` each step is recomputed in backward, which bounds memory by one step.

Differences from the CUDA kernels, all below float32 noise in practice: the pixel box is the
exact alpha ≥ 1/255 region where graphdeco cuts at tiles touched by a 3σ square (gsplat uses
the same opacity-aware box as here), and the gradient of the 0.99 clamp is 0 (graphdeco's
backward ignores the clamp).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.checkpoint import checkpoint

from model.config import RasterizerConfig
from model.rasterizer.common import (
    ALPHA_MAX,
    ALPHA_MIN,
    LOW_PASS,
    T_MIN,
    RenderOutput,
    SplatInputs,
    covariance_from_quat_scale,
)


@dataclass
class Projection:
    """Per-Gaussian screen-space quantities, [B,N,...]. Pixel (i, j)'s centre is (j+½, i+½)."""

    means2d: torch.Tensor  # [B,N,2] pixels
    conics: torch.Tensor  # [B,N,3] (a, b, c) of Σ₂ᴰ⁻¹ = [[a, b], [b, c]]
    cov2d: torch.Tensor  # [B,N,3] (xx, xy, yy) of Σ₂ᴰ, low-pass included
    depths: torch.Tensor  # [B,N] camera z
    valid: torch.Tensor  # [B,N] bool: inside the near/far planes
    radii: torch.Tensor  # [B,N] graphdeco's ceil(3·sqrt(λmax)) (no grad; informational)


def project_gaussians(
    means: torch.Tensor,
    cov3d: torch.Tensor,
    viewmats: torch.Tensor,
    Ks: torch.Tensor,
    width: int,
    height: int,
    near_plane: float,
    far_plane: float,
) -> Projection:
    """EWA projection. means [B,N,3], cov3d [B,N,3,3] world; viewmats [B,4,4] OpenCV
    world→camera; Ks [B,3,3] pixels. Jacobian of the pinhole projection at the Gaussian centre,
    with x/z and y/z clamped to 0.3·tan(fov/2) beyond the image edges (1.3·tan(fov/2) for a
    centred principal point) as graphdeco and gsplat do, so off-screen Gaussians stay small."""
    R = viewmats[:, None, :3, :3]  # [B,1,3,3]
    mean_c = (R @ means.unsqueeze(-1)).squeeze(-1) + viewmats[:, None, :3, 3]
    cov_c = R @ cov3d @ R.transpose(-1, -2)
    x, y, z = mean_c.unbind(-1)
    valid = (z > near_plane) & (z < far_plane)
    z = torch.where(valid, z, torch.ones_like(z))  # culled Gaussians must not make inf/NaN grads

    fx, fy = Ks[:, 0, 0, None], Ks[:, 1, 1, None]  # [B,1]
    cx, cy = Ks[:, 0, 2, None], Ks[:, 1, 2, None]
    tan_x, tan_y = 0.5 * width / fx, 0.5 * height / fy
    tx = z * torch.minimum(torch.maximum(x / z, -(cx / fx + 0.3 * tan_x)), (width - cx) / fx + 0.3 * tan_x)
    ty = z * torch.minimum(torch.maximum(y / z, -(cy / fy + 0.3 * tan_y)), (height - cy) / fy + 0.3 * tan_y)
    j00, j11 = fx / z, fy / z
    j02, j12 = -fx * tx / (z * z), -fy * ty / (z * z)

    c00, c01, c02 = cov_c[..., 0, 0], cov_c[..., 0, 1], cov_c[..., 0, 2]
    c11, c12, c22 = cov_c[..., 1, 1], cov_c[..., 1, 2], cov_c[..., 2, 2]
    a = j00 * j00 * c00 + 2 * j00 * j02 * c02 + j02 * j02 * c22 + LOW_PASS
    b = j00 * j11 * c01 + j00 * j12 * c02 + j02 * j11 * c12 + j02 * j12 * c22
    c = j11 * j11 * c11 + 2 * j11 * j12 * c12 + j12 * j12 * c22 + LOW_PASS
    det = a * c - b * b
    valid = valid & (det > 0)
    det = torch.where(valid, det, torch.ones_like(det))
    conics = torch.stack([c / det, -b / det, a / det], dim=-1)
    means2d = torch.stack([fx * x / z + cx, fy * y / z + cy], dim=-1)
    with torch.no_grad():
        mid = 0.5 * (a + c)
        lam = mid + torch.sqrt(torch.clamp(mid * mid - det, min=0.1))
        radii = torch.where(valid, torch.ceil(3.0 * torch.sqrt(lam)), torch.zeros_like(lam))
    return Projection(means2d, conics, torch.stack([a, b, c], -1), mean_c[..., 2], valid, radii)


@dataclass
class _Bins:
    """(tile, Gaussian) pairs sorted by tile then depth, and the tiles in compositing order."""

    pair_splat: torch.Tensor  # [P] flat b·N+g per pair
    tiles: torch.Tensor  # [T] flat b·n_tiles+t of tiles with ≥1 pair, most pairs first
    offsets: torch.Tensor  # [T] first pair of each tile
    counts: np.ndarray  # [T] pairs per tile, host copy (plans the steps)


def _bin_tiles(proj: Projection, opacities: torch.Tensor, width: int, height: int, tile: int) -> _Bins | None:
    """Non-differentiable binning. Sizes are data-dependent, so it syncs with the host a few
    times (valid Gaussians, pair count, per-tile counts), as gsplat's tile intersection does."""
    B, N = opacities.shape
    dev = opacities.device
    ntx, nty = math.ceil(width / tile), math.ceil(height / tile)
    with torch.no_grad():
        o = opacities.detach()
        valid = proj.valid & (o >= ALPHA_MIN)
        # alpha ≥ 1/255 ⇔ dᵀΣ⁻¹d ≤ 2 ln(255·o): the ellipse's half-extents are sqrt(k·Σxx), sqrt(k·Σyy)
        k = 2.0 * torch.log(torch.clamp(o, min=ALPHA_MIN) / ALPHA_MIN)
        cov = proj.cov2d.detach()
        ext_x = torch.sqrt(k * cov[..., 0]) * (1 + 1e-4) + 1e-3  # margin for rounding only
        ext_y = torch.sqrt(k * cov[..., 2]) * (1 + 1e-4) + 1e-3
        mx, my = proj.means2d.detach().unbind(-1)
        # pixel j is inside when |j + ½ − mx| ≤ ext_x
        j0 = torch.clamp(torch.ceil(mx - ext_x - 0.5), min=0)
        j1 = torch.clamp(torch.floor(mx + ext_x - 0.5), max=width - 1)
        i0 = torch.clamp(torch.ceil(my - ext_y - 0.5), min=0)
        i1 = torch.clamp(torch.floor(my + ext_y - 0.5), max=height - 1)
        valid = valid & (j0 <= j1) & (i0 <= i1)
        s = torch.nonzero(valid.flatten()).squeeze(1)  # flat b·N+g
        if s.numel() == 0:
            return None
        tx0 = (j0.flatten()[s] // tile).long()
        tx1 = (j1.flatten()[s] // tile).long()
        ty0 = (i0.flatten()[s] // tile).long()
        ty1 = (i1.flatten()[s] // tile).long()
        wt = tx1 - tx0 + 1
        cnt = wt * (ty1 - ty0 + 1)
        sid = torch.repeat_interleave(torch.arange(s.numel(), device=dev), cnt)
        local = torch.arange(sid.numel(), device=dev) - (torch.cumsum(cnt, 0) - cnt)[sid]
        tile_x = tx0[sid] + local % wt[sid]
        tile_y = ty0[sid] + local // wt[sid]
        splat = s[sid]
        tile_key = (splat // N) * (ntx * nty) + tile_y * ntx + tile_x
        # depth rank within the batch element; stable so equal depths keep index order
        order = torch.argsort(torch.where(valid, proj.depths.detach(), torch.inf), dim=1, stable=True)
        rank = torch.empty_like(order).scatter_(1, order, torch.arange(N, device=dev).expand(B, N))
        key, perm = torch.sort(tile_key * N + rank.flatten()[splat])
        pair_splat = splat[perm]
        counts = torch.bincount(key // N, minlength=B * ntx * nty)
        offsets = torch.cumsum(counts, 0) - counts
        counts_sorted, tiles = torch.sort(counts, descending=True, stable=True)
        counts_host = counts_sorted.cpu().numpy()
        n_active = int((counts_host > 0).sum())
        tiles = tiles[:n_active]
        return _Bins(pair_splat, tiles, offsets[tiles], counts_host[:n_active])


def _plan_steps(counts: np.ndarray, chunk: int, pixels: int, max_elements: int) -> list[tuple[int, int, int]]:
    """(first slot, busy tiles, slots) per step; ``counts`` is sorted descending."""
    steps, l0, lmax = [], 0, int(counts[0])
    neg = -counts
    while l0 < lmax:
        busy = int(np.searchsorted(neg, -l0, side="left"))  # tiles with count > l0
        n = max(1, min(chunk, max_elements // max(1, busy * pixels), lmax - l0))
        steps.append((l0, busy, n))
        l0 += n
    return steps


def _composite_step(
    T: torch.Tensor,
    T_all: torch.Tensor,
    px: torch.Tensor,
    py: torch.Tensor,
    sidx: torch.Tensor,
    slot_ok: torch.Tensor,
    means2d: torch.Tensor,
    conics: torch.Tensor,
    opacities: torch.Tensor,
    feats: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One step over k tiles of P pixels and n Gaussian slots.

    T: [k,P] transmittance before this step (differentiable); T_all: [k,P] the same but also
    multiplied by alphas that were cut (no grad; it decides the cut); px, py: [k,P] pixel
    centres; sidx, slot_ok: [k,n] flat Gaussian index per slot and whether the slot is real;
    means2d [M,2], conics [M,3], opacities [M], feats [M,F]: flat per-Gaussian tables.
    Returns Σ wᵢfᵢ [k,P,F], T after the step [k,P], T_all after the step [k,P].
    """
    k, n = sidx.shape
    flat = sidx.reshape(-1)

    def take(table: torch.Tensor) -> torch.Tensor:
        # index_select: its backward is an atomic index_add; advanced indexing's backward
        # (index_put_ with accumulate) sorts and is far slower on CUDA
        return table.index_select(0, flat).view(k, n, *table.shape[1:])

    mx, my = take(means2d).unbind(-1)  # [k,n]
    ca, cb, cc = take(conics).unbind(-1)
    op = take(opacities) * slot_ok
    dx = px.unsqueeze(2) - mx.unsqueeze(1)  # [k,P,n]
    dy = py.unsqueeze(2) - my.unsqueeze(1)
    power = -0.5 * (ca.unsqueeze(1) * dx * dx + cc.unsqueeze(1) * dy * dy) - cb.unsqueeze(1) * dx * dy
    alpha = torch.clamp(op.unsqueeze(1) * torch.exp(power), max=ALPHA_MAX)
    alpha = torch.where((alpha >= ALPHA_MIN) & (power <= 0), alpha, torch.zeros_like(alpha))
    t_incl = torch.cumprod(1.0 - alpha, dim=2)  # factors ≥ 0.01: cumprod's backward stays exact
    with torch.no_grad():
        t_all = T_all.unsqueeze(2) * t_incl
        # graphdeco stops a pixel at the first alpha that would take T below 1e-4 and skips it;
        # T_all only decreases, so the kept slots are a prefix
        keep = t_all >= T_MIN
        n_keep = keep.sum(dim=2, keepdim=True)
    ones = torch.ones_like(t_incl[..., :1])
    t_excl = torch.cat([ones, t_incl[..., :-1]], dim=2)
    w = T.unsqueeze(2) * t_excl * torch.where(keep, alpha, torch.zeros_like(alpha))
    contrib = torch.bmm(w, take(feats))  # [k,P,F]
    T_new = T * torch.gather(torch.cat([ones, t_incl], dim=2), 2, n_keep).squeeze(2)
    return contrib, T_new, t_all[..., -1]


def render(inp: SplatInputs, config: RasterizerConfig) -> RenderOutput:
    """Reference rasterizer; see the module docstring. Shapes as in :class:`SplatInputs`."""
    B, N, C = inp.batch, inp.means.shape[1], inp.channels
    W, H, ts = inp.width, inp.height, config.torch_tile_size
    dev, dtype = inp.means.device, inp.means.dtype
    cov3d = inp.covariances
    if cov3d is None:
        cov3d = covariance_from_quat_scale(inp.quats, inp.scales, normalize=config.normalize_quats)
    proj = project_gaussians(
        inp.means, cov3d, inp.viewmats, inp.Ks, W, H, config.near_plane, config.far_plane
    )
    feats = inp.features.to(dtype)
    if config.render_depth:
        feats = torch.cat([feats, proj.depths.unsqueeze(-1)], dim=-1)
    F_ = feats.shape[-1]
    ntx, nty, P = math.ceil(W / ts), math.ceil(H / ts), ts * ts
    acc_full = torch.zeros(B * ntx * nty, P, F_, device=dev, dtype=dtype)
    T_full = torch.ones(B * ntx * nty, P, device=dev, dtype=dtype)

    bins = _bin_tiles(proj, inp.opacities, W, H, ts)
    if bins is not None:
        tables = (
            proj.means2d.reshape(B * N, 2),
            proj.conics.reshape(B * N, 3),
            inp.opacities.reshape(B * N).to(dtype),
            feats.reshape(B * N, F_),
        )
        tile_id = bins.tiles % (ntx * nty)
        lp = torch.arange(P, device=dev)
        px = ((tile_id % ntx) * ts).unsqueeze(1) + (lp % ts).unsqueeze(0) + 0.5
        py = ((tile_id // ntx) * ts).unsqueeze(1) + (lp // ts).unsqueeze(0) + 0.5
        px, py = px.to(dtype), py.to(dtype)
        counts_dev = torch.as_tensor(bins.counts, device=dev)
        steps = _plan_steps(bins.counts, config.torch_chunk_size, P, config.torch_max_elements)
        recompute = config.torch_recompute and len(steps) > 1 and torch.is_grad_enabled()

        n_tiles, n_pairs = len(bins.counts), bins.pair_splat.numel()
        acc = torch.zeros(n_tiles, P, F_, device=dev, dtype=dtype)
        T = torch.ones(n_tiles, P, device=dev, dtype=dtype)
        T_all = torch.ones(n_tiles, P, device=dev, dtype=dtype)
        T_done: list[torch.Tensor] = []  # final T of tiles that finished, last tiles first
        for l0, k, n in steps:
            if k < T.shape[0]:  # the last tiles have no more Gaussians: their T is final
                T_done.append(T[k:])
                T, T_all = T[:k], T_all[:k]
            slot = l0 + torch.arange(n, device=dev)
            slot_ok = slot.unsqueeze(0) < counts_dev[:k].unsqueeze(1)  # [k,n]
            # padded slots read arbitrary pairs (their opacity is zeroed) spread over all pairs:
            # thousands of reads of one row would serialise the backward's accumulation
            spread = (torch.arange(k, device=dev).unsqueeze(1) * n + slot) % n_pairs
            pos = torch.where(slot_ok, bins.offsets[:k].unsqueeze(1) + slot, spread)
            sidx = bins.pair_splat[pos]
            args = (T, T_all, px[:k], py[:k], sidx, slot_ok.to(dtype), *tables)
            if recompute:
                contrib, T, T_all = checkpoint(_composite_step, *args, use_reentrant=False)
            else:
                contrib, T, T_all = _composite_step(*args)
            acc[:k] += contrib
        T_final = torch.cat([T, *reversed(T_done)], dim=0)
        acc_full = acc_full.index_copy(0, bins.tiles, acc)
        T_full = T_full.index_copy(0, bins.tiles, T_final)

    def to_image(t: torch.Tensor) -> torch.Tensor:  # [B·tiles, P, X] → [B, X, H, W]
        X = t.shape[-1]
        t = t.reshape(B, nty, ntx, ts, ts, X).permute(0, 5, 1, 3, 2, 4)
        return t.reshape(B, X, nty * ts, ntx * ts)[:, :, :H, :W]

    acc_img = to_image(acc_full)
    T_img = to_image(T_full.unsqueeze(-1))
    alpha = 1.0 - T_img
    image = acc_img[:, :C] + T_img * inp.background.to(dtype).view(1, C, 1, 1)
    depth = acc_img[:, C:] / alpha.clamp(min=1e-10) if config.render_depth else None
    return RenderOutput(image=image, alpha=alpha, depth=depth, backend="torch")

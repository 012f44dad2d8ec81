"""GAGAvatar training losses (docs/released_model.md, Training recipe), outside the network; weights from :class:`LossConfig`.

total = image + box + perceptual + lifting (+ ssim), each already weighted:

- image: ``image_weight``·½[L1(coarse, gt) + L1(refined, gt)] on the full image;
- box: ``box_weight``·½[L1 on head crops, coarse + refined]; crops: the target's tracked bbox
  (normalised x1,y1,x2,y2) made square with side √(wh)·``box_expand`` around its centre, shrunk
  to fit the image (the released ``expand_bbox``), resampled bilinearly to ``box_size``² with
  ``grid_sample`` (roi-align style, one sample per output pixel; batched, no loop);
- perceptual: ``perceptual_weight``·[P(coarse crop) + P(refined crop)], P from
  :func:`model.perceptual.build_perceptual` (batch mean);
- lifting: ``lifting_weight``·mean over vertices and batch of the squared distance from each
  target FLAME vertex to its nearest lifted point (nearest index without gradient; chunked over
  vertices and points, all on the tensors' device);
- ssim: ``ssim_weight``·½[(1 − SSIM coarse) + (1 − SSIM refined)] (off in the released recipe).

When the renderer is disabled (``refined is coarse``) each pair is computed once and doubled.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from model.config import LossConfig
from model.gagavatar import AvatarOutput
from model.perceptual import build_perceptual


def expand_bbox(bbox: torch.Tensor, scale: float) -> torch.Tensor:
    """[B,4] normalised (x1,y1,x2,y2) → a square of side √(wh)·scale around the box centre,
    shrunk so it stays inside [0,1]² (released ``expand_bbox``)."""
    x1, y1, x2, y2 = bbox.unbind(-1)
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    side = ((x2 - x1) * (y2 - y1)).clamp_min(0).sqrt() * scale
    side = torch.minimum(side, torch.minimum(torch.minimum(2 * cx, 2 * cy), torch.minimum(2 * (1 - cx), 2 * (1 - cy))))
    side = side.clamp_min(1e-3)  # a degenerate box still gives a defined (tiny) crop
    half = side / 2
    return torch.stack([cx - half, cy - half, cx + half, cy + half], dim=-1)


def crop_boxes(images: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
    """images [B,C,H,W], boxes [B,4] normalised (x1,y1,x2,y2) → [B,C,size,size]: bilinear
    samples at the centres of a size×size grid over each box (no antialiasing: the released
    head boxes are upsampled, ~340 → 512 px)."""
    boxes = boxes.to(images.dtype)
    t = (torch.arange(size, device=images.device, dtype=images.dtype) + 0.5) / size  # [S]
    x1, y1, x2, y2 = boxes[:, 0:1], boxes[:, 1:2], boxes[:, 2:3], boxes[:, 3:4]
    gx = (x1 + t * (x2 - x1)) * 2 - 1  # [B,S] in grid_sample's [−1,1] (align_corners=False)
    gy = (y1 + t * (y2 - y1)) * 2 - 1
    grid = torch.stack([gx[:, None, :].expand(-1, size, -1), gy[:, :, None].expand(-1, -1, size)], dim=-1)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _block_min(q: torch.Tensor, p: torch.Tensor, p_sq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """min over points of ‖p‖² − 2⟨q,p⟩ (= ‖q−p‖² − ‖q‖²) and its index: q [B,V,3], p [B,P,3],
    p_sq [B,P] → ([B,V], [B,V]). Written as a broadcast so that torch.compile turns it into one
    reduction kernel that never materialises the [B,V,P] distances."""
    dot = q[..., 0:1] * p[:, None, :, 0] + q[..., 1:2] * p[:, None, :, 1] + q[..., 2:3] * p[:, None, :, 2]
    return (p_sq[:, None, :] - 2.0 * dot).min(dim=-1)


_fused_block_min = None


def _nearest_index_fused(q: torch.Tensor, p: torch.Tensor, p_sq: torch.Tensor, query_chunk: int) -> torch.Tensor:
    """CUDA: the compiled :func:`_block_min` over all points at once (no [B,V,P] tensor)."""
    global _fused_block_min
    if _fused_block_min is None:
        _fused_block_min = torch.compile(_block_min, dynamic=False, fullgraph=True)
    return torch.cat([_fused_block_min(q[:, v0:v0 + query_chunk], p, p_sq)[1] for v0 in range(0, q.shape[1], query_chunk)], 1)


def _nearest_index_chunked(q: torch.Tensor, p: torch.Tensor, p_sq: torch.Tensor, query_chunk: int,
                           point_chunk: int) -> torch.Tensor:
    """Anywhere: running minima over (query chunk × point chunk) blocks with matmuls (memory ≈
    B·query_chunk·point_chunk·4 bytes)."""
    nearest = []
    for v0 in range(0, q.shape[1], query_chunk):
        qc = q[:, v0:v0 + query_chunk]
        best = qc.new_full(qc.shape[:2], float("inf"))
        best_idx = torch.zeros(qc.shape[:2], dtype=torch.long, device=qc.device)
        for p0 in range(0, p.shape[1], point_chunk):
            pc = p[:, p0:p0 + point_chunk]
            d = torch.baddbmm(p_sq[:, None, p0:p0 + point_chunk], qc, pc.transpose(1, 2), alpha=-2.0)
            val, idx = d.min(dim=-1)
            better = val < best
            best = torch.where(better, val, best)
            best_idx = torch.where(better, idx + p0, best_idx)
        nearest.append(best_idx)
    return torch.cat(nearest, dim=1)


def nearest_sq_distances(queries: torch.Tensor, points: torch.Tensor, query_chunk: int = 1024,
                         point_chunk: int = 16384, search: str = "fused") -> torch.Tensor:
    """For each query [B,V,3] the squared distance to its nearest point in [B,P,3] → [B,V].

    The nearest indices are found without gradient, in float32; ``search`` (on CUDA): "triton",
    one tiled kernel (:mod:`model.nearest_triton`); "fused", one compiled reduction; "chunked"
    (and always on CPU): running minima over matmul blocks. The distance is then recomputed
    exactly, differentiable w.r.t. the points (and the queries). No host synchronisation.
    """
    if search not in SEARCHES:
        raise ValueError(f"unknown nearest-neighbour search {search!r}; one of {SEARCHES}")
    search = search if points.is_cuda else "chunked"
    with torch.no_grad(), torch.autocast(device_type=points.device.type, enabled=False):
        if search == "triton":
            from model.nearest_triton import nearest_index

            index = nearest_index(queries, points)
        else:
            q = queries.detach().float()
            p = points.detach().float()
            origin = q.mean(dim=1, keepdim=True)  # centring keeps the expansion's cancellation small
            q, p = q - origin, p - origin
            p_sq = p.pow(2).sum(-1)  # [B,P]
            if search == "fused":
                index = _nearest_index_fused(q, p, p_sq, query_chunk)
            else:
                index = _nearest_index_chunked(q, p, p_sq, query_chunk, point_chunk)
    chosen = torch.gather(points, 1, index[..., None].expand(-1, -1, 3))
    return (queries.to(chosen.dtype) - chosen).pow(2).sum(-1)


SEARCHES = ("fused", "chunked", "triton")


def _gaussian_window(size: int, sigma: float, channels: int, like: torch.Tensor) -> torch.Tensor:
    x = torch.arange(size, dtype=like.dtype, device=like.device) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).expand(channels, 1, size, size).contiguous()


def ssim(x: torch.Tensor, y: torch.Tensor, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Mean SSIM per image [B] (Gaussian 11×11 window, σ 1.5, data range 1, valid region)."""
    C = x.shape[1]
    w = _gaussian_window(window, sigma, C, x)
    mu_x, mu_y = F.conv2d(x, w, groups=C), F.conv2d(y, w, groups=C)
    sxx = F.conv2d(x * x, w, groups=C) - mu_x**2
    syy = F.conv2d(y * y, w, groups=C) - mu_y**2
    sxy = F.conv2d(x * y, w, groups=C) - mu_x * mu_y
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mu_x * mu_y + c1) * (2 * sxy + c2)) / ((mu_x**2 + mu_y**2 + c1) * (sxx + syy + c2))
    return s.mean(dim=(1, 2, 3))


class GAGAvatarLoss(nn.Module):
    """The training objective. Owns the (frozen) perceptual network; holds no trainable state.

    ``forward(output, target_image [B,3,H,W] in [0,1], target_bbox [B,4] normalised,
    target_vertices [B,V,3] FLAME ×5)`` → dict of weighted scalar terms ``image``, ``box``,
    ``perceptual``, ``lifting``, ``ssim`` (0 when disabled) and ``total``.
    """

    def __init__(self, config: LossConfig) -> None:
        super().__init__()
        self.config = config
        self.perceptual = build_perceptual(config) if config.perceptual_weight > 0 else None

    def _pair(self, output: AvatarOutput, fn) -> torch.Tensor:
        """fn(coarse) + fn(refined), once doubled when the renderer is off."""
        if output.refined is output.coarse:
            return 2 * fn(output.coarse)
        return fn(output.coarse) + fn(output.refined)

    def forward(self, output: AvatarOutput, target_image: torch.Tensor, target_bbox: torch.Tensor,
                target_vertices: torch.Tensor) -> dict[str, torch.Tensor]:
        cfg = self.config
        gt = target_image.float()
        zero = gt.new_zeros(())
        terms = {"image": zero, "box": zero, "perceptual": zero, "lifting": zero, "ssim": zero}
        if cfg.image_weight > 0:
            terms["image"] = cfg.image_weight * 0.5 * self._pair(output, lambda x: F.l1_loss(x.float(), gt))
        if cfg.box_weight > 0 or self.perceptual is not None:
            boxes = expand_bbox(target_bbox.float(), cfg.box_expand)
            gt_crop = crop_boxes(gt, boxes, cfg.box_size)
            crops = {}

            def crop(x: torch.Tensor) -> torch.Tensor:
                if id(x) not in crops:
                    crops[id(x)] = crop_boxes(x.float(), boxes, cfg.box_size)
                return crops[id(x)]

            if cfg.box_weight > 0:
                terms["box"] = cfg.box_weight * 0.5 * self._pair(output, lambda x: F.l1_loss(crop(x), gt_crop))
            if self.perceptual is not None:
                terms["perceptual"] = cfg.perceptual_weight * self._pair(
                    output, lambda x: self.perceptual(crop(x), gt_crop).mean()
                )
        if cfg.lifting_weight > 0:
            d = nearest_sq_distances(target_vertices, output.lifted_points, cfg.lifting_chunk_size,
                                     cfg.lifting_point_chunk_size, search=cfg.lifting_search)
            terms["lifting"] = cfg.lifting_weight * d.mean()
        if cfg.ssim_weight > 0:
            terms["ssim"] = cfg.ssim_weight * 0.5 * self._pair(output, lambda x: (1 - ssim(x.float(), gt)).mean())
        terms["total"] = sum(terms.values())
        return terms

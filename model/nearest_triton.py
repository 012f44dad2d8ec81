"""Nearest-point search of the lifting loss as one tiled Triton kernel (CUDA).

Each program holds a block of queries and streams the points through in tiles, so every point is
read once per query block instead of once per query (the compiled reduction of
:mod:`model.losses` reads all points for every query: 16 ms of a 192 ms training step on an H100).
The running minimum is kept per (query, tile lane) in registers and reduced across lanes once at
the end: a cross-lane reduction per tile (the first version of this kernel) cost more than the
distances themselves. Distances are exact differences, not the |q|² + |p|² − 2q·p expansion; only
the index is returned (the loss recomputes the distance differentiably). Ties keep the lowest
index of a lane, then the lowest lane: the index may differ from a brute-force argmin only
between points at exactly the same distance.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _nearest_kernel(q_ptr, p_ptr, out_ptr, V, P, BLOCK_V: tl.constexpr, BLOCK_P: tl.constexpr):
    # q: [B,3,V], p: [B,3,P] float32 (coordinate-major: coalesced loads), out: [B,V] int64
    b = tl.program_id(1)
    offs_v = tl.program_id(0) * BLOCK_V + tl.arange(0, BLOCK_V)
    mask_v = offs_v < V
    q_base = q_ptr + b * 3 * V
    qx = tl.load(q_base + offs_v, mask=mask_v, other=0.0)[:, None]
    qy = tl.load(q_base + V + offs_v, mask=mask_v, other=0.0)[:, None]
    qz = tl.load(q_base + 2 * V + offs_v, mask=mask_v, other=0.0)[:, None]
    lanes = tl.arange(0, BLOCK_P)
    best = tl.full([BLOCK_V, BLOCK_P], float("inf"), tl.float32)
    best_index = tl.zeros([BLOCK_V, BLOCK_P], tl.int32)
    p_base = p_ptr + b * 3 * P
    for p0 in range(0, P, BLOCK_P):
        offs_p = p0 + lanes
        mask_p = offs_p < P
        # a missing point sits at infinity: its distance never wins (strict <)
        px = tl.load(p_base + offs_p, mask=mask_p, other=float("inf"))[None, :]
        py = tl.load(p_base + P + offs_p, mask=mask_p, other=float("inf"))[None, :]
        pz = tl.load(p_base + 2 * P + offs_p, mask=mask_p, other=float("inf"))[None, :]
        dx, dy, dz = qx - px, qy - py, qz - pz
        d = dx * dx + dy * dy + dz * dz
        better = d < best
        best = tl.where(better, d, best)
        best_index = tl.where(better, offs_p[None, :], best_index)
    lane_min = tl.min(best, axis=1)
    # the lowest index among the lanes that hold the minimum
    candidate = tl.where(best == lane_min[:, None], best_index, P)
    index = tl.min(candidate, axis=1)
    index = tl.where(index < P, index, 0)  # P = 0 or every point non-finite: index 0
    tl.store(out_ptr + b * V + offs_v, index.to(tl.int64), mask=mask_v)


# 3.4 ms for 8 × 5,023 queries × 175,232 points on an H200 (the compiled reduction: 16.0 ms; other
# block shapes 4.0–6.1 ms): bench/results/train_pieces_h200.json
BLOCK_V, BLOCK_P, NUM_WARPS = 32, 64, 4


def nearest_index(queries: torch.Tensor, points: torch.Tensor, block_v: int = BLOCK_V, block_p: int = BLOCK_P,
                  num_warps: int = NUM_WARPS) -> torch.Tensor:
    """queries [B,V,3], points [B,P,3] → index [B,V] (int64) of each query's nearest point."""
    if queries.ndim != 3 or points.ndim != 3 or queries.shape[-1] != 3 or points.shape[-1] != 3:
        raise ValueError(f"expected [B,V,3] and [B,P,3], got {tuple(queries.shape)} and {tuple(points.shape)}")
    B, V, _ = queries.shape
    P = points.shape[1]
    q = queries.detach().float().transpose(1, 2).contiguous()
    p = points.detach().float().transpose(1, 2).contiguous()
    out = torch.empty(B, V, dtype=torch.int64, device=queries.device)
    _nearest_kernel[(triton.cdiv(V, block_v), B)](q, p, out, V, P, BLOCK_V=block_v, BLOCK_P=block_p,
                                                  num_warps=num_warps)
    return out

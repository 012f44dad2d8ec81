"""A small z-buffer triangle rasterizer in torch (CPU-friendly, deterministic).

Triangles are given in screen space: pixel x (right), pixel y (down), both with pixel (i, j)'s
centre at (j + 0.5, i + 0.5), and camera depth z (> 0, larger is farther). Every (triangle, pixel)
pair inside a triangle's bounding box is tested at once, so the cost grows with the summed
bounding-box area, which stays small for a dense mesh of small triangles (the stand-in head's
10k faces at 256²–1024²: a few hundred thousand pairs). Perspective effects on barycentrics
are ignored: at the tracker's telephoto camera (focal 12 NDC, ~10 units away) they are < 0.5%.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# (triangle, pixel) pairs tested per chunk: bounds peak memory (~40 bytes/pair) for huge triangles
_MAX_PAIRS = 1 << 22


@dataclass
class Fragments:
    """Per-pixel result of :func:`rasterize` for an H×W image.

    face [H,W] int64: index of the visible triangle, −1 where nothing is drawn;
    bary [H,W,3] float: its screen-space barycentric coordinates (zero where empty);
    depth [H,W] float: interpolated camera depth (+inf where empty).
    """

    face: torch.Tensor
    bary: torch.Tensor
    depth: torch.Tensor

    @property
    def mask(self) -> torch.Tensor:
        """[H,W] bool coverage."""
        return self.face >= 0


def _pixel_pairs(x0: torch.Tensor, y0: torch.Tensor, w: torch.Tensor, h: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Enumerate every pixel of each triangle's box. x0, y0, w, h [F] int64 → (triangle index,
    pixel x, pixel y), each [P] with P = Σ w·h."""
    count = w * h
    tri = torch.repeat_interleave(torch.arange(len(count)), count)
    start = torch.cumsum(count, 0) - count
    local = torch.arange(int(count.sum())) - start[tri]
    return tri, x0[tri] + local % w[tri], y0[tri] + local // w[tri]


def rasterize(screen: torch.Tensor, faces: torch.Tensor, height: int, width: int,
              cull_backfaces: bool = True) -> Fragments:
    """Z-buffer rasterization of one mesh.

    screen [V,3] float: (x px, y px, depth) per vertex; faces [F,3] int64, wound so that a face
    seen from the front is counter-clockwise on screen with y down (the stand-in head's outward
    winding under the tracker camera). ``cull_backfaces`` drops clockwise faces (halves the work;
    a closed mesh's silhouette is unchanged). Ties in depth go to the highest face index, so the
    result does not depend on thread scheduling.
    """
    dtype = screen.dtype
    tri = screen[faces]  # [F,3,3]
    x, y, z = tri[..., 0], tri[..., 1], tri[..., 2]
    area = (x[:, 1] - x[:, 0]) * (y[:, 2] - y[:, 0]) - (x[:, 2] - x[:, 0]) * (y[:, 1] - y[:, 0])
    keep = (z > 0).all(1) & (area.abs() > 1e-12)
    if cull_backfaces:
        keep &= area < 0  # counter-clockwise on a y-down screen has negative signed area
    # pixel j's centre j + 0.5 lies in [min, max] ⇔ ceil(min − 0.5) ≤ j ≤ floor(max − 0.5)
    x_lo = torch.ceil(x.min(1).values - 0.5).clamp(0, width).long()
    x_hi = torch.floor(x.max(1).values - 0.5).clamp(-1, width - 1).long()
    y_lo = torch.ceil(y.min(1).values - 0.5).clamp(0, height).long()
    y_hi = torch.floor(y.max(1).values - 0.5).clamp(-1, height - 1).long()
    w, h = (x_hi - x_lo + 1).clamp_min(0), (y_hi - y_lo + 1).clamp_min(0)
    keep &= (w > 0) & (h > 0)
    ids = torch.nonzero(keep).squeeze(1)

    n_pix = height * width
    zbuf = torch.full((n_pix,), float("inf"), dtype=dtype)
    best_key = torch.full((n_pix,), -1, dtype=torch.int64)
    best_bary = torch.zeros(n_pix, 3, dtype=dtype)
    # chunks of whole triangles so that no chunk holds more than _MAX_PAIRS pairs
    counts = (w * h)[ids]
    bounds = torch.cumsum(counts, 0)
    starts = [0]
    while starts[-1] < len(ids):
        limit = (bounds[starts[-1] - 1] if starts[-1] > 0 else 0) + _MAX_PAIRS
        nxt = int(torch.searchsorted(bounds, limit, right=True))
        starts.append(max(nxt, starts[-1] + 1))
    for a, b in zip(starts[:-1], starts[1:]):
        chunk = ids[a:b]
        t, px, py = _pixel_pairs(x_lo[chunk], y_lo[chunk], w[chunk], h[chunk])
        f = chunk[t]
        cx, cy = px.to(dtype) + 0.5, py.to(dtype) + 0.5
        xf, yf = x[f], y[f]
        inv = 1.0 / area[f]
        # edge functions: b_i is the (signed) area of the sub-triangle opposite vertex i
        b0 = ((xf[:, 1] - cx) * (yf[:, 2] - cy) - (xf[:, 2] - cx) * (yf[:, 1] - cy)) * inv
        b1 = ((xf[:, 2] - cx) * (yf[:, 0] - cy) - (xf[:, 0] - cx) * (yf[:, 2] - cy)) * inv
        b2 = 1.0 - b0 - b1
        inside = (b0 >= 0) & (b1 >= 0) & (b2 >= 0)
        f, b0, b1, b2 = f[inside], b0[inside], b1[inside], b2[inside]
        pix = (py * width + px)[inside]
        zf = z[f]
        depth = b0 * zf[:, 0] + b1 * zf[:, 1] + b2 * zf[:, 2]
        # merge with the running z-buffer: nearest first, then the highest face index
        zbuf_new = zbuf.scatter_reduce(0, pix, depth, reduce="amin", include_self=True)
        win = depth == zbuf_new[pix]
        keys = torch.full((n_pix,), -1, dtype=torch.int64)
        keys.scatter_reduce_(0, pix[win], f[win], reduce="amax", include_self=True)
        improved = zbuf_new < zbuf
        tie = (zbuf_new == zbuf) & (keys > best_key)
        take = improved | tie
        sel = win & take[pix] & (f == keys[pix])
        best_key = torch.where(take, keys, best_key)
        best_bary[pix[sel]] = torch.stack([b0[sel], b1[sel], b2[sel]], 1)
        zbuf = zbuf_new
    empty = best_key < 0
    best_bary[empty] = 0.0
    return Fragments(
        face=best_key.view(height, width),
        bary=best_bary.view(height, width, 3),
        depth=zbuf.view(height, width),
    )


def interpolate(fragments: Fragments, faces: torch.Tensor, attributes: torch.Tensor) -> torch.Tensor:
    """Barycentric interpolation of per-vertex attributes [V,C] at the covered pixels.

    Returns [N,C] for the N covered pixels in row-major order (``fragments.mask`` selects them).
    """
    mask = fragments.mask
    f = fragments.face[mask]
    bary = fragments.bary[mask]  # [N,3]
    corners = attributes[faces[f]]  # [N,3,C]
    return (corners * bary.unsqueeze(-1)).sum(1)


def screen_coordinates(vertices: torch.Tensor, transform_matrix: torch.Tensor, focal: float,
                       height: int, width: int) -> torch.Tensor:
    """World points [V,3] seen by a tracker camera [3,4] → screen [V,3] = (x px, y px, depth).

    Same projection as ``model.geometry.project_points`` (PyTorch3D NDC, +x left, +y up flipped to
    pixels), with the camera-space z kept for the z-buffer.
    """
    cam = vertices @ transform_matrix[:3, :3] + transform_matrix[:3, 3]
    z = cam[:, 2]
    s = min(width, height) / 2.0
    u = width / 2.0 - focal * cam[:, 0] / z * s
    v = height / 2.0 - focal * cam[:, 1] / z * s
    return torch.stack([u, v, z], dim=1)


def silhouette(vertices: torch.Tensor, faces: torch.Tensor, transform_matrix: torch.Tensor, focal: float,
               height: int, width: int) -> torch.Tensor:
    """[H,W] bool mask of a mesh (vertices [V,3] world, faces [F,3]) under a tracker camera [3,4]."""
    screen = screen_coordinates(vertices, transform_matrix, focal, height, width)
    return rasterize(screen, faces, height, width).mask

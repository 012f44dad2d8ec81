"""Face alignment for evaluation (docs/released_model.md, Evaluation protocol, GAGAvatar issue #39): five keypoints → a square box
enlarged ×3 around them → the *same* crop applied to the driving ground truth and to the result
→ resized to 512² before any metric. It neutralises differences in how methods frame the head.

Also the ArcFace-style similarity alignment to a 112² template (identity networks).

Images here are numpy uint8 H×W×3 or torch float [3,H,W] / [B,3,H,W] in [0,1]; points are
pixel coordinates (x right, y down, pixel centres at +0.5) in the image they belong to.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

# iBUG-68 indices of the insightface 5-point layout: eye centres (image-left eye first), nose tip,
# mouth corners (image-left first)
_RIGHT_EYE, _LEFT_EYE = slice(36, 42), slice(42, 48)
NOSE_TIP, MOUTH_LEFT, MOUTH_RIGHT = 30, 48, 54

# insightface's arcface_dst for 112×112 crops (eye centres, nose tip, mouth corners)
ARCFACE_TEMPLATE_112 = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    np.float64,
)


def five_points(landmarks68: np.ndarray) -> np.ndarray:
    """[68 or 70, 2] iBUG landmarks → [5, 2] insightface-style keypoints (eye centres, nose tip,
    mouth corners), so that dlib's 68 points stand in for insightface's detector."""
    p = np.asarray(landmarks68, np.float64)
    if p.shape[0] < 68 or p.shape[-1] != 2:
        raise ValueError(f"expected [68, 2] landmarks, got {p.shape}")
    return np.stack([p[_RIGHT_EYE].mean(0), p[_LEFT_EYE].mean(0), p[NOSE_TIP], p[MOUTH_LEFT], p[MOUTH_RIGHT]])


def alignment_box(keypoints: np.ndarray, scale: float = 3.0) -> np.ndarray:
    """Square box (x0, y0, side) in pixels: the keypoints' bounding box centre, side = ``scale`` ×
    its longer edge (×3 covers the whole head for the 5-point layout)."""
    k = np.asarray(keypoints, np.float64)
    lo, hi = k.min(0), k.max(0)
    centre = (lo + hi) / 2.0
    side = max(float((hi - lo).max()) * scale, 1.0)
    return np.array([centre[0] - side / 2.0, centre[1] - side / 2.0, side])


def crop_resize(image: torch.Tensor, box: np.ndarray, size: int) -> torch.Tensor:
    """Crop the square ``box`` (x0, y0, side in pixels of ``image``) out of [B,3,H,W] or [3,H,W]
    float images, zero outside the image, and resize to size² (bilinear, antialiased when
    shrinking). The box is rounded to whole pixels so that the same box gives the same crop for
    every image of one size."""
    squeeze = image.dim() == 3
    x = image[None] if squeeze else image
    H, W = x.shape[-2:]
    x0, y0 = int(round(float(box[0]))), int(round(float(box[1])))
    side = max(1, int(round(float(box[2]))))
    pad = (max(0, -x0), max(0, x0 + side - W), max(0, -y0), max(0, y0 + side - H))  # left, right, top, bottom
    if any(pad):
        x = F.pad(x, pad)  # zeros: matted crops have a black background
    xs, ys = x0 + pad[0], y0 + pad[2]
    crop = x[..., ys:ys + side, xs:xs + side]
    if side != size:
        crop = F.interpolate(crop, size=(size, size), mode="bilinear", align_corners=False, antialias=side > size)
    return crop[0] if squeeze else crop


def box_points(points: np.ndarray, box: np.ndarray, size: int) -> np.ndarray:
    """Map pixel points of the source image into the crop_resize(box, size) image."""
    x0, y0 = round(float(box[0])), round(float(box[1]))
    side = max(1, round(float(box[2])))
    return (np.asarray(points, np.float64) - [x0, y0]) * (size / side)


def resize_to(image: torch.Tensor, size: int) -> torch.Tensor:
    """[B,3,H,W] / [3,H,W] → size² (bilinear, antialiased when shrinking); a no-op at size."""
    if image.shape[-1] == size and image.shape[-2] == size:
        return image
    squeeze = image.dim() == 3
    x = image[None] if squeeze else image
    shrink = x.shape[-1] > size
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=shrink)
    return x[0] if squeeze else x


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (Umeyama, no reflection) mapping src [N,2] onto dst [N,2]:
    the 2×3 matrix M with dst ≈ M @ [x, y, 1]."""
    src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s, d = src - mu_s, dst - mu_d
    cov = d.T @ s / len(src)
    u, sig, vt = np.linalg.svd(cov)
    fix = np.diag([1.0, np.sign(np.linalg.det(u @ vt)) or 1.0])
    rot = u @ fix @ vt
    scale = np.trace(np.diag(sig) @ fix) / max(s.var(0).sum(), 1e-12)
    t = mu_d - scale * rot @ mu_s
    return np.concatenate([scale * rot, t[:, None]], axis=1)


def warp_affine(image: torch.Tensor, matrix: np.ndarray, size: int) -> torch.Tensor:
    """[3,H,W] float image warped by the 2×3 pixel matrix (source → output pixel coordinates,
    pixel centres at +0.5) into size² (bilinear, zeros outside) — cv2.warpAffine's geometry."""
    H, W = image.shape[-2:]
    full = np.vstack([matrix, [0.0, 0.0, 1.0]])
    inv = np.linalg.inv(full)  # output pixel → source pixel
    ys, xs = np.meshgrid(np.arange(size) + 0.5, np.arange(size) + 0.5, indexing="ij")
    pts = np.stack([xs, ys, np.ones_like(xs)], -1) @ inv.T  # [size,size,3]
    grid = np.stack([pts[..., 0] / W * 2 - 1, pts[..., 1] / H * 2 - 1], -1)
    grid_t = torch.as_tensor(grid, dtype=image.dtype, device=image.device)[None]
    return F.grid_sample(image[None], grid_t, mode="bilinear", padding_mode="zeros", align_corners=False)[0]


def arcface_crop(image: torch.Tensor, keypoints: np.ndarray, size: int = 112) -> torch.Tensor:
    """insightface ``norm_crop``: the similarity that puts the 5 keypoints on the ArcFace template
    (scaled to ``size``), applied to a [3,H,W] float image → [3,size,size]."""
    dst = ARCFACE_TEMPLATE_112 * (size / 112.0)
    # the template is in cv2 pixel indices (centres at integers); ours have centres at +0.5:
    # ours → cv2 (−0.5), the cv2 similarity, cv2 → ours (+0.5)
    m_cv = np.vstack([similarity_transform(np.asarray(keypoints, np.float64) - 0.5, dst), [0.0, 0.0, 1.0]])
    to_cv, from_cv = np.eye(3), np.eye(3)
    to_cv[:2, 2], from_cv[:2, 2] = -0.5, 0.5
    return warp_affine(image, (from_cv @ m_cv @ to_cv)[:2], size)

"""Where the face parts are on the stand-in head, from its canonical (template) geometry.

Everything here is identity-independent and computed once per head model: per-vertex scalar
fields (signed distances in degrees on the head's (azimuth, elevation) map) that the renderer
interpolates per pixel and thresholds, so region edges stay crisp at any resolution even where
the mesh is coarse. Azimuth is measured from +z towards +x (the subject's left), elevation from
the horizontal plane upwards, both in degrees around the head centre (the origin).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from model.flame_assets import FlameAssets

NUM_EYEBALL_VERTICES = 202  # the last vertices: two UV-sphere eyeballs (FLAME-with-eyes layout)
FAR = 90.0  # "far outside" value of a distance field (degrees)

# attribute channels of :attr:`CanonicalRegions.attributes`
POS = slice(0, 3)  # template position, metres (procedural textures live on it)
LIP_OUTER = 3  # signed distance to the outer lip contour (landmarks 48–59), < 0 inside
LIP_INNER = 4  # signed distance to the inner lip contour (60–67), < 0 inside
BROW = 5  # distance to the brow polylines (17–21, 22–26)
EYE_DIR = slice(6, 9)  # eyeball: unit direction from its centre in the rest pose (+z = pupil)
EYE_FLAG = 9  # 1 on eyeball vertices, 0 on the head
JAW_WEIGHT = 10  # skinning weight of the jaw joint: 0 on the upper lip, 1 on the lower one
NUM_ATTRIBUTES = 11


@dataclass
class CanonicalRegions:
    """attributes [V, NUM_ATTRIBUTES] float32 (channels above); mouth_faces [F] bool: faces around
    the lips' meeting line, whose stretch shows the mouth interior when the jaw opens;
    eye_centres [2,3] metres; landmarks_angles [70,2] (azimuth, elevation) degrees."""

    attributes: torch.Tensor
    mouth_faces: torch.Tensor
    eye_centres: np.ndarray
    landmark_angles: np.ndarray


def angles(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """[...,3] → (azimuth, elevation) in degrees of the directions from the origin."""
    d = points / np.linalg.norm(points, axis=-1, keepdims=True)
    return np.degrees(np.arctan2(d[..., 0], d[..., 2])), np.degrees(np.arcsin(np.clip(d[..., 1], -1, 1)))


def _segment_distance(p: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Distances [N,S] from points p [N,2] to segments a→b [S,2]."""
    ab = b - a
    t = ((p[:, None] - a[None]) * ab[None]).sum(-1) / np.maximum((ab * ab).sum(-1), 1e-12)
    closest = a[None] + np.clip(t, 0, 1)[..., None] * ab[None]
    return np.linalg.norm(p[:, None] - closest, axis=-1)


def polygon_signed_distance(p: np.ndarray, polygon: np.ndarray) -> np.ndarray:
    """Signed distance [N] of 2-D points p [N,2] to a closed polygon [M,2] (negative inside)."""
    a, b = polygon, np.roll(polygon, -1, axis=0)
    dist = _segment_distance(p, a, b).min(1)
    # even–odd crossing test along +x
    crosses = ((a[None, :, 1] > p[:, None, 1]) != (b[None, :, 1] > p[:, None, 1])) & (
        p[:, None, 0]
        < (b[None, :, 0] - a[None, :, 0]) * (p[:, None, 1] - a[None, :, 1])
        / np.where(b[None, :, 1] == a[None, :, 1], 1e-12, b[None, :, 1] - a[None, :, 1])
        + a[None, :, 0]
    )
    inside = crosses.sum(1) % 2 == 1
    return np.where(inside, -dist, dist)


def polyline_distance(p: np.ndarray, line: np.ndarray) -> np.ndarray:
    """Distance [N] of points p [N,2] to an open polyline [M,2]."""
    return _segment_distance(p, line[:-1], line[1:]).min(1)


def template_landmarks(assets: FlameAssets) -> np.ndarray:
    """The 70 landmarks [70,3] (metres) on the template, through the barycentric embedding."""
    tri = assets.v_template[assets.faces[assets.landmark_faces]]  # [70,3,3]
    return (tri * assets.landmark_barycentric[:, :, None]).sum(1)


def canonical_regions(assets: FlameAssets) -> CanonicalRegions:
    """Per-vertex region fields of a head model whose last 202 vertices are the eyeballs."""
    v = assets.v_template.astype(np.float64)
    n_vert = len(v)
    n_head = n_vert - NUM_EYEBALL_VERTICES
    az, el = angles(v[:n_head])
    flat = np.stack([az, el], 1)
    lmk_az, lmk_el = angles(template_landmarks(assets))
    lmk = np.stack([lmk_az, lmk_el], 1)

    attrs = np.zeros((n_vert, NUM_ATTRIBUTES))
    attrs[:, POS] = v
    attrs[:, JAW_WEIGHT] = assets.lbs_weights[:, 2]
    attrs[:, [LIP_OUTER, LIP_INNER, BROW]] = FAR
    attrs[:n_head, LIP_OUTER] = polygon_signed_distance(flat, lmk[48:60])
    attrs[:n_head, LIP_INNER] = polygon_signed_distance(flat, lmk[60:68])
    # brows are centred a little above the landmark arcs (iBUG points follow their lower edge)
    brow_lift = np.array([0.0, 1.0])
    attrs[:n_head, BROW] = np.minimum(polyline_distance(flat, lmk[17:22] + brow_lift),
                                      polyline_distance(flat, lmk[22:27] + brow_lift))

    eye_centres = []
    half = NUM_EYEBALL_VERTICES // 2
    for start in (n_head, n_head + half):
        ball = v[start:start + half]
        centre = ball.mean(0)
        eye_centres.append(centre)
        offset = ball - centre
        attrs[start:start + half, EYE_DIR] = offset / np.linalg.norm(offset, axis=1, keepdims=True)
        attrs[start:start + half, EYE_FLAG] = 1.0

    # faces around the inner lip contour: where the jaw's skinning weight changes across the mouth
    faces = assets.faces
    on_head = (faces < n_head).all(1)
    centroid_sd = np.full(len(faces), FAR)
    centroid_sd[on_head] = attrs[faces[on_head], LIP_INNER].mean(1)
    mouth = on_head & (centroid_sd < 2.0)
    return CanonicalRegions(
        attributes=torch.from_numpy(attrs.astype(np.float32)),
        mouth_faces=torch.from_numpy(mouth),
        eye_centres=np.stack(eye_centres).astype(np.float32),
        landmark_angles=lmk.astype(np.float32),
    )

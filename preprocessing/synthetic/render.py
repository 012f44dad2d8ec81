"""Rendering one frame of a painted stand-in head: z-buffer rasterization, per-pixel albedo,
Lambert + Blinn–Phong shading, supersampled anti-aliasing, black background.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from . import raster
from . import regions as R
from .appearance import Appearance
from .regions import CanonicalRegions
from .texture import albedo, smoothstep

_THROAT = (0.22, 0.05, 0.06)
_TONGUE = (0.62, 0.22, 0.24)
_TEETH = (0.90, 0.88, 0.80)


@dataclass(frozen=True)
class Lighting:
    """One directional light plus ambient, in PyTorch3D camera space (+x image-left, +y up,
    +z away from the camera): ``direction`` points from the surface towards the light."""

    direction: tuple[float, float, float] = (0.35, 0.45, -1.0)
    ambient: float = 0.35
    diffuse: float = 0.75
    color: tuple[float, float, float] = (1.0, 1.0, 1.0)


@dataclass
class PaintedHead:
    """Everything about one identity that does not change across its frames.

    faces [F,3] int64; attributes [V,C] canonical region fields (see ``regions``); appearance;
    mouth_faces [F] bool (faces that reveal the mouth interior when stretched); rest_area [F]
    face areas (world units²) of the identity's neutral mesh, the reference for that stretch.
    """

    faces: torch.Tensor
    attributes: torch.Tensor
    appearance: Appearance
    mouth_faces: torch.Tensor
    rest_area: torch.Tensor


def face_areas(vertices: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """[V,3], [F,3] → [F] triangle areas."""
    tri = vertices[faces]
    return 0.5 * torch.linalg.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]).norm(dim=1)


def vertex_normals(vertices: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """Area-weighted unit vertex normals [V,3] of an outward-wound mesh."""
    tri = vertices[faces]
    fn = torch.linalg.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    vn = torch.zeros_like(vertices)
    for k in range(3):  # index_add_ on CPU accumulates in order: deterministic
        vn.index_add_(0, faces[:, k], fn)
    return vn / vn.norm(dim=1, keepdim=True).clamp_min(1e-12)


def paint_head(regions: CanonicalRegions, faces: torch.Tensor, appearance: Appearance,
               rest_vertices: torch.Tensor) -> PaintedHead:
    """Bundle an identity: regions of the head model, its appearance and its neutral mesh
    rest_vertices [V,3] (world units, identity shape, no expression or pose)."""
    return PaintedHead(faces=faces, attributes=regions.attributes, appearance=appearance,
                       mouth_faces=regions.mouth_faces, rest_area=face_areas(rest_vertices, faces))


def mouth_interior(jaw_weight: torch.Tensor, shade: torch.Tensor) -> torch.Tensor:
    """Colour [N,3] inside the open mouth. Across the opening the interpolated jaw skinning
    weight [N] runs from 0 (upper lip) to 1 (lower lip): upper teeth, throat, tongue, lower teeth."""
    c = lambda rgb: torch.tensor(rgb).expand(len(jaw_weight), 3)
    w = jaw_weight.unsqueeze(1)
    out = c(_THROAT)
    out = out + (c(_TONGUE) - out) * smoothstep(0.55, 0.7, w)
    out = out + (c(_TEETH) - out) * (smoothstep(0.3, 0.2, w) + smoothstep(0.86, 0.93, w))
    return out * (0.55 + 0.45 * shade).unsqueeze(1)


def render_frame(head: PaintedHead, vertices: torch.Tensor, transform_matrix: torch.Tensor, focal: float,
                 resolution: int, light: Lighting | None = None, supersample: int = 2
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Render the head with posed vertices [V,3] (world units, FLAME ×5) seen by a tracker camera
    transform_matrix [3,4] (PyTorch3D row vectors) with an NDC focal, on a black square image.

    Returns (rgb uint8 [H,W,3], alpha float32 [H,W] in [0,1]) with H = W = resolution; rgb is the
    head composited over black (premultiplied), alpha its pixel coverage. ``supersample`` s
    rasterizes at s·resolution and box-filters down (anti-aliased edges and textures).
    """
    light = light or Lighting()
    size = resolution * supersample
    vertices = vertices.to(torch.float32)
    tm = transform_matrix.to(torch.float32)
    screen = raster.screen_coordinates(vertices, tm, focal, size, size)
    frags = raster.rasterize(screen, head.faces, size, size)
    mask = frags.mask

    normals_cam = vertex_normals(vertices, head.faces) @ tm[:3, :3]
    attrs = raster.interpolate(frags, head.faces, torch.cat([head.attributes, normals_cam], 1))
    base, spec, shininess = albedo(attrs[:, :-3], head.appearance)
    n = attrs[:, -3:]
    n = n / n.norm(dim=1, keepdim=True).clamp_min(1e-9)

    to_light = torch.tensor(light.direction)
    to_light = to_light / to_light.norm()
    half = to_light + torch.tensor([0.0, 0.0, -1.0])  # the camera looks along +z
    half = half / half.norm()
    lambert = (n @ to_light).clamp_min(0.0)
    shade = light.ambient + light.diffuse * lambert
    highlight = (n @ half).clamp_min(0.0) ** shininess * spec * (lambert > 0)
    color = (base * shade.unsqueeze(1) + highlight.unsqueeze(1)) * torch.tensor(light.color)

    # mouth interior: faces across the lips' meeting line darken as the jaw opens and they stretch
    stretch = face_areas(vertices, head.faces) / head.rest_area.clamp_min(1e-12)
    interior = smoothstep(1.25, 3.0, stretch) * head.mouth_faces
    dark = interior[frags.face[mask]].unsqueeze(1)
    color = color * (1 - dark) + mouth_interior(attrs[:, R.JAW_WEIGHT], shade) * dark

    image = torch.zeros(size * size, 4)
    image[mask.view(-1), :3] = color.clamp(0.0, 1.0)
    image[mask.view(-1), 3] = 1.0
    image = image.view(size, size, 4)
    if supersample > 1:
        image = F.avg_pool2d(image.permute(2, 0, 1).unsqueeze(0), supersample).squeeze(0).permute(1, 2, 0)
    rgb = (image[..., :3] * 255.0).round().clamp(0, 255).to(torch.uint8).numpy()
    return rgb, image[..., 3].contiguous().numpy()

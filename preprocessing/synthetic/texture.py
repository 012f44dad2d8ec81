"""Per-pixel albedo of the stand-in head: face regions + procedural texture, from the canonical
(template) attributes interpolated at each covered pixel.

Textures are functions of the template position (metres), so they stick to the skin when the
face moves and do not depend on mesh density: freckles and stubble are hashed 3-D cells, skin
mottling a few sines, hair strands stripes radiating from the crown whorl.
"""

from __future__ import annotations

import math

import torch

from . import regions as R
from .appearance import Appearance

_SCLERA = (0.93, 0.91, 0.87)
_MOLE = (0.30, 0.18, 0.12)
_COS_PUPIL = math.cos(math.radians(12.0))
_COS_IRIS = math.cos(math.radians(30.0))
_MASK32 = 0xFFFFFFFF


def smoothstep(edge0: float, edge1: float, x: torch.Tensor) -> torch.Tensor:
    """0 at edge0, 1 at edge1 (either order), cubic in between."""
    t = ((x - edge0) / (edge1 - edge0)).clamp(0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _mix(h: torch.Tensor) -> torch.Tensor:
    """32-bit integer hash finaliser on int64 tensors holding values in [0, 2³²)."""
    h = ((h ^ (h >> 16)) * 0x45D9F3B) & _MASK32
    h = ((h ^ (h >> 16)) * 0x45D9F3B) & _MASK32
    return h ^ (h >> 16)


def cell_random(cells: torch.Tensor, salt: int, count: int) -> torch.Tensor:
    """``count`` uniform numbers in [0,1) per integer 3-D cell. cells [N,3] int64 → [N,count].
    Pure integer arithmetic: identical on every machine."""
    h = (cells[:, 0] * 73856093 + cells[:, 1] * 19349663 + cells[:, 2] * 83492791 + salt) & _MASK32
    h = _mix(h)
    out = [(_mix((h + (k + 1) * 0x9E3779B9) & _MASK32)).to(torch.float64) / 2.0**32 for k in range(count)]
    return torch.stack(out, 1).to(torch.float32)


def cell_spots(pos: torch.Tensor, cell: float, density: torch.Tensor, radius: tuple[float, float],
               salt: int) -> torch.Tensor:
    """Soft round spots, at most one per cubic cell of side ``cell`` (metres), kept with
    probability ``density`` [N]. pos [N,3] metres → spot coverage [N] in [0,1]."""
    scaled = pos / cell
    idx = torch.floor(scaled)
    frac = scaled - idx
    rnd = cell_random(idx.to(torch.int64), salt, 5)
    centre = 0.25 + 0.5 * rnd[:, :3]  # stay inside the cell so neighbours need not be checked
    r = radius[0] + (radius[1] - radius[0]) * rnd[:, 3]
    dist = (frac - centre).norm(dim=1)
    keep = (rnd[:, 4] < density).to(pos.dtype)
    return keep * smoothstep(r, 0.6 * r, dist)


def _sines(pos: torch.Tensor, salt: int, wavelength: float, terms: int = 6) -> torch.Tensor:
    """Smooth noise ≈ unit variance: a sum of plane waves of one wavelength (metres)."""
    g = torch.Generator().manual_seed(salt)
    k = torch.randn(terms, 3, generator=g)
    k = k / k.norm(dim=1, keepdim=True) * (2 * math.pi / wavelength)
    phase = torch.rand(terms, generator=g) * 2 * math.pi
    return torch.sin(pos @ k.T + phase).sum(1) * math.sqrt(2.0 / terms)


def _bump(az: torch.Tensor, el: torch.Tensor, az0: float, el0: float, s_az: float, s_el: float) -> torch.Tensor:
    return torch.exp(-0.5 * ((az - az0) / s_az) ** 2 - 0.5 * ((el - el0) / s_el) ** 2)


def _hairline(abs_az: torch.Tensor, app: Appearance) -> torch.Tensor:
    """Elevation (degrees) below which there is no hair, as a function of |azimuth|: the forehead
    line in front, above the ears at the sides, the nape at the back."""
    knots = torch.tensor([0.0, 20.0, 45.0, 75.0, 100.0, 130.0, 180.0])
    h = app.hairline_deg
    values = torch.tensor([h, h - 1.0, h - 8.0, 24.0, 22.0, 0.0, app.nape_deg])
    i = torch.searchsorted(knots, abs_az.contiguous().clamp(0.0, 179.999), right=True).clamp(1, len(knots) - 1)
    t = (abs_az - knots[i - 1]) / (knots[i] - knots[i - 1])
    return values[i - 1] + t * (values[i] - values[i - 1])


def albedo(attributes: torch.Tensor, app: Appearance) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """attributes [N, regions.NUM_ATTRIBUTES] interpolated at N pixels → (albedo [N,3] in [0,1],
    specular strength [N], shininess exponent [N])."""
    pos = attributes[:, R.POS]
    n = len(pos)
    rgb = lambda c: torch.tensor(c, dtype=pos.dtype).expand(n, 3)
    direction = pos / pos.norm(dim=1, keepdim=True).clamp_min(1e-9)
    az = torch.rad2deg(torch.atan2(direction[:, 0], direction[:, 2]))
    el = torch.rad2deg(torch.asin(direction[:, 1].clamp(-1.0, 1.0)))
    salt = app.salt

    # ---- skin with low-frequency mottling, blush, freckles, moles
    color = rgb(app.skin) * (1.0 + 0.06 * app.mottle * _sines(pos, salt, 0.03)).unsqueeze(1)
    cheeks = _bump(az, el, -35.0, -8.0, 12.0, 9.0) + _bump(az, el, 35.0, -8.0, 12.0, 9.0)
    blush = (app.blush * 0.5 * cheeks).unsqueeze(1)
    color = color * (1 - blush) + color * torch.tensor([1.0, 0.72, 0.72]) * blush
    if app.freckles > 0:
        zone = cheeks + _bump(az, el, 0.0, -2.0, 9.0, 10.0)
        spots = cell_spots(pos, 0.005, 0.8 * app.freckles * zone.clamp(0, 1), (0.16, 0.3), salt + 1)
        color = color * (1.0 - 0.35 * spots).unsqueeze(1) + torch.tensor([0.02, 0.0, -0.01]) * spots.unsqueeze(1)
    if app.stubble > 0:
        top = -17.0 + 27.0 * smoothstep(25.0, 88.0, az.abs())  # the beard line rises to the sideburns
        zone = smoothstep(top + 3.0, top - 6.0, el) * smoothstep(-72.0, -58.0, el) * smoothstep(96.0, 84.0, az.abs())
        zone = zone + _bump(az, el, 0.0, -16.5, 14.0, 1.6)  # moustache
        dots = cell_spots(pos, 0.0012, 0.55 * zone.clamp(0, 1), (0.25, 0.45), salt + 2)
        shadow = (app.stubble * (0.12 * zone.clamp(0, 1) + 0.45 * dots)).clamp(0, 1).unsqueeze(1)
        color = color * (1 - shadow) + rgb(app.brow) * 0.8 * shadow
    for m_az, m_el in app.moles:
        mole = smoothstep(0.9, 0.5, torch.hypot(az - m_az, el - m_el)).unsqueeze(1)
        color = color * (1 - mole) + rgb(_MOLE) * mole

    # ---- lips (the inner contour darker: the line where the lips meet)
    lips = smoothstep(0.5, -0.5, attributes[:, R.LIP_OUTER]).unsqueeze(1)
    inner = smoothstep(0.4, -0.6, attributes[:, R.LIP_INNER]).unsqueeze(1)
    lip_color = rgb(app.lip) * (1.0 - 0.45 * inner)
    color = color * (1 - lips) + lip_color * lips

    # ---- brows: thicker at the inner end, with a hair-like grain
    taper = 1.0 - 0.4 * smoothstep(10.0, 36.0, az.abs())
    brows = smoothstep(0.4, -0.4, attributes[:, R.BROW] - app.brow_width_deg * taper)
    grain = 0.8 + 0.2 * torch.sin(math.radians(1) * 900.0 * az + 3.0 * _sines(pos, salt + 3, 0.01))
    brows = (brows * (0.75 + 0.25 * grain)).unsqueeze(1)
    color = color * (1 - brows) + rgb(app.brow) * brows

    # ---- hair cap: strands radiating from a whorl on the crown
    hair = smoothstep(-1.0, 1.5, el - _hairline(az.abs(), app)).unsqueeze(1)
    whorl = torch.tensor([math.sin(math.radians(app.part_deg)) * 0.2, 1.0, -0.25])
    whorl = whorl / whorl.norm()
    e1 = torch.linalg.cross(whorl, torch.tensor([0.0, 0.0, 1.0]))
    e1 = e1 / e1.norm()
    e2 = torch.linalg.cross(whorl, e1)
    phi = torch.atan2(direction @ e2, direction @ e1)
    strands = torch.sin(app.strand_count * phi + 2.5 * _sines(pos, salt + 4, 0.05))
    hair_color = rgb(app.hair) * (0.82 + 0.22 * strands).unsqueeze(1)
    color = color * (1 - hair) + hair_color * hair

    # ---- eyes: sclera, iris with radial fibres and a dark limbal ring, pupil
    eye = attributes[:, R.EYE_FLAG].clamp(0, 1).unsqueeze(1)
    d = attributes[:, R.EYE_DIR]
    d = d / d.norm(dim=1, keepdim=True).clamp_min(1e-9)
    c = d[:, 2]
    iris = smoothstep(_COS_IRIS - 0.012, _COS_IRIS + 0.012, c).unsqueeze(1)
    pupil = smoothstep(_COS_PUPIL - 0.004, _COS_PUPIL + 0.004, c).unsqueeze(1)
    fibres = 0.85 + 0.15 * torch.sin(36.0 * torch.atan2(d[:, 1], d[:, 0]))
    limbus = 1.0 - 0.5 * smoothstep(_COS_IRIS + 0.06, _COS_IRIS, c)
    iris_color = rgb(app.iris) * (fibres * limbus).unsqueeze(1)
    eye_color = rgb(_SCLERA) * (1 - iris) + iris_color * iris
    eye_color = eye_color * (1 - pupil) + 0.03 * pupil
    color = color * (1 - eye) + eye_color * eye

    # specular: eyes sharp and strong, lips glossy, hair sheen, skin faint
    spec = 0.06 + 0.14 * lips.squeeze(1) + 0.06 * hair.squeeze(1)
    spec = spec * (1 - eye.squeeze(1)) + 0.7 * eye.squeeze(1)
    shininess = 20.0 + 180.0 * eye.squeeze(1)
    return color.clamp(0.0, 1.0), spec, shininess

"""What makes one generated identity look like itself: colours and procedural texture settings.

All colours are RGB in [0, 1] (display values, not linear). An :class:`Appearance` is plain data
(JSON-serialisable through :meth:`Appearance.to_dict`), sampled from a numpy Generator.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

Rgb = tuple[float, float, float]

# light → dark skin tones; an identity's tone is a random point on this ramp (then jittered)
_SKIN_RAMP = np.array([
    (0.96, 0.80, 0.70), (0.90, 0.70, 0.58), (0.80, 0.58, 0.44), (0.64, 0.44, 0.31), (0.45, 0.30, 0.21),
])
# hair: black, dark brown, brown, auburn, blond, grey, and dyed colours for easy tell-apart
_HAIR = np.array([
    (0.13, 0.11, 0.10), (0.24, 0.15, 0.10), (0.42, 0.27, 0.15), (0.58, 0.26, 0.12), (0.82, 0.68, 0.44),
    (0.66, 0.66, 0.66), (0.20, 0.32, 0.70), (0.78, 0.30, 0.55), (0.25, 0.55, 0.35),
])
_HAIR_P = np.array([0.17, 0.18, 0.15, 0.1, 0.12, 0.08, 0.07, 0.07, 0.06])
_IRIS = np.array([
    (0.30, 0.18, 0.09), (0.16, 0.10, 0.06), (0.45, 0.38, 0.16), (0.25, 0.45, 0.25), (0.25, 0.45, 0.70),
    (0.45, 0.52, 0.58),
])
_LIPSTICK = np.array([(0.75, 0.10, 0.15), (0.85, 0.35, 0.50), (0.45, 0.12, 0.35)])


@dataclass(frozen=True)
class Appearance:
    """Colours (RGB in [0,1]) and texture settings of one identity.

    hairline_deg: elevation of the front hairline above the face's horizontal (degrees);
    nape_deg: elevation where the hair ends at the back; part_deg: sideways shift of the hair
    whorl (asymmetry); brow_width_deg: brow half-thickness; freckles, stubble, blush, mottle:
    strengths in [0,1]; strand_count: hair stripes around the crown; moles: up to three
    (azimuth, elevation) spots in degrees; salt: seeds the per-identity noise fields.
    """

    skin: Rgb
    lip: Rgb
    brow: Rgb
    hair: Rgb
    iris: Rgb
    hairline_deg: float
    nape_deg: float
    part_deg: float
    brow_width_deg: float
    freckles: float
    stubble: float
    blush: float
    mottle: float
    strand_count: int
    moles: tuple[tuple[float, float], ...]
    salt: int

    def to_dict(self) -> dict:
        return asdict(self)


def _rgb(x: np.ndarray) -> Rgb:
    r, g, b = (round(float(c), 4) for c in np.clip(x, 0.0, 1.0))
    return (r, g, b)


def _luminance(c: np.ndarray) -> float:
    return float(c @ np.array([0.299, 0.587, 0.114]))


def sample_appearance(rng: np.random.Generator) -> Appearance:
    """Draw one identity's appearance (a fixed number of draws, so later fields never shift
    earlier ones when a branch is taken)."""
    u = rng.random(24)
    t = u[0] * (len(_SKIN_RAMP) - 1)
    i = min(int(t), len(_SKIN_RAMP) - 2)
    skin = _SKIN_RAMP[i] + (t - i) * (_SKIN_RAMP[i + 1] - _SKIN_RAMP[i])
    skin = skin * (1.0 + 0.06 * (rng.random(3) - 0.5))

    hair = _HAIR[rng.choice(len(_HAIR), p=_HAIR_P)] * (1.0 + 0.15 * (rng.random(3) - 0.5))
    # keep the darkest hair above the black background (~35/255 lit) so the head stays matte-able
    lum = _luminance(hair)
    if lum < 0.12:
        hair = hair + (0.12 - lum)
    brow = hair * 0.7 if _luminance(hair) > 0.3 else hair * 0.85 + 0.02
    if _luminance(hair) > 0.5 and u[1] < 0.6:  # blond/grey hair often has darker, browner brows
        brow = hair * np.array([0.55, 0.45, 0.35])

    lip_natural = skin * np.array([0.92, 0.62, 0.62]) + np.array([0.06, 0.0, 0.02])
    lipstick = _LIPSTICK[int(u[2] * len(_LIPSTICK)) % len(_LIPSTICK)]
    lip = lipstick if u[3] < 0.25 else lip_natural
    iris = _IRIS[int(u[4] * len(_IRIS)) % len(_IRIS)] * (1.0 + 0.2 * (u[5] - 0.5))

    n_moles = int(u[6] * 4)  # 0–3
    mole_pos = rng.random((3, 2))
    moles = tuple((round(float(-45 + 90 * a), 2), round(float(-35 + 50 * e), 2)) for a, e in mole_pos[:n_moles])
    return Appearance(
        skin=_rgb(skin),
        lip=_rgb(lip),
        brow=_rgb(brow),
        hair=_rgb(hair),
        iris=_rgb(iris),
        hairline_deg=round(float(36.0 + 16.0 * u[7]), 3),
        nape_deg=round(float(-40.0 + 30.0 * u[8]), 3),
        part_deg=round(float(-25.0 + 50.0 * u[9]), 3),
        brow_width_deg=round(float(1.3 + 1.4 * u[10]), 3),
        freckles=round(float(u[12]), 3) if u[11] < 0.35 else 0.0,
        stubble=round(float(0.4 + 0.6 * u[14]), 3) if u[13] < 0.3 else 0.0,
        blush=round(float(0.5 * u[15]), 3),
        mottle=round(float(0.3 + 0.7 * u[16]), 3),
        strand_count=int(40 + 80 * u[17]),
        moles=moles,
        salt=int(rng.integers(0, 2**31 - 1)),
    )

"""A generated stand-in for FLAME: same topology size (5,023 vertices), same joints, same file
formats, no licence. Tests and the default demo use it; every result made with it says so.

The head is a deformed UV sphere (face towards +z, y up, metres, centre at the origin) with two
UV-sphere eyeballs, a smooth shape basis (300), regional expression bases (100: mouth, smile,
pucker, brows, blink, cheeks, then smaller local fields), small pose correctives, five joints
(root, neck, jaw, two eyes) with skinning weights that open the jaw and turn the eyes, and a 68 + 2
landmark embedding at the iBUG positions. Deterministic from a seed.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .flame_assets import FlameAssets, load_flame_with_eye, save_flame_pickle, save_flame_with_eye

HEAD_RINGS, HEAD_SEGMENTS = 61, 79  # 61·79 + 2 poles = 4,821 head vertices
EYE_RINGS, EYE_SEGMENTS = 9, 11  # 9·11 + 2 = 101 vertices per eyeball
NUM_VERTICES = HEAD_RINGS * HEAD_SEGMENTS + 2 + 2 * (EYE_RINGS * EYE_SEGMENTS + 2)  # 5,023
N_SHAPE, N_EXPRESSION = 300, 100
JOINT_NAMES = ("root", "neck", "jaw", "eye_right", "eye_left")  # FLAME order: global, neck, jaw, eyes
GENERATOR_VERSION = "v1"

# Ellipsoid half-axes (metres) and the eye placement, in (azimuth, elevation) degrees: azimuth from
# +z towards +x (the subject's left), elevation from the horizontal plane upwards.
HEAD_AXES = (0.078, 0.105, 0.095)
EYE_DIRECTION = (22.0, 9.0)
EYE_RADIUS = 0.0125
EYE_DEPTH = 0.011  # eyeball centre behind the socket surface, along -z

# Landmarks (iBUG 68) as directions (azimuth, elevation) in degrees, image-left first.
_JAW_T = np.linspace(-1.0, 1.0, 17)
LANDMARK_DIRECTIONS = np.array(
    [(78.0 * t, -8.0 - 42.0 * (1 - t * t)) for t in _JAW_T]  # 0–16 jaw line
    + [(a, 21.0 + 3.0 * np.sin(np.pi * i / 4)) for i, a in enumerate(np.linspace(-38, -8, 5))]  # 17–21
    + [(a, 21.0 + 3.0 * np.sin(np.pi * i / 4)) for i, a in enumerate(np.linspace(8, 38, 5))]  # 22–26
    + [(0.0, e) for e in (14.0, 8.0, 2.0, -4.0)]  # 27–30 nose bridge to tip
    + [(-10.0, -11.0), (-5.0, -12.0), (0.0, -13.0), (5.0, -12.0), (10.0, -11.0)]  # 31–35
    + [(-31.0, 9.0), (-25.0, 12.0), (-19.0, 12.0), (-13.0, 9.0), (-19.0, 6.5), (-25.0, 6.5)]  # 36–41
    + [(13.0, 9.0), (19.0, 12.0), (25.0, 12.0), (31.0, 9.0), (25.0, 6.5), (19.0, 6.5)]  # 42–47
    + [(-19.0, -25.0), (-12.0, -21.5), (-5.0, -19.5), (0.0, -20.0), (5.0, -19.5), (12.0, -21.5),
       (19.0, -25.0), (12.0, -29.0), (5.0, -31.0), (0.0, -31.5), (-5.0, -31.0), (-12.0, -29.0)]  # 48–59
    + [(-16.0, -25.0), (-5.0, -23.5), (0.0, -23.5), (5.0, -23.5), (16.0, -25.0), (5.0, -26.5),
       (0.0, -26.5), (-5.0, -26.5)]  # 60–67
)
MOUTH_LINE_ELEVATION = -25.0  # between the inner lips: the jaw carries everything below


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3 - 2 * x)


def _direction(azimuth: np.ndarray, elevation: np.ndarray) -> np.ndarray:
    az, el = np.radians(azimuth), np.radians(elevation)
    return np.stack([np.cos(el) * np.sin(az), np.sin(el), np.cos(el) * np.cos(az)], -1)


def _angles(d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    d = d / np.linalg.norm(d, axis=-1, keepdims=True)
    return np.degrees(np.arctan2(d[..., 0], d[..., 2])), np.degrees(np.arcsin(np.clip(d[..., 1], -1, 1)))


def _bump(az: np.ndarray, el: np.ndarray, az0: float, el0: float, s_az: float, s_el: float) -> np.ndarray:
    daz = (az - az0 + 180.0) % 360.0 - 180.0
    return np.exp(-0.5 * (daz / s_az) ** 2 - 0.5 * ((el - el0) / s_el) ** 2)


def uv_sphere(rings: int, segments: int, polar_warp=None, azimuth_warp=None) -> tuple[np.ndarray, np.ndarray]:
    """Unit directions [2 + rings·segments, 3] (pole at +y first, then rings, pole at −y) and
    outward-oriented triangles. Warps map uniform [0,1] / [-1,1) parameters to polar/azimuth."""
    u = (np.arange(rings) + 1) / (rings + 1)
    theta = np.pi * (polar_warp(u) if polar_warp else u)
    v = -1.0 + 2.0 * np.arange(segments) / segments
    phi = np.pi * (azimuth_warp(v) if azimuth_warp else v)
    t, p = np.meshgrid(theta, phi, indexing="ij")
    ring_dirs = np.stack([np.sin(t) * np.sin(p), np.cos(t), np.sin(t) * np.cos(p)], -1).reshape(-1, 3)
    dirs = np.concatenate([[[0.0, 1.0, 0.0]], ring_dirs, [[0.0, -1.0, 0.0]]])
    south = len(dirs) - 1
    idx = lambda r, s: 1 + r * segments + (s % segments)
    faces = []
    for s in range(segments):
        faces.append((0, idx(0, s), idx(0, s + 1)))
        faces.append((south, idx(rings - 1, s + 1), idx(rings - 1, s)))
        for r in range(rings - 1):
            a, b, c, d = idx(r, s), idx(r, s + 1), idx(r + 1, s), idx(r + 1, s + 1)
            faces += [(a, c, b), (b, c, d)]
    faces = np.asarray(faces, np.int64)
    # orient outwards (the sphere is convex around the origin)
    tri = dirs[faces]
    normal = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    flip = (normal * tri.mean(1)).sum(-1) < 0
    faces[flip] = faces[flip][:, ::-1]
    return dirs, faces


def _head_radius(d: np.ndarray) -> np.ndarray:
    az, el = _angles(d)
    ax, ay, az_ = HEAD_AXES
    ax_eff = ax * (1.0 - 0.2 * _smoothstep(-el / 60.0))  # narrower chin
    r = 1.0 / np.sqrt((d[:, 0] / ax_eff) ** 2 + (d[:, 1] / ay) ** 2 + (d[:, 2] / az_) ** 2)
    features = [  # (azimuth, elevation, σ_az, σ_el, metres)
        (0.0, -3.0, 7.0, 11.0, 0.020),  # nose
        (0.0, 9.0, 4.0, 6.0, 0.006),  # nose bridge
        (-20.0, 20.0, 13.0, 4.0, 0.004), (20.0, 20.0, 13.0, 4.0, 0.004),  # brow ridges
        (-EYE_DIRECTION[0], EYE_DIRECTION[1], 8.0, 5.0, -0.009),  # eye sockets
        (EYE_DIRECTION[0], EYE_DIRECTION[1], 8.0, 5.0, -0.009),
        (-35.0, -10.0, 14.0, 12.0, 0.004), (35.0, -10.0, 14.0, 12.0, 0.004),  # cheeks
        (0.0, -21.0, 12.0, 3.0, 0.004), (0.0, -29.0, 11.0, 3.0, 0.004),  # lips
        (0.0, -45.0, 15.0, 8.0, 0.010),  # chin
        (-90.0, 5.0, 6.0, 10.0, 0.012), (90.0, 5.0, 6.0, 10.0, 0.012),  # ears
    ]
    for a0, e0, sa, se, amp in features:
        r = r + amp * _bump(az, el, a0, e0, sa, se)
    return r


def _polar_warp(u: np.ndarray) -> np.ndarray:
    # dense rings across the face (≈1.3° at the eyes/mouth), sparse at the poles
    w = u - 0.5
    return 0.5 + 0.45 * w + 2.2 * w**3


def _azimuth_warp(v: np.ndarray) -> np.ndarray:
    return 0.45 * v + 0.55 * v**3  # ≈2° segments at the front, ≈10° at the back


def _min_norm_regressor(points: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Weights w (sum 1) with w @ points = target and minimal norm."""
    a = np.concatenate([points.T, np.ones((1, len(points)))], 0)  # [4, k]
    b = np.concatenate([target, [1.0]])
    return a.T @ np.linalg.solve(a @ a.T, b)


def _ray_triangle(origin: np.ndarray, direction: np.ndarray, tri: np.ndarray) -> tuple[int, np.ndarray]:
    """First triangle hit by the ray (Möller–Trumbore over all triangles) and its barycentrics."""
    e1, e2 = tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]
    p = np.cross(direction, e2)
    det = (e1 * p).sum(-1)
    ok = np.abs(det) > 1e-12
    inv = np.where(ok, 1.0 / np.where(ok, det, 1.0), 0.0)
    s = origin - tri[:, 0]
    u = (s * p).sum(-1) * inv
    q = np.cross(s, e1)
    v = (direction * q).sum(-1) * inv
    t = (e2 * q).sum(-1) * inv
    hit = ok & (u >= -1e-9) & (v >= -1e-9) & (u + v <= 1 + 1e-9) & (t > 0)
    if not hit.any():
        raise RuntimeError("landmark ray missed the head surface")
    i = int(np.flatnonzero(hit)[np.argmin(t[hit])])
    return i, np.array([1 - u[i] - v[i], u[i], v[i]])


def generate_head(seed: int = 0) -> FlameAssets:
    """Build the stand-in head model (float32 arrays in FLAME's layout)."""
    rng = np.random.default_rng(seed)
    head_dirs, head_faces = uv_sphere(HEAD_RINGS, HEAD_SEGMENTS, _polar_warp, _azimuth_warp)
    head = head_dirs * _head_radius(head_dirs)[:, None]
    n_head = len(head)

    # eyeballs: UV spheres whose first pole looks along +z (that vertex is the pupil)
    eye_dirs, eye_faces = uv_sphere(EYE_RINGS, EYE_SEGMENTS)
    to_z = np.array([[1.0, 0, 0], [0, 0, -1.0], [0, 1.0, 0]])  # rotation taking +y to +z
    eye_dirs = eye_dirs @ to_z.T
    eye_faces = eye_faces.copy()  # rotation keeps the orientation
    vertices, faces, eye_centres = [head], [head_faces], []
    for sign in (-1.0, 1.0):  # subject's right eye (−x, image left) first, as joint 3
        d = _direction(np.array([sign * EYE_DIRECTION[0]]), np.array([EYE_DIRECTION[1]]))
        surface = d * _head_radius(d)[:, None]
        centre = surface[0] - np.array([0.0, 0.0, EYE_DEPTH])
        eye_centres.append(centre)
        faces.append(eye_faces + sum(len(v) for v in vertices))
        vertices.append(centre + EYE_RADIUS * eye_dirs)
    v_template = np.concatenate(vertices)
    faces = np.concatenate(faces)
    assert len(v_template) == NUM_VERTICES
    n_eye = len(eye_dirs)
    eye_slices = [slice(n_head, n_head + n_eye), slice(n_head + n_eye, n_head + 2 * n_eye)]
    az, el = _angles(head)

    # ---- skinning weights: jaw below the mouth line (lower laterally), root at the neck base
    mouth_line = MOUTH_LINE_ELEVATION - 25.0 * np.clip(np.abs(az) / 70.0, 0, 1.3) ** 2
    jaw = _smoothstep((mouth_line - el + 1.5) / 3.0) * _smoothstep((115.0 - np.abs(az)) / 25.0)
    root = _smoothstep((-72.0 - el) / 12.0) * (1 - jaw)
    weights = np.zeros((NUM_VERTICES, 5))
    weights[:n_head, 0] = root
    weights[:n_head, 2] = jaw
    weights[:n_head, 1] = 1 - root - jaw
    weights[eye_slices[0], 3] = 1.0
    weights[eye_slices[1], 4] = 1.0

    # ---- joints regressed from vertices (exact on the template)
    joint_targets = [np.array([0.0, -0.095, -0.01]), np.array([0.0, -0.07, -0.015]), np.array([0.0, -0.012, -0.005])]
    j_regressor = np.zeros((5, NUM_VERTICES))
    for j, target in enumerate(joint_targets):
        near = np.argsort(np.linalg.norm(head - target, axis=1))[:24]
        j_regressor[j, near] = _min_norm_regressor(head[near], target)
    for j, sl in zip((3, 4), eye_slices):
        j_regressor[j, sl] = 1.0 / n_eye  # eyeball centroid = eye centre
    parents = np.array([-1, 0, 1, 1, 1])

    # ---- shape basis: random smooth radial fields (decaying variance), the first three scale axes
    shapedirs = np.zeros((NUM_VERTICES, 3, N_SHAPE + N_EXPRESSION))
    eye_points = np.stack(eye_centres)

    def radial_field(points: np.ndarray, freqs: np.ndarray, phases: np.ndarray, amps: np.ndarray) -> np.ndarray:
        d = points / np.linalg.norm(points, axis=-1, keepdims=True)
        return (np.cos(d @ freqs.T + phases) * amps).sum(-1)

    for k in range(N_SHAPE):
        if k < 3:  # width, height, depth (±6% per unit)
            field = np.zeros(3)
            field[k] = 0.06
            head_disp = head * field
            eye_disp = eye_points * field
        else:
            n_terms = 8
            freqs = rng.normal(0.0, 1.0 + 5.0 * k / N_SHAPE, (n_terms, 3))
            phases = rng.uniform(0, 2 * np.pi, n_terms)
            amps = rng.normal(0.0, 1.0, n_terms)
            f_head = radial_field(head, freqs, phases, amps)
            rms = np.sqrt((f_head**2).mean()) + 1e-12
            sigma = 0.004 / (1.0 + (k - 3) / 4.0) ** 1.2  # ≈7 mm RMS over all components at 1σ
            head_disp = (sigma * f_head / rms)[:, None] * head_dirs
            f_eye = radial_field(eye_points, freqs, phases, amps)
            eye_disp = (sigma * f_eye / rms)[:, None] * (eye_points / np.linalg.norm(eye_points, axis=1, keepdims=True))
        shapedirs[:n_head, :, k] = head_disp
        for sl, disp in zip(eye_slices, eye_disp):
            shapedirs[sl, :, k] = disp  # eyeballs ride rigidly with their sockets

    # ---- expression basis: named regional motions first, then small local fields
    side = np.sign(head[:, 0])

    def region(a0, e0, sa, se):
        return _bump(az, el, a0, e0, sa, se)[:, None]

    corners = region(-19, -25, 6, 4) + region(19, -25, 6, 4)
    named = [
        region(0, -31, 14, 4) * [0, -0.004, 0] + region(0, -20, 12, 3) * [0, 0.0015, 0],  # lips apart
        corners * np.stack([side * 0.003, np.full_like(side, 0.004), np.full_like(side, -0.002)], 1)
        + (region(-30, -12, 10, 8) + region(30, -12, 10, 8)) * [0, 0.002, 0.0015],  # smile
        region(0, -25, 14, 6) * [0, 0, 0.005] - corners * np.stack([side * 0.003, 0 * side, 0 * side], 1),  # pucker
        (region(-20, 21, 16, 5) + region(20, 21, 16, 5)) * [0, 0.004, 0],  # brow raise
        (region(-8, 19, 7, 4) + region(8, 19, 7, 4)) * np.stack([-side * 0.002, -0.0025 + 0 * side, 0 * side], 1),  # furrow
        (region(-22, 13, 9, 3) + region(22, 13, 9, 3)) * [0, -0.004, 0.004],  # blink (upper lids over the eyes)
        (region(-33, -18, 14, 10) + region(33, -18, 14, 10)) * head_dirs * 0.004,  # cheek puff
        region(19, -25, 7, 5) * [0.002, 0.004, -0.002],  # left smirk
        region(-19, -25, 7, 5) * [-0.002, 0.004, -0.002],  # right smirk
        region(0, -21, 13, 3) * [0, -0.002, 0] + region(0, -30, 13, 3) * [0, 0.002, 0],  # lip press
    ]
    for k, disp in enumerate(named):
        shapedirs[:n_head, :, N_SHAPE + k] = disp
    for k in range(len(named), N_EXPRESSION):
        a0, e0 = rng.uniform(-50, 50), rng.uniform(-45, 30)
        s = rng.uniform(8, 20)
        vec = rng.normal(0, 1, 3)
        vec *= (0.002 - 0.0015 * k / N_EXPRESSION) / np.linalg.norm(vec)
        shapedirs[:n_head, :, N_SHAPE + k] = region(a0, e0, s, s * 0.7) * vec

    # ---- pose correctives [V,3,36]: (neck, jaw, eye, eye) × 9 rotation-matrix entries
    posedirs = np.zeros((NUM_VERTICES, 3, 36))
    for p in range(18):  # neck and jaw only; the eyes stay rigid
        owner = weights[:n_head, 1] if p < 9 else weights[:n_head, 2]
        freqs = rng.normal(0, 2.0, (4, 3))
        f = radial_field(head, freqs, rng.uniform(0, 2 * np.pi, 4), rng.normal(0, 1, 4))
        f = f / (np.abs(f).max() + 1e-12)
        posedirs[:n_head, :, p] = (0.002 * f * owner * (1 - owner) * 4)[:, None] * head_dirs

    # ---- landmarks: rays from the centre through the iBUG directions, then the two pupils
    head_tri = v_template[faces[: len(head_faces)]]
    lmk_faces, lmk_bary = [], []
    for a0, e0 in LANDMARK_DIRECTIONS:
        f, b = _ray_triangle(np.zeros(3), _direction(np.array(a0), np.array(e0)), head_tri)
        lmk_faces.append(f)
        lmk_bary.append(b)
    for sl in eye_slices:
        pupil = sl.start  # the eyeball's +z pole
        f = int(np.flatnonzero((faces == pupil).any(1))[0])
        lmk_faces.append(f)
        lmk_bary.append((faces[f] == pupil).astype(np.float64))

    assets = FlameAssets(
        faces=faces.astype(np.int64),
        v_template=v_template.astype(np.float32),
        shapedirs=shapedirs.astype(np.float32),
        posedirs=posedirs.astype(np.float32),
        j_regressor=j_regressor.astype(np.float32),
        parents=parents.astype(np.int64),
        lbs_weights=weights.astype(np.float32),
        landmark_faces=np.asarray(lmk_faces, np.int64),
        landmark_barycentric=np.asarray(lmk_bary, np.float32),
        n_shape_total=N_SHAPE,
    )
    assets.validate("generated head")
    return assets


def default_cache_dir() -> Path:
    """``$GAGA_CACHE_DIR``, else the user's cache folder (``$XDG_CACHE_HOME/gagavatar-ray``,
    ``~/.cache/gagavatar-ray`` on Linux): never beside the installed package."""
    env = os.environ.get("GAGA_CACHE_DIR")
    if env:
        return Path(env)
    import platformdirs

    return Path(platformdirs.user_cache_dir("gagavatar-ray", appauthor=False))


def write_generated_head(out_dir: str | Path, seed: int = 0) -> dict[str, Path]:
    """Write the stand-in head in both FLAME layouts: ``FLAME_with_eye.pt`` and
    ``generic_model.pkl`` (+ ``landmark_embedding.npy``)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    assets = generate_head(seed)
    paths = {"pt": out_dir / "FLAME_with_eye.pt", "pkl": out_dir / "generic_model.pkl"}
    tmp = out_dir / f".tmp-{os.getpid()}"
    tmp.mkdir(exist_ok=True)
    save_flame_pickle(assets, tmp / "generic_model.pkl")
    save_flame_with_eye(assets, tmp / "FLAME_with_eye.pt")
    for f in tmp.iterdir():  # rename last so concurrent readers never see half a file
        f.replace(out_dir / f.name)
    tmp.rmdir()
    return paths


def generated_head_dir(cache_dir: str | Path | None = None, seed: int = 0) -> Path:
    """Folder of the generated head files, created on first use."""
    out = Path(cache_dir or default_cache_dir()) / f"flame_generated_{GENERATOR_VERSION}_seed{seed}"
    if not (out / "FLAME_with_eye.pt").is_file() or not (out / "generic_model.pkl").is_file():
        write_generated_head(out, seed)
    return out


def load_generated_head(cache_dir: str | Path | None = None, seed: int = 0) -> FlameAssets:
    return load_flame_with_eye(generated_head_dir(cache_dir, seed) / "FLAME_with_eye.pt")

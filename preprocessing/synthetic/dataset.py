"""The generated mini-VFHQ on disk: identities × clips of talking stand-in heads with ground truth.

Layout of a dataset folder (VFHQ-like; see docs/synthetic.md)::

    videos/<clip_id>.mp4      H.264 yuv420p, frame k = the k-th decoded frame
    sidecars/<clip_id>.npz    preprocessing.sidecar.ClipGroundTruth
    train.txt, test.txt       clip ids, one per line (the last ``test_identities`` identities are test)
    dataset.json              config, cache key, versions, identities, clip list

Clip ids are ``synth{identity:03d}c{clip:02d}`` (letters and digits: they become WebDataset keys).
Every clip is a pure function of (config, identity, clip), so clips render in any order, in any
number of processes, with the same bytes.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import math
import os
import shutil
import uuid
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import torch

from model.config import CameraConfig
from model.flame import FlameModel
from model.geometry import euler_to_matrix, look_at_transform, project_points
from model.procedural_head import GENERATOR_VERSION as HEAD_VERSION
from model.procedural_head import default_cache_dir, load_generated_head
from preprocessing.config import SyntheticDataConfig
from preprocessing.sidecar import ClipGroundTruth, save_sidecar

from .appearance import Appearance, sample_appearance
from .motion import MotionLimits, sample_motion
from .regions import CanonicalRegions, canonical_regions
from .render import Lighting, PaintedHead, paint_head, render_frame
from .video import pyav_has_x264, write_video

log = logging.getLogger(__name__)

GENERATOR_VERSION = "1"  # bump whenever the same config would produce different files
FLAME_NOTE = "generated stand-in head"
FOCAL = CameraConfig().focal  # the tracker's NDC focal (12): one definition, in model/config.py
_SHAPE_LIMIT = 2.5  # shape codes are N(0,1) clipped here: no freak heads from a 4σ draw


def clip_id(identity: int, clip: int) -> str:
    """``synth{identity:03d}c{clip:02d}``: letters and digits only (a WebDataset key part)."""
    return f"synth{identity:03d}c{clip:02d}"


@dataclass
class Identity:
    """shape [300] float32 FLAME shape code; appearance."""

    index: int
    shape: np.ndarray
    appearance: Appearance


@dataclass
class ClipRender:
    """One rendered clip before encoding: frames uint8 [K,H,W,3], alphas float32 [K,H,W] in [0,1],
    the ground truth that produced them and the light used."""

    clip_id: str
    identity: int
    clip: int
    frames: np.ndarray
    alphas: np.ndarray
    truth: ClipGroundTruth
    light: Lighting


@dataclass
class _Head:
    """The stand-in head model and its canonical regions, loaded once per process."""

    flame: FlameModel
    regions: CanonicalRegions
    half_height: float  # world units: half the neutral template's height


@functools.lru_cache(maxsize=1)
def _head() -> _Head:
    assets = load_generated_head()
    flame = FlameModel(assets)
    y = assets.v_template[:, 1]
    return _Head(flame, canonical_regions(assets), float(y.max() - y.min()) / 2.0 * flame.scale)


def _validate(cfg: SyntheticDataConfig) -> None:
    problems = []
    if cfg.identities < 1 or cfg.clips_per_identity < 1 or cfg.frames_per_clip < 1:
        problems.append("identities, clips_per_identity and frames_per_clip must be ≥ 1")
    if not 0 <= cfg.test_identities < cfg.identities:
        problems.append(f"test_identities must be in [0, identities) (got {cfg.test_identities})")
    if cfg.resolution < 16 or cfg.resolution % 2:
        problems.append(f"resolution must be even and ≥ 16 (got {cfg.resolution})")
    if cfg.supersample < 1 or cfg.fps < 1 or not 0.1 <= cfg.head_fill <= 0.95:
        problems.append("supersample, fps ≥ 1 and head_fill in [0.1, 0.95] required")
    if cfg.identities > 1000 or cfg.clips_per_identity > 100:
        problems.append("clip ids have room for 1000 identities × 100 clips")
    if cfg.encoder not in ("auto", "pyav", "ffmpeg"):
        problems.append(f"encoder must be auto, pyav or ffmpeg (got {cfg.encoder!r})")
    if problems:
        raise ValueError("synthetic data config: " + "; ".join(problems))


def camera_distance(cfg: SyntheticDataConfig) -> float:
    """Camera–head-centre distance (world units) at which the neutral head spans
    ``cfg.head_fill`` of the frame height: half_height / distance · focal = head_fill."""
    return FOCAL * _head().half_height / cfg.head_fill


def motion_limits(cfg: SyntheticDataConfig) -> MotionLimits:
    return MotionLimits(max_jaw=cfg.max_jaw, max_yaw=math.radians(cfg.max_yaw_deg),
                        max_pitch=math.radians(cfg.max_pitch_deg), max_roll=math.radians(cfg.max_roll_deg))


def sample_identity(cfg: SyntheticDataConfig, identity: int) -> Identity:
    """Identity ``identity`` of the dataset seeded by ``cfg.seed`` (independent of the others)."""
    rng = np.random.default_rng([cfg.seed, 1, identity])
    appearance = sample_appearance(rng)
    shape = np.clip(rng.standard_normal(300), -_SHAPE_LIMIT, _SHAPE_LIMIT).astype(np.float32)
    return Identity(identity, shape, appearance)


def _sample_light(rng: np.random.Generator) -> Lighting:
    d = (float(rng.uniform(-0.6, 0.6)), float(rng.uniform(0.1, 0.7)), -1.0)
    warmth = float(rng.uniform(-0.04, 0.04))
    return Lighting(direction=d, ambient=float(rng.uniform(0.3, 0.42)), diffuse=float(rng.uniform(0.65, 0.85)),
                    color=(1.0 + warmth, 1.0, 1.0 - warmth))


@contextlib.contextmanager
def _single_thread() -> Iterator[None]:
    """One torch thread while rendering: reductions then sum in a fixed order, so the output does
    not depend on the machine's core count (parallelism comes from processes instead). It is also
    much faster here: the per-frame tensors are small, and on a busy 2-core machine two OpenMP
    threads spent 25× longer synchronising than computing (8.4 s vs 0.3 s for a 10-frame clip)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def generate_clip(cfg: SyntheticDataConfig, identity: int, clip: int) -> ClipRender:
    """Render clip ``clip`` of identity ``identity``: motion → FLAME → camera → frames.

    Head rotation and translation are camera motion (FLAME global rotation stays zero), as in the
    GAGAvatar tracker; landmarks are the FLAME landmarks projected with the same camera.
    Runs on one torch thread (see :func:`_single_thread`).
    """
    _validate(cfg)
    head = _head()
    ident = sample_identity(cfg, identity)
    rng = np.random.default_rng([cfg.seed, 2, identity, clip])
    motion = sample_motion(rng, cfg.frames_per_clip, cfg.fps, motion_limits(cfg))
    light = _sample_light(rng)
    k, res = cfg.frames_per_clip, cfg.resolution

    with torch.no_grad(), _single_thread():
        shape = torch.from_numpy(ident.shape).unsqueeze(0)
        rest = head.flame(shape).vertices[0]
        painted = paint_head(head.regions, head.flame.faces, ident.appearance, rest)
        out = head.flame(shape.expand(k, -1), torch.from_numpy(motion.expression),
                         torch.from_numpy(motion.pose), torch.from_numpy(motion.eyes))
        euler = torch.from_numpy(motion.head_euler)
        rotation = euler_to_matrix(euler[:, 0], euler[:, 1], euler[:, 2])
        transform = look_at_transform(camera_distance(cfg), rotation, torch.from_numpy(motion.translation))
        landmarks = project_points(out.landmarks, transform, FOCAL, res, res)
        frames = np.zeros((k, res, res, 3), np.uint8)
        alphas = np.zeros((k, res, res), np.float32)
        for i in range(k):
            frames[i], alphas[i] = render_frame(painted, out.vertices[i], transform[i], FOCAL, res,
                                                light=light, supersample=cfg.supersample)
    truth = ClipGroundTruth(
        shape=ident.shape,
        expression=motion.expression,
        pose=motion.pose,
        eyes=motion.eyes,
        transform_matrix=transform.numpy().astype(np.float32),
        focal=FOCAL,
        landmarks=landmarks.numpy().astype(np.float32),
        image_size=(res, res),
        fps=float(cfg.fps),
    )
    return ClipRender(clip_id(identity, clip), identity, clip, frames, alphas, truth, light)


def painted_head(cfg: SyntheticDataConfig, identity: int) -> PaintedHead:
    """The identity's painted head (for re-rendering a sidecar's parameters, e.g. in tests)."""
    head = _head()
    ident = sample_identity(cfg, identity)
    with torch.no_grad():
        rest = head.flame(torch.from_numpy(ident.shape).unsqueeze(0)).vertices[0]
    return paint_head(head.regions, head.flame.faces, ident.appearance, rest)


def _keyed_config(cfg: SyntheticDataConfig) -> dict:
    """The config fields that change the output (``workers`` does not)."""
    data = asdict(cfg)
    data.pop("workers")
    data["encoder"] = _encoder_name(cfg)
    return data


def _encoder_name(cfg: SyntheticDataConfig) -> str:
    if cfg.encoder != "auto":
        return cfg.encoder
    return "pyav" if pyav_has_x264() else "ffmpeg"


@functools.lru_cache(maxsize=1)
def source_digest() -> str:
    """Hash of this package's source files: part of the cache key, so editing the generator can
    never serve a dataset made by the previous code (a forgotten version bump included)."""
    h = hashlib.sha256()
    for path in sorted(Path(__file__).parent.glob("*.py")):
        h.update(path.name.encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def dataset_key(cfg: SyntheticDataConfig) -> str:
    """Cache key: readable sizes + a hash of every output-relevant field, the generator and head
    versions and the generator's source, e.g. ``n8c2k48r256s0-1a2b3c4d5e6f``."""
    payload = json.dumps({"config": _keyed_config(cfg), "generator": GENERATOR_VERSION, "head": HEAD_VERSION,
                          "source": source_digest()}, sort_keys=True)
    digest = hashlib.sha256(payload.encode()).hexdigest()[:12]
    return (f"n{cfg.identities}c{cfg.clips_per_identity}k{cfg.frames_per_clip}r{cfg.resolution}"
            f"s{cfg.seed}-{digest}")


def _write_clip(cfg: SyntheticDataConfig, identity: int, clip: int, out_dir: str) -> str:
    """Render and write one clip's mp4 and sidecar into out_dir; returns the encoder used."""
    result = generate_clip(cfg, identity, clip)
    out = Path(out_dir)
    encoder = write_video(result.frames, out / "videos" / f"{result.clip_id}.mp4", cfg.fps,
                          crf=cfg.crf, preset=cfg.x264_preset, encoder=_encoder_name(cfg))
    save_sidecar(result.truth, out / "sidecars" / f"{result.clip_id}.npz")
    return encoder


def _worker_count(cfg: SyntheticDataConfig, jobs: int) -> int:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    wanted = cfg.workers if cfg.workers > 0 else min(cores, 8)
    return max(1, min(wanted, jobs))


def _manifest(cfg: SyntheticDataConfig, key: str, encoder: str) -> dict:
    n_train = cfg.identities - cfg.test_identities
    clips, identities = [], []
    for i in range(cfg.identities):
        split = "train" if i < n_train else "test"
        identities.append({"identity": i, "split": split, "appearance": sample_identity(cfg, i).appearance.to_dict()})
        for c in range(cfg.clips_per_identity):
            cid = clip_id(i, c)
            clips.append({"clip_id": cid, "identity": i, "clip": c, "split": split, "frames": cfg.frames_per_clip,
                          "video": f"videos/{cid}.mp4", "sidecar": f"sidecars/{cid}.npz"})
    return {
        "name": "synthetic mini-VFHQ",
        "generator": "preprocessing.synthetic",
        "generator_version": GENERATOR_VERSION,
        "generator_source": source_digest(),
        "flame": FLAME_NOTE,
        "flame_generator_version": HEAD_VERSION,
        "key": key,
        "config": _keyed_config(cfg),
        "encoder": encoder,
        "camera": {"focal_ndc": FOCAL, "distance": round(camera_distance(cfg), 6),
                   "convention": "tracker transform_matrix [R|T], PyTorch3D row vectors, FLAME x5 world"},
        "identities": identities,
        "clips": clips,
        "train": [c["clip_id"] for c in clips if c["split"] == "train"],
        "test": [c["clip_id"] for c in clips if c["split"] == "test"],
    }


def _is_complete(path: Path, key: str) -> bool:
    try:
        return json.loads((path / "dataset.json").read_text())["key"] == key
    except (OSError, ValueError, KeyError):
        return False


def is_generated(dataset_dir: str | Path, cfg: SyntheticDataConfig) -> bool:
    """Whether ``dataset_dir`` holds the complete dataset of ``cfg``."""
    return _is_complete(Path(dataset_dir), dataset_key(cfg))


def generate_dataset(cfg: SyntheticDataConfig, out_dir: str | Path) -> Path:
    """Generate the whole dataset into ``out_dir`` atomically: everything is written into a
    temporary sibling folder that is renamed at the end, so readers never see half a dataset.

    If ``out_dir`` already holds this config's dataset it is returned as is; any other existing
    ``out_dir`` raises FileExistsError. Clips render in ``cfg.workers`` processes.
    """
    _validate(cfg)
    out_dir = Path(out_dir)
    key = dataset_key(cfg)
    if out_dir.exists():
        if _is_complete(out_dir, key):
            return out_dir
        raise FileExistsError(f"{out_dir} exists and does not hold dataset {key}")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    _head()  # builds the stand-in head's cache files once, before any worker needs them
    (tmp / "videos").mkdir(parents=True)
    (tmp / "sidecars").mkdir()
    try:
        jobs = [(i, c) for i in range(cfg.identities) for c in range(cfg.clips_per_identity)]
        workers = _worker_count(cfg, len(jobs))
        log.info("generating %d clips of %d frames at %d² with %d worker(s) → %s",
                 len(jobs), cfg.frames_per_clip, cfg.resolution, workers, out_dir)
        if workers == 1:
            encoders = [_write_clip(cfg, i, c, str(tmp)) for i, c in jobs]
        else:
            # spawn, not fork: a forked child of a process whose torch/OpenMP pools already ran can hang
            with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
                futures = [pool.submit(_write_clip, cfg, i, c, str(tmp)) for i, c in jobs]
                encoders = [f.result() for f in futures]
        manifest = _manifest(cfg, key, encoders[0])
        n_train = len(manifest["train"])
        (tmp / "train.txt").write_text("".join(f"{c}\n" for c in manifest["train"]))
        (tmp / "test.txt").write_text("".join(f"{c}\n" for c in manifest["test"]))
        assert n_train + len(manifest["test"]) == len(jobs)
        (tmp / "dataset.json").write_text(json.dumps(manifest, indent=1) + "\n")
        try:
            tmp.rename(out_dir)
        except OSError:
            if not _is_complete(out_dir, key):  # someone else finished first: keep theirs
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def default_dataset_root() -> Path:
    """``model.procedural_head.default_cache_dir() / "synthetic"``."""
    return default_cache_dir() / "synthetic"


def ensure_dataset(cfg: SyntheticDataConfig, cache_dir: str | Path | None = None) -> Path:
    """The dataset of ``cfg``, generated on first use into ``<cache_dir>/<dataset_key(cfg)>``
    (default root :func:`default_dataset_root`) and reused afterwards."""
    root = Path(cache_dir) if cache_dir is not None else default_dataset_root()
    out = root / dataset_key(cfg)
    if _is_complete(out, dataset_key(cfg)):
        return out
    return generate_dataset(cfg, out)


def load_manifest(dataset_dir: str | Path) -> dict:
    """dataset.json of a generated dataset."""
    return json.loads((Path(dataset_dir) / "dataset.json").read_text())

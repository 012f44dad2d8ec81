"""Reenactment of one source image by a driver (``gaga-reenact``).

The source photo is cropped and tracked by the preprocessing single-image path
(``preprocessing.clip.track_image``: dlib face box, the tracker's square crop, dlib landmarks,
FLAME + camera fit). The driver is a video (cropped and tracked as one clip by the preprocessing
clip path, every frame kept), a single image, or tracked test shards (a clip's driving frames
with their parameters, no tracking). Frames come from :class:`model.reenactment.Reenactor`: the
source is reconstructed once; per frame the source's FLAME shape + the driver's expression, jaw,
eyes and camera. Output: an H.264 mp4 (optionally driver | result side by side) and the frames
as PNGs.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import storage
from .config import ExperimentConfig
from .eval.checkpoints import CheckpointInfo, inspect_checkpoint, load_flame, load_model

log = logging.getLogger("gaga.reenact")

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


@dataclass
class TrackedFrames:
    """Crops and their tracked parameters (model.frame_params layout)."""

    images: np.ndarray  # [K,S,S,3] uint8
    params: np.ndarray  # [K,428] float32
    fps: float
    name: str
    kind: str  # "image" | "video" | "shards"
    notes: list[str] = field(default_factory=list)


def _read_image(path: str) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(storage.read_bytes(path))) as img:
        return np.asarray(img.convert("RGB"))


def _tracking_config(cfg: ExperimentConfig, crop_size: int):
    """The preprocessing config for reenactment inputs: dlib detection and landmarks (no ground
    truth here), crops at the model's resolution, every video frame kept."""
    p = cfg.preprocess
    sampling = dataclasses.replace(p.sampling, max_frames=0, min_frames=1)
    return dataclasses.replace(p, detector="dlib", landmarks="dlib", crop=dataclasses.replace(p.crop, size=crop_size),
                               sampling=sampling)


def _detectors(pcfg):
    from preprocessing.detection import make_face_detector
    from preprocessing.landmarks import make_landmark_detector

    return make_face_detector("dlib", pcfg.detection), make_landmark_detector("dlib")


def _matte(crops: np.ndarray, pcfg) -> tuple[np.ndarray, str]:
    """Composite crops [K,S,S,3] on black with the configured matting model (the model was trained
    on matted crops); unchanged, with a note, without one."""
    from preprocessing.matting import composite, load_matting

    matting = load_matting(pcfg.matting_model)
    if matting is None:
        return crops, "no matting model (preprocess.matting_model): the background is kept"
    return composite(crops, matting.alpha(crops)), f"matted with {matting.name}"


def track_single_image(path: str, cfg: ExperimentConfig, flame, crop_size: int,
                       device: torch.device | str = "cpu") -> TrackedFrames:
    """Crop + FLAME/camera of one photo (the source, or a one-frame driver)."""
    from preprocessing.clip import ClipSkipped, track_image

    pcfg = _tracking_config(cfg, crop_size)
    detector, landmarker = _detectors(pcfg)
    try:
        tracked = track_image(_read_image(path), flame, detector, landmarker, pcfg, cfg.camera.focal, device)
    except ClipSkipped as exc:
        raise ValueError(f"{path}: {exc}") from exc
    crops, note = _matte(tracked.crop[None], pcfg)
    return TrackedFrames(crops, tracked.track.packed().astype(np.float32), cfg.eval.fps, Path(path).stem, "image",
                         [note, _residual_note(float(tracked.track.residual_px[0]), crop_size), *tracked.notes])


def _residual_note(residual_px: float, crop_size: int, what: str = "landmark residual") -> str:
    """The fit residual at the model's crop size and at 512² (where preprocessing reports it)."""
    from preprocessing.tracking import REFERENCE_SIZE

    return (f"{what} {residual_px:.2f} px at the model's {crop_size}² crop "
            f"(= {residual_px * REFERENCE_SIZE / crop_size:.1f} px at {REFERENCE_SIZE:.0f}²)")


def track_video(path: str, cfg: ExperimentConfig, flame, crop_size: int,
                device: torch.device | str = "cpu") -> TrackedFrames:
    """Every frame of a video cropped and tracked as one clip (one shared shape)."""
    from preprocessing.clip import ClipSkipped, crop_clip, track_clip
    from preprocessing.video_io import VideoSource

    pcfg = _tracking_config(cfg, crop_size)
    detector, landmarker = _detectors(pcfg)
    name = Path(path).stem
    try:
        clip = crop_clip(name, VideoSource(storage.read_bytes(path), path), detector, landmarker, pcfg)
    except ClipSkipped as exc:
        raise ValueError(f"{path}: {exc}") from exc
    try:
        tracked = track_clip(clip, flame, pcfg, cfg.camera.focal, device)
    except ClipSkipped as exc:
        raise ValueError(f"{path}: {exc}") from exc
    kept = np.flatnonzero(tracked.keep)
    crops, note = _matte(np.stack([clip.decoded(int(k)) for k in kept]), pcfg)
    notes = [note, *clip.notes, *tracked.notes, _residual_note(tracked.residual_px, crop_size, "median landmark residual")]
    dropped = sum(tracked.dropped_by.values())
    if dropped:
        notes.append(f"{dropped} of {clip.frames_total} frames without a usable face were left out ("
                     + ", ".join(f"{k} {v}" for k, v in sorted(tracked.dropped_by.items())) + ")")
    return TrackedFrames(crops, tracked.track.packed().astype(np.float32), clip.fps, name, "video", notes)


def frames_from_shards(prefix: str, clip: str | None = None) -> TrackedFrames:
    """The driving frames of one clip in tracked pair shards (test_self / test_cross / train): the
    targets of its pairs plus their sources, by frame id; ``clip`` defaults to the first clip."""
    from .eval.data import pair_identity
    from .shard_reader import shard_samples

    urls = storage.list_urls(prefix, suffix=".tar")
    if not urls:
        raise FileNotFoundError(f"{prefix}: no .tar shards (a driver is a video, an image or a shard prefix)")
    found: dict[str, dict[int, tuple[bytes, bytes]]] = {}
    for url in urls:
        for sample in shard_samples(url):
            meta = json.loads(sample.get("meta.json", b"{}") or b"{}")
            who = pair_identity(sample["__key__"], meta)
            for side, c, f in (("target", who["target_clip"], who["target_frame"]),
                               ("source", who["source_clip"], who["source_frame"])):
                image = next((sample[f"{side}.{e}"] for e in ("jpg", "png", "jpeg") if f"{side}.{e}" in sample), None)
                if image is not None and f"{side}.params.npy" in sample:
                    found.setdefault(c, {}).setdefault(f, (image, sample[f"{side}.params.npy"]))
    if not found:
        raise ValueError(f"{prefix}: the shards hold no pair samples")
    name = clip or sorted(found)[0]
    if name not in found:
        raise ValueError(f"{prefix}: no clip {name!r}; clips: {', '.join(sorted(found)[:20])}")
    from .eval.stages import decode_image

    ids = sorted(found[name])
    images = np.stack([decode_image(found[name][f][0]) for f in ids])
    params = np.stack([np.load(io.BytesIO(found[name][f][1]), allow_pickle=False).astype(np.float32).reshape(-1)
                       for f in ids])
    return TrackedFrames(images, params, 25.0, name, "shards", [f"{len(ids)} tracked frames of clip {name}"])


def load_driver(driver: str, cfg: ExperimentConfig, flame, crop_size: int, device, clip: str | None = None) -> TrackedFrames:
    suffix = Path(driver).suffix.lower()
    if suffix in VIDEO_SUFFIXES:
        return track_video(driver, cfg, flame, crop_size, device)
    if suffix in IMAGE_SUFFIXES:
        return track_single_image(driver, cfg, flame, crop_size, device)
    return frames_from_shards(driver, clip)


def _resize(images: np.ndarray, size: int) -> np.ndarray:
    from PIL import Image

    if images.shape[1] == size and images.shape[2] == size:
        return images
    return np.stack([np.asarray(Image.fromarray(i).resize((size, size), Image.Resampling.BICUBIC)) for i in images])


def load_source(source: str, cfg: ExperimentConfig, flame, crop_size: int, device, clip: str | None = None) -> TrackedFrames:
    """A photo (cropped and tracked here) or, from tracked shards, the first frame of ``clip``."""
    if Path(source).suffix.lower() in IMAGE_SUFFIXES:
        return track_single_image(source, cfg, flame, crop_size, device)
    frames = frames_from_shards(source, clip)
    return TrackedFrames(frames.images[:1], frames.params[:1], frames.fps, frames.name, "shards",
                         [f"first tracked frame of clip {frames.name}"])


def run_reenact(cfg: ExperimentConfig, checkpoint: str, source: str, driver: str, out: str,
                frames_dir: str | None = None, clip: str | None = None, side_by_side: bool | None = None,
                device: str | None = None, source_clip: str | None = None) -> dict[str, Any]:
    """Reenact ``source`` (an image, or a clip of tracked shards) with ``driver``; writes ``out``
    (mp4) and the frames; returns a summary."""
    from model.frame_params import split_params
    from model.reenactment import ReenactOptions, Reenactor
    from preprocessing.synthetic.video import write_video

    from .images import encode_png

    t0 = time.perf_counter()
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    info: CheckpointInfo = inspect_checkpoint(checkpoint, cfg)
    model, flame = load_model(info, dev), load_flame(info, dev)
    size = info.config.camera.image_size
    track_cfg = dataclasses.replace(cfg, camera=info.config.camera, flame=info.config.flame)
    src = load_source(source, track_cfg, flame, size, dev, source_clip)
    drv = load_driver(driver, track_cfg, flame, size, dev, clip)
    t_track = time.perf_counter()

    fast = cfg.eval.optimized and dev.type == "cuda"
    options = ReenactOptions.fast(compile=cfg.eval.compile, compile_mode=cfg.eval.compile_mode) if fast else ReenactOptions()
    reenactor = Reenactor(model, flame, options)
    sp = split_params(torch.from_numpy(src.params).to(dev))
    src_image = torch.from_numpy(np.array(src.images)).permute(0, 3, 1, 2).float().div(255.0).to(dev)
    reenactor.set_source(src_image, sp["shape"], sp["transform_matrix"])
    step = 1 if fast else max(1, cfg.eval.batch_size)
    results = []
    params = torch.from_numpy(drv.params).to(dev)
    for start in range(0, len(params), step):
        refined = reenactor.render_params(params[start:start + step]).refined
        results.append((refined.clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).cpu().numpy())
    frames = np.concatenate(results)
    t_render = time.perf_counter()

    side = cfg.eval.side_by_side if side_by_side is None else side_by_side
    video = np.concatenate([_resize(drv.images, size), frames], axis=2) if side else frames
    out_path = Path(out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    encoder = write_video(video, out_path, fps=max(1, round(drv.fps)))
    frames_path = Path(frames_dir) if frames_dir else out_path.with_name(out_path.stem + "_frames")
    frames_path.mkdir(parents=True, exist_ok=True)
    for k, frame in enumerate(frames):
        (frames_path / f"{k:05d}.png").write_bytes(encode_png(frame))
    summary = {
        "video": str(out_path), "frames_dir": str(frames_path), "frames": int(len(frames)), "fps": drv.fps,
        "layout": "driver | result" if side else "result", "encoder": encoder,
        "checkpoint": info.summary(), "warnings": list(info.warnings),
        "source": {"path": source, "notes": src.notes}, "driver": {"path": driver, "kind": drv.kind, "name": drv.name,
                                                                  "notes": drv.notes},
        "mode": dataclasses.asdict(options), "device": str(dev),
        "seconds": {"load_and_track": t_track - t0, "render": t_render - t_track,
                    "render_fps_incl_host_copy": len(frames) / max(t_render - t_track, 1e-9),
                    "total": time.perf_counter() - t0},
    }
    for warning in info.warnings:
        log.warning("%s", warning)
    if reenactor.notes:
        summary["notes"] = list(reenactor.notes)
    log.info("reenactment: %d frames → %s", len(frames), out_path)
    return summary

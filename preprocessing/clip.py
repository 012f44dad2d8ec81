"""One clip end to end, without Ray: frames → face boxes on keyframes → EMA-smoothed square crops
of the kept frames → landmarks → FLAME tracking; and the single-image path.

Problems with the input raise :class:`ClipSkipped` with a reason naming the clip and the problem
(the pipeline turns it into a ``skipped`` manifest row); anything else is a failure.
"""

from __future__ import annotations

import dataclasses
import io
import os
import tempfile
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from model.flame import FlameModel

from .config import PreprocessConfig
from .crop import crop_image, ema_smooth, face_to_head_box, square_crop_box, to_crop
from .detection import FaceDetector, detect_keyframes
from .landmarks import CropInfo, LandmarkDetector
from .matting import Matting, composite
from .sample_format import encode_image
from .sampling import select_frames
from .sidecar import ClipGroundTruth, load_sidecar
from .tracking import LandmarkFlame, TrackResult, track_landmarks
from .video_io import DecodeError, FrameSource


class ClipSkipped(Exception):
    """The clip's input cannot be used (the reason says why); not retried on rerun."""


@dataclass
class CroppedClip:
    """A clip after cropping and landmark detection (K kept frames)."""

    clip_id: str
    frame_ids: np.ndarray  # [K] indices into the decoded frames (after the frame-rate drop)
    images: list[bytes]  # K encoded crops (image_format), size × size
    landmarks: np.ndarray  # [K, 70, 2] crop pixels
    crop_boxes: np.ndarray  # [K, 3] (x0, y0, side) in frame pixels
    size: int
    image_format: str
    frames_total: int
    fps: float
    dropped: int = 0  # selected frames without landmarks
    matting: str = "none"
    notes: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)

    def decoded(self, k: int) -> np.ndarray:
        from PIL import Image

        with Image.open(io.BytesIO(self.images[k])) as img:
            return np.asarray(img.convert("RGB"))


def truth_from_bytes(data: bytes, name: str = "sidecar") -> ClipGroundTruth:
    """A sidecar .npz from bytes (it may come from S3)."""
    fd, path = tempfile.mkstemp(suffix=".npz")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        truth = load_sidecar(path)
    except ValueError as exc:
        raise ValueError(f"{name}: {exc}") from exc
    finally:
        os.unlink(path)
    return truth


def subsample_truth(truth: ClipGroundTruth, step: int) -> ClipGroundTruth:
    """Ground truth indexed like the decoded frames when the source drops every other frame."""
    if step == 1:
        return truth
    per_frame = {"expression", "pose", "eyes", "transform_matrix", "landmarks"}
    values = {f.name: getattr(truth, f.name) for f in dataclasses.fields(truth)}
    for name in per_frame:
        values[name] = values[name][step - 1::step]
    values["fps"] = truth.fps / step
    return ClipGroundTruth(**values)


def crop_clip(clip_id: str, source: FrameSource, detector: FaceDetector, landmarker: LandmarkDetector,
              config: PreprocessConfig, matting: Matting | None = None) -> CroppedClip:
    """Detect on keyframes, smooth, crop the kept frames, find their landmarks. Raises
    ClipSkipped when the clip is too short, shows no face, or has too few frames with landmarks."""
    t0 = time.perf_counter()
    sampling, crop_cfg, det_cfg = config.sampling, config.crop, config.detection
    try:
        count, face_boxes = detect_keyframes(source.keyframes(crop_cfg.keyframe_interval), detector)
    except DecodeError as exc:
        raise ClipSkipped(str(exc)) from exc
    if count == 0:
        raise ClipSkipped(f"{clip_id}: no frames decoded")
    if count < sampling.min_frames:
        raise ClipSkipped(f"{clip_id}: too short: {count} frames < sampling.min_frames {sampling.min_frames}")
    if face_boxes is None:
        raise ClipSkipped(f"{clip_id}: no face found by detector '{detector.name}' on any keyframe")
    head = face_to_head_box(face_boxes, det_cfg.head_widen, det_cfg.head_raise)
    crop_boxes = square_crop_box(ema_smooth(head, crop_cfg.ema_alpha), crop_cfg.scale)
    keep = select_frames(count, sampling.max_frames)
    t1 = time.perf_counter()
    crops, points, kept = [], [], []
    for index, frame in source.read(keep):  # frames lost to a late decoding error are noted by the source
        crop = crop_image(frame, crop_boxes[index], crop_cfg.size)
        face_in_crop = to_crop(face_boxes[index].reshape(2, 2), crop_boxes[index], crop_cfg.size).reshape(4)
        lmk = landmarker.detect(crop, CropInfo(int(index), crop_boxes[index], crop_cfg.size, face_in_crop))
        if lmk is None:
            continue
        crops.append(crop)
        points.append(lmk)
        kept.append(int(index))
    dropped = len(keep) - len(kept)
    if len(kept) < sampling.min_frames:
        raise ClipSkipped(f"{clip_id}: landmarks on only {len(kept)} of {len(keep)} selected frames "
                          f"(< sampling.min_frames {sampling.min_frames})")
    t2 = time.perf_counter()
    stack = np.stack(crops)
    matting_name = "none"
    if matting is not None:
        stack = composite(stack, matting.alpha(stack))
        matting_name = matting.name
    fmt = sampling.image_format
    images = [encode_image(c, fmt, sampling.jpeg_quality) for c in stack]
    t3 = time.perf_counter()
    return CroppedClip(
        clip_id=clip_id, frame_ids=np.asarray(kept, np.int64), images=images,
        landmarks=np.stack(points).astype(np.float32), crop_boxes=crop_boxes[kept].astype(np.float32),
        size=crop_cfg.size, image_format=fmt, frames_total=count, fps=float(getattr(source, "output_fps", source.fps)),
        dropped=dropped, matting=matting_name, notes=list(source.notes),
        seconds={"detect": t1 - t0, "crop_landmarks": t2 - t1, "matting_encode": t3 - t2},
    )


def track_clip(clip: CroppedClip, flame: FlameModel, config: PreprocessConfig, focal: float,
               device: torch.device | str | None = None, lmk_flame: LandmarkFlame | None = None) -> TrackResult:
    """FLAME + camera for every kept frame of a cropped clip (one shared shape)."""
    valid = np.ones(len(clip.frame_ids), bool)
    return track_landmarks(flame, clip.landmarks, valid, clip.size, focal, config.tracking, device, lmk_flame)


@dataclass
class ImageTrack:
    crop: np.ndarray  # size × size × 3 uint8
    crop_box: np.ndarray  # (x0, y0, side) in image pixels
    landmarks: np.ndarray  # [70, 2] detected, crop pixels
    track: TrackResult  # one frame


def track_image(image: np.ndarray, flame: FlameModel, detector: FaceDetector, landmarker: LandmarkDetector,
                config: PreprocessConfig, focal: float, device: torch.device | str | None = None) -> ImageTrack:
    """The single-image path (a source photo or one driving frame): detect, crop, landmarks, fit."""
    face = detector.detect(image, 0)
    if face is None:
        raise ClipSkipped(f"no face found by detector '{detector.name}'")
    head = face_to_head_box(face, config.detection.head_widen, config.detection.head_raise)
    box = square_crop_box(head, config.crop.scale)
    size = config.crop.size
    crop = crop_image(image, box, size)
    face_in_crop = to_crop(np.asarray(face).reshape(2, 2), box, size).reshape(4)
    lmk = landmarker.detect(crop, CropInfo(0, box, size, face_in_crop))
    if lmk is None:
        raise ClipSkipped(f"no landmarks found by '{landmarker.name}'")
    track = track_landmarks(flame, lmk[None], np.ones(1, bool), size, focal, config.tracking, device)
    return ImageTrack(crop=crop, crop_box=box, landmarks=lmk, track=track)

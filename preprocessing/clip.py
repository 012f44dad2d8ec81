"""One clip end to end, without Ray: frames → faces on keyframes (one face followed, cuts found)
→ smoothed square crops of the kept frames → landmarks, each frame checked → FLAME tracking, fit
outliers dropped; and the single-image path.

Every frame that shows no usable face is dropped and counted by reason (``dropped_by``:
``no_landmarks``, ``out_of_frame``, ``inconsistent``, ``cut``, ``no_face`` (a shot without a
detected face), ``other_shot``, ``unreadable``, ``residual``, ``non_finite``); none gets made-up landmarks. Problems with the input raise :class:`ClipSkipped`
with a reason naming the clip and the problem (the pipeline turns it into a ``skipped`` manifest
row); anything else is a failure. Ray stages, ``gaga-reenact`` and the benchmarks call these same
functions.
"""

from __future__ import annotations

import dataclasses
import io
import os
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import torch

from model.flame import FlameModel

from .config import PreprocessConfig
from .crop import crop_image, face_to_head_box, from_crop, smooth_boxes, square_crop_box, to_crop
from .detection import FaceDetector
from .landmarks import CropInfo, LandmarkDetector
from .matting import Matting, composite
from .presence import find_cuts, frame_check, residual_outliers, scan_keyframes, shot_boxes, shots
from .sample_format import encode_image
from .sampling import select_frames
from .sidecar import ClipGroundTruth, load_sidecar
from .tracking import REFERENCE_SIZE, LandmarkFlame, TrackResult, track_landmarks
from .video_io import DecodeError, FrameSource

LANDMARK_SEARCH_SIZE = 256  # px: landmarks of smaller crops are found on a crop of this side


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
    dense: np.ndarray | None = None  # [K, D, 2|3] dense landmarks (MediaPipe's 478), crop pixels (+ depth)
    dropped_by: dict[str, int] = field(default_factory=dict)  # selected frames left out, by reason
    faces_max: int = 1  # most faces detected on one keyframe
    several_faces: int = 0  # keyframes with more than one face
    cuts: list[int] = field(default_factory=list)  # frame index of the first keyframe after each cut
    still: bool = False  # a single image (a source), not a clip
    frame_hw: tuple[int, int] = (0, 0)  # the source frames' size (0: unknown)
    matting: str = "none"
    notes: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def dropped(self) -> int:
        return int(sum(self.dropped_by.values()))

    def decoded(self, k: int) -> np.ndarray:
        from PIL import Image

        with Image.open(io.BytesIO(self.images[k])) as img:
            return np.asarray(img.convert("RGB"))

    def landmark_arrays(self) -> dict[str, np.ndarray]:
        """What tracking needs (no images): shipped between the Ray stages as an .npz."""
        dense = self.dense if self.dense is not None else np.zeros((len(self.frame_ids), 0, 3), np.float32)
        return {"frame_ids": self.frame_ids, "landmarks": self.landmarks, "crop_boxes": self.crop_boxes,
                "dense": dense.astype(np.float32), "size": np.asarray(self.size), "still": np.asarray(self.still),
                "frame_hw": np.asarray(self.frame_hw, np.int64)}

    @classmethod
    def from_landmark_arrays(cls, clip_id: str, arrays: dict[str, np.ndarray], **row) -> CroppedClip:
        dense = arrays["dense"] if arrays["dense"].shape[1] else None
        return cls(clip_id=clip_id, frame_ids=arrays["frame_ids"], images=[], landmarks=arrays["landmarks"],
                   crop_boxes=arrays["crop_boxes"], size=int(arrays["size"]), image_format="", dense=dense,
                   still=bool(arrays["still"]), frame_hw=tuple(int(v) for v in arrays["frame_hw"]), **row)

    def inside_frame(self, points: np.ndarray) -> np.ndarray:
        """[K, N] bool: which of the crop-pixel points [K, N, 2+] lie inside the source frame (the
        rest are in the crop's black padding, where a detector can only guess)."""
        if not all(self.frame_hw):
            return np.ones(points.shape[:2], bool)
        xy = from_crop(points[..., :2], self.crop_boxes, self.size)
        h, w = self.frame_hw
        return (xy[..., 0] >= 0) & (xy[..., 0] < w) & (xy[..., 1] >= 0) & (xy[..., 1] < h)


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


def _summary_notes(clip: CroppedClip, shot_ranges: list[tuple[int, int]]) -> list[str]:
    notes = []
    if clip.several_faces:
        notes.append(f"several faces on {clip.several_faces} keyframes (up to {clip.faces_max}): followed the "
                     "largest, then most central, then highest-scoring face")
    if clip.cuts:
        kept = [f"{a}-{b}" for a, b in shot_ranges]
        notes.append(f"cut before frames {clip.cuts}: shots {', '.join(kept)}; only the shot with the most good "
                     "frames is kept (no pair mixes shots)")
    if clip.dropped_by:
        notes.append("frames left out: " + ", ".join(f"{k} {v}" for k, v in sorted(clip.dropped_by.items())))
    return notes


def crop_clip(clip_id: str, source: FrameSource, detector: FaceDetector, landmarker: LandmarkDetector,
              config: PreprocessConfig, matting: Matting | None = None, still: bool = False) -> CroppedClip:
    """Faces on keyframes, cuts, smoothed crops of the kept frames and their checked landmarks.
    ``still``: a single image (no length minimum, no cuts). Raises ClipSkipped when the clip is too
    short, shows no face, or has too few good frames."""
    t0 = time.perf_counter()
    sampling, crop_cfg, det_cfg, presence = config.sampling, config.crop, config.detection, config.presence
    try:
        scan = scan_keyframes(source.keyframes(crop_cfg.keyframe_interval), detector, det_cfg)
    except DecodeError as exc:
        raise ClipSkipped(str(exc)) from exc
    count = int(getattr(source, "frame_count", scan.count)) if scan.count else 0
    min_frames = 1 if still else sampling.min_frames
    if count == 0:
        raise ClipSkipped(f"{clip_id}: no frames decoded")
    if count < min_frames:
        hint = " (single images directly in the input folder are used as stills)" if count == 1 else ""
        raise ClipSkipped(f"{clip_id}: too short: {count} frames < sampling.min_frames {min_frames}{hint}")
    if not scan.found.any():
        raise ClipSkipped(f"{clip_id}: no face found by detector '{detector.name}' on any keyframe")
    cuts = [] if still else find_cuts(scan, presence)
    shot_ranges = shots(scan, cuts, count)
    face_boxes = np.full((count, 4), np.nan)
    crop_boxes = np.full((count, 3), np.nan)
    shot_of = np.full(count, -1)
    for s, (first, last) in enumerate(shot_ranges):
        last = min(last, count - 1)
        boxes = shot_boxes(scan, first, last)
        if boxes is None:  # a shot without any detected face
            shot_of[first:last + 1] = -2
            continue
        head = face_to_head_box(boxes, det_cfg.head_widen, det_cfg.head_raise)
        face_boxes[first:last + 1] = boxes
        crop_boxes[first:last + 1] = square_crop_box(smooth_boxes(head, crop_cfg.smooth_sigma_frames), crop_cfg.scale)
        shot_of[first:last + 1] = s
    keep = select_frames(count, sampling.max_frames)
    dropped: Counter[str] = Counter()
    dropped["cut"] += sum(int(shot_of[i] == -1) for i in keep)  # between the keyframes around a cut
    dropped["no_face"] += sum(int(shot_of[i] == -2) for i in keep)
    todo = [int(i) for i in keep if shot_of[i] >= 0]
    t1 = time.perf_counter()
    crops, points, kept, seen = [], [], [], set()
    frame_hw = (0, 0)
    # landmark detectors need resolution: small output crops are searched on a larger one
    search = max(crop_cfg.size, LANDMARK_SEARCH_SIZE)
    for index, frame in source.read(todo):  # frames lost to a decoding error are noted by the source
        seen.add(int(index))
        frame_hw = tuple(int(v) for v in frame.shape[:2])
        crop = crop_image(frame, crop_boxes[index], crop_cfg.size)
        big = crop if search == crop_cfg.size else crop_image(frame, crop_boxes[index], search)
        face_in_crop = to_crop(face_boxes[index].reshape(2, 2), crop_boxes[index], search).reshape(4)
        lmk = landmarker.detect(big, CropInfo(int(index), crop_boxes[index], search, face_in_crop))
        if lmk is None:
            dropped["no_landmarks"] += 1
            continue
        reason = frame_check(from_crop(lmk[:68, :2], crop_boxes[index], search), face_boxes[index],
                             frame.shape[:2], presence)
        lmk = lmk * (crop_cfg.size / search)
        if reason is not None:
            dropped[reason] += 1
            continue
        crops.append(crop)
        points.append(lmk)
        kept.append(int(index))
    dropped["unreadable"] += len(todo) - len(seen)
    if kept and len(shot_ranges) > 1:  # keep one shot: the one with the most good frames
        per_shot = Counter(int(shot_of[i]) for i in kept)
        best = min(per_shot, key=lambda s: (-per_shot[s], s))
        mask = [int(shot_of[i]) == best for i in kept]
        dropped["other_shot"] += len(kept) - sum(mask)
        crops = [c for c, m in zip(crops, mask) if m]
        points = [p for p, m in zip(points, mask) if m]
        kept = [i for i, m in zip(kept, mask) if m]
    dropped_by = {k: int(v) for k, v in sorted(dropped.items()) if v}
    if len(kept) < min_frames:
        why = ", ".join(f"{k} {v}" for k, v in dropped_by.items()) or "none"
        raise ClipSkipped(f"{clip_id}: only {len(kept)} of {len(keep)} selected frames show a usable face "
                          f"(< sampling.min_frames {min_frames}; left out: {why})")
    t2 = time.perf_counter()
    stack = np.stack(crops)
    matting_name = "none"
    if matting is not None:
        stack = composite(stack, matting.alpha(stack))
        matting_name = matting.name
    fmt = sampling.image_format
    images = [encode_image(c, fmt, sampling.jpeg_quality) for c in stack]
    t3 = time.perf_counter()
    pts = np.stack(points).astype(np.float32)
    clip = CroppedClip(
        clip_id=clip_id, frame_ids=np.asarray(kept, np.int64), images=images, landmarks=pts[:, :70, :2],
        crop_boxes=crop_boxes[kept].astype(np.float32), size=crop_cfg.size, image_format=fmt, frames_total=count,
        fps=float(getattr(source, "output_fps", source.fps)), dense=pts[:, 70:] if landmarker.dense_points else None,
        dropped_by=dropped_by, faces_max=int(scan.faces.max()), several_faces=int((scan.faces > 1).sum()),
        cuts=[int(scan.indices[j]) for j in cuts], still=still, frame_hw=frame_hw, matting=matting_name,
        seconds={"detect": t1 - t0, "crop_landmarks": t2 - t1, "matting_encode": t3 - t2},
    )
    clip.notes = list(source.notes) + _summary_notes(clip, shot_ranges)
    return clip


class TrackerModels:
    """The head model for tracking and what is built from it once per process: the landmark-only
    FLAME for the 70 points, and (when clips carry MediaPipe's dense points) the dense embedding
    and its landmark FLAME (preprocessing.mediapipe_embedding)."""

    def __init__(self, flame: FlameModel, flame_path: str | None = None, embedding_path: str | None = None) -> None:
        self.flame = flame
        self.flame_path, self.embedding_path = flame_path, embedding_path
        self._plain: LandmarkFlame | None = None
        self._dense: LandmarkFlame | None = None
        self.embedding = None
        self.embedding_note = ""

    def plain(self) -> LandmarkFlame:
        if self._plain is None:
            self._plain = LandmarkFlame(self.flame)
        return self._plain

    def dense(self) -> LandmarkFlame | None:
        """The landmark FLAME with the dense embedding, or None when this head has none."""
        if self._dense is None and not self.embedding_note:
            from .mediapipe_embedding import embedding_for

            self.embedding, self.embedding_note = embedding_for(self.flame_path, self.embedding_path)
            if self.embedding is not None:
                self._dense = LandmarkFlame(self.flame, self.embedding)
        return self._dense


@dataclass
class TrackedClip:
    """A cropped clip after tracking: K' ≤ K frames (fit outliers dropped)."""

    keep: np.ndarray  # [K] bool: which of the clip's frames are kept
    frame_ids: np.ndarray  # [K'] kept frame ids
    track: TrackResult  # K' frames
    landmarks: np.ndarray  # [K', 70, 2] detected
    crop_boxes: np.ndarray  # [K', 3]
    dropped_by: dict[str, int]  # the clip's counts plus ``residual``
    residual_px: float  # median over frames, crop pixels
    residual_px_512: float
    truth: dict[str, float] | None
    notes: list[str]
    seconds: float


def _subset(track: TrackResult, keep: np.ndarray) -> TrackResult:
    per_frame = {"expression", "jaw", "eyes", "transform_matrix", "bbox", "landmarks", "residual_px"}
    values = {f.name: getattr(track, f.name) for f in dataclasses.fields(track)}
    return TrackResult(**{k: (v[keep] if k in per_frame else v) for k, v in values.items()})


def track_clip(clip: CroppedClip, models: TrackerModels | FlameModel, config: PreprocessConfig, focal: float,
               device: torch.device | str | None = None, truth: ClipGroundTruth | None = None) -> TrackedClip:
    """FLAME + camera for the kept frames of a cropped clip (one shared shape), with MediaPipe's
    dense points when the clip has them and the head an embedding; then the frames the fit cannot
    explain (``presence.residual_*``) are dropped. ``truth`` (generated clips, indexed like the
    decoded frames): accuracy of the kept frames. Raises ClipSkipped when too few frames remain."""
    t0 = time.perf_counter()
    models = models if isinstance(models, TrackerModels) else TrackerModels(models)
    notes: list[str] = []
    dense, lmk_flame = None, models.plain()
    if clip.dense is not None and clip.dense.shape[1]:
        dense_flame = models.dense()
        if dense_flame is not None:
            lmk_flame, dense = dense_flame, clip.dense[:, models.embedding.landmark_indices]
        notes.append(models.embedding_note)
    # points in the crop's black padding (outside the frame) are not observed: not fitted
    valid = clip.inside_frame(clip.landmarks if dense is None else np.concatenate([clip.landmarks, dense[..., :2]], 1))
    track = track_landmarks(models.flame, clip.landmarks, valid, clip.size, focal, config.tracking, device,
                            lmk_flame, dense)
    scale = REFERENCE_SIZE / clip.size
    keep = ~residual_outliers(track.residual_px * scale, config.presence) if not clip.still else np.ones(1, bool)
    dropped_by = dict(clip.dropped_by)
    if not keep.all():
        dropped_by["residual"] = int((~keep).sum())
        notes.append(f"{int((~keep).sum())} frames left out: the fit cannot explain their landmarks")
    finite = np.isfinite(track.packed()).all(1) & np.isfinite(track.residual_px)
    if not finite.all():  # nothing non-finite is saved (or trained on)
        dropped_by["non_finite"] = int((keep & ~finite).sum())
        keep = keep & finite
    if not keep.all():
        track = _subset(track, keep)
    min_frames = 1 if clip.still else config.sampling.min_frames
    if track.num_frames < min_frames:
        raise ClipSkipped(f"{clip.clip_id}: only {track.num_frames} frames fit (< sampling.min_frames {min_frames}; "
                          f"left out: {', '.join(f'{k} {v}' for k, v in sorted(dropped_by.items()))})")
    frame_ids = clip.frame_ids[keep]
    residual = float(np.median(track.residual_px))
    result_truth = None
    if truth is not None:
        from .evaluation import compare_with_truth

        step = max(1, round(truth.fps / clip.fps)) if clip.fps else 1
        result_truth = compare_with_truth(track, subsample_truth(truth, step), frame_ids, clip.crop_boxes[keep],
                                          models.flame)
    return TrackedClip(keep=keep, frame_ids=frame_ids, track=track, landmarks=clip.landmarks[keep],
                       crop_boxes=clip.crop_boxes[keep], dropped_by=dropped_by, residual_px=residual,
                       residual_px_512=residual * scale, truth=result_truth, notes=notes,
                       seconds=time.perf_counter() - t0)


@dataclass
class ImageTrack:
    crop: np.ndarray  # size × size × 3 uint8
    crop_box: np.ndarray  # (x0, y0, side) in image pixels
    landmarks: np.ndarray  # [70, 2] detected, crop pixels
    track: TrackResult  # one frame
    notes: list[str] = field(default_factory=list)


def track_image(image: np.ndarray, flame: FlameModel | TrackerModels, detector: FaceDetector,
                landmarker: LandmarkDetector, config: PreprocessConfig, focal: float,
                device: torch.device | str | None = None) -> ImageTrack:
    """The single-image path (a source photo or one driving frame): the clip path on one frame."""
    from .video_io import ArraySource

    clip = crop_clip("image", ArraySource(image[None]), detector, landmarker, config, still=True)
    tracked = track_clip(clip, flame, config, focal, device)
    box = clip.crop_boxes[0].astype(np.float64)
    return ImageTrack(crop=crop_image(image, box, config.crop.size), crop_box=box, landmarks=clip.landmarks[0],
                      track=tracked.track, notes=clip.notes + tracked.notes)

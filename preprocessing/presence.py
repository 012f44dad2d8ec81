"""Which frames of a clip show one usable face, and where the clip changes shot or person.

- **Keyframe scan** (:func:`scan_keyframes`): every detection on each keyframe, the face kept by
  :func:`preprocessing.detection.choose_face` (following the previous choice), and colour
  signatures of the whole frame and of the kept face.
- **Cuts** (:func:`find_cuts`): between consecutive keyframes, a jump of the frame's or the face's
  colour histogram (Hellinger distance) or of the face box. The clip is split into shots at the
  cuts; the frames between the two keyframes around a cut belong to neither (where the cut lies
  is not known), and only the shot with the most good frames is kept, so no pair mixes people.
- **Per-frame checks** (:func:`frame_check`): landmarks mostly outside the frame (in the crop's
  black padding), or whose box does not overlap the face that was detected, drop the frame.

Every dropped frame is counted by reason (``frames_dropped_by`` in the manifest).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from PIL import Image

from .config import DetectionConfig, PresenceConfig
from .crop import landmark_box
from .detection import FaceDetector, box_iou, choose_face

HIST_BINS = 8  # per RGB channel of a joint histogram (512 bins)
_THUMB = 64  # frames are reduced to this side before their histogram (speed; colours, not detail)


def colour_histogram(image: np.ndarray) -> np.ndarray:
    """Normalised joint RGB histogram [HIST_BINS³] of an H×W×3 uint8 image."""
    if image.size == 0:
        return np.full(HIST_BINS ** 3, 1.0 / HIST_BINS ** 3)
    h, w = image.shape[:2]
    if max(h, w) > _THUMB:
        s = _THUMB / max(h, w)
        image = np.asarray(Image.fromarray(image).resize((max(1, round(w * s)), max(1, round(h * s))), Image.Resampling.BILINEAR))
    q = (image.reshape(-1, 3).astype(np.int64) * HIST_BINS) // 256
    counts = np.bincount((q[:, 0] * HIST_BINS + q[:, 1]) * HIST_BINS + q[:, 2], minlength=HIST_BINS ** 3)
    return counts / max(1, counts.sum())


def hellinger(a: np.ndarray, b: np.ndarray) -> float:
    """Hellinger distance of two normalised histograms: 0 same, 1 disjoint."""
    return float(np.sqrt(max(0.0, 1.0 - np.sum(np.sqrt(a * b)))))


@dataclass
class KeyframeScan:
    """Detections on a clip's keyframes (M of them, in order; the clip's last frame last)."""

    count: int  # frames in the clip
    frame_hw: tuple[int, int]
    indices: np.ndarray  # [M] frame indices
    boxes: np.ndarray  # [M, 4] kept face box, NaN where no face was found
    faces: np.ndarray  # [M] number of faces detected
    frame_hist: np.ndarray  # [M, B]
    face_hist: np.ndarray  # [M, B], NaN where no face

    @property
    def found(self) -> np.ndarray:
        return ~np.isnan(self.boxes[:, 0])


def scan_keyframes(keyframes: Iterable[tuple[int, np.ndarray]], detector: FaceDetector,
                   config: DetectionConfig) -> KeyframeScan:
    """Run ``detector`` on (index, frame) keyframes and keep one face per keyframe."""
    indices, boxes, faces, frame_hist, face_hist = [], [], [], [], []
    previous = None
    hw = (0, 0)
    for index, frame in keyframes:
        hw = frame.shape[:2]
        found, scores = detector.detect_all(frame, index)
        pick = choose_face(found, scores, hw, config.size_tie, previous)
        indices.append(int(index))
        faces.append(len(found))
        frame_hist.append(colour_histogram(frame))
        if pick is None:
            boxes.append(np.full(4, np.nan))
            face_hist.append(np.full(HIST_BINS ** 3, np.nan))
            continue
        box = np.asarray(found[pick], np.float64)
        previous = box
        boxes.append(box)
        x1, y1, x2, y2 = (int(round(v)) for v in box)
        face_hist.append(colour_histogram(frame[max(y1, 0):max(y2, 0), max(x1, 0):max(x2, 0)]))
    m = len(indices)
    bins = HIST_BINS ** 3
    return KeyframeScan(
        count=indices[-1] + 1 if indices else 0, frame_hw=tuple(hw),
        indices=np.asarray(indices, np.int64), boxes=np.asarray(boxes, np.float64).reshape(m, 4),
        faces=np.asarray(faces, np.int64), frame_hist=np.asarray(frame_hist).reshape(m, bins),
        face_hist=np.asarray(face_hist).reshape(m, bins),
    )


def find_cuts(scan: KeyframeScan, config: PresenceConfig) -> list[int]:
    """Positions j (into the keyframes) with a cut between keyframe j-1 and keyframe j."""
    cuts = []
    n = len(scan.indices)
    # frames compared only where both keyframes show a face: a face leaving the frame is no cut
    frame_d = np.array([hellinger(scan.frame_hist[j - 1], scan.frame_hist[j]) if scan.found[j - 1] and scan.found[j]
                        else 0.0 for j in range(1, n)])
    found = np.flatnonzero(scan.found)
    face_d = np.array([hellinger(scan.face_hist[a], scan.face_hist[b]) for a, b in zip(found[:-1], found[1:])])
    both = frame_d[scan.found[1:] & scan.found[:-1]] if n > 1 else frame_d
    frame_limit = max(config.cut_frame_distance, config.cut_relative * float(np.median(both))) if len(both) else 1.0
    face_limit = max(config.cut_face_distance, config.cut_relative * float(np.median(face_d))) if len(face_d) else 1.0
    last_face = None  # the last keyframe with a face, so a missed detection does not hide a jump
    for j in range(1, n):
        if frame_d[j - 1] > frame_limit:
            cuts.append(j)
            last_face = j if scan.found[j] else None
            continue
        if scan.found[j]:
            if last_face is not None:
                a, b = scan.boxes[last_face], scan.boxes[j]
                size = np.sqrt(max((a[2] - a[0]) * (a[3] - a[1]), 1e-6))
                jump = np.linalg.norm((a[:2] + a[2:]) / 2 - (b[:2] + b[2:]) / 2) / size
                ratio = np.sqrt(((b[2] - b[0]) * (b[3] - b[1])) / max((a[2] - a[0]) * (a[3] - a[1]), 1e-6))
                # the allowed jump grows with the keyframes between (a face moving across frames)
                gap = j - last_face
                if (jump > config.cut_box_jump * gap or not 1 / (1.5 ** gap) < ratio < 1.5 ** gap
                        or hellinger(scan.face_hist[last_face], scan.face_hist[j]) > face_limit):
                    cuts.append(j)
            last_face = j
    return cuts


def shots(scan: KeyframeScan, cuts: list[int], count: int | None = None) -> list[tuple[int, int]]:
    """Frame ranges [first, last] (inclusive) of the shots between cuts of a clip of ``count``
    frames (default: up to the last keyframe); the frames strictly between the two keyframes
    around a cut belong to no shot."""
    count = scan.count if count is None else count
    starts = [0, *cuts]
    ends = [*cuts, len(scan.indices)]
    out = []
    for s, e in zip(starts, ends):
        first = 0 if s == 0 else int(scan.indices[s])
        last = count - 1 if e == len(scan.indices) else int(scan.indices[e - 1])
        out.append((first, last))
    return out


def shot_boxes(scan: KeyframeScan, first: int, last: int) -> np.ndarray | None:
    """Face boxes [last-first+1, 4] for the frames of one shot, linear between its keyframes with
    a face and held before the first and after the last; None when none of them has a face."""
    inside = (scan.indices >= first) & (scan.indices <= last) & scan.found
    if not inside.any():
        return None
    idx = scan.indices[inside].astype(np.float64)
    vals = scan.boxes[inside]
    frames = np.arange(first, last + 1, dtype=np.float64)
    return np.stack([np.interp(frames, idx, vals[:, c]) for c in range(4)], -1)


def visible_fraction(points: np.ndarray, frame_hw: tuple[int, int]) -> float:
    """Share of points [N, 2] (frame pixels) inside an H×W frame."""
    h, w = frame_hw
    inside = (points[:, 0] >= 0) & (points[:, 0] < w) & (points[:, 1] >= 0) & (points[:, 1] < h)
    return float(inside.mean())


def frame_check(points_frame: np.ndarray, face_box: np.ndarray, frame_hw: tuple[int, int],
                config: PresenceConfig) -> str | None:
    """Why the landmarks [68+, 2] (frame pixels) of one frame are not usable, or None: ``out_of_frame``
    (fewer than ``min_visible`` of the 68 inside the frame) or ``inconsistent`` (their box overlaps
    the detected face box [4] less than ``min_box_overlap``: another face, or none)."""
    p68 = points_frame[:68]
    if not np.isfinite(p68).all():
        return "inconsistent"
    if visible_fraction(p68, frame_hw) < config.min_visible:
        return "out_of_frame"
    if box_iou(landmark_box(p68), face_box) < config.min_box_overlap:
        return "inconsistent"
    return None


def residual_outliers(residual_px_512: np.ndarray, config: PresenceConfig) -> np.ndarray:
    """[K] bool: frames whose fit residual (px at 512²) is far above the clip's (the fit cannot
    explain their landmarks)."""
    residual = np.asarray(residual_px_512, np.float64)
    limit = max(config.residual_floor_px, config.residual_factor * float(np.median(residual)))
    return ~(residual <= limit)

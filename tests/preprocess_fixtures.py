"""Tiny generated inputs for the preprocessing tests: ground-truth clips of the stand-in FLAME head
(sidecar format), frames with the landmarks drawn, and video files written with PyAV."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch

from model.flame import FlameModel
from model.geometry import euler_to_matrix, look_at_transform, project_points
from preprocessing.sample_format import encode_image
from preprocessing.sidecar import ClipGroundTruth


def make_truth(flame: FlameModel, num_frames: int, height: int = 256, width: int = 256, seed: int = 0,
               focal: float = 12.0, distance: float = 9.0, max_yaw_deg: float = 25.0) -> ClipGroundTruth:
    """A smooth random clip: one shape, moving expression/jaw/eyes, head rotation and translation,
    filmed by a fixed full-frame camera (focal in NDC of the full frame)."""
    rng = np.random.default_rng(seed)
    t = np.linspace(0.0, 1.0, num_frames)[:, None]
    wave = lambda n, amp: (amp * np.sin(2 * np.pi * (rng.uniform(0.3, 1.2, n) * t + rng.uniform(0, 1, n)))).astype(np.float32)
    shape = (rng.normal(0, 0.6, 300) * (np.arange(300) < 50)).astype(np.float32)
    expression = np.zeros((num_frames, 100), np.float32)
    expression[:, :10] = wave(10, 1.0)
    expression[:, 10:30] = wave(20, 0.3)
    jaw = np.zeros((num_frames, 3), np.float32)
    jaw[:, 0] = 0.12 + wave(1, 0.1)[:, 0]
    eyes = np.concatenate([wave(2, 0.15), np.zeros((num_frames, 1), np.float32)] * 2, 1)[:, [0, 1, 2, 3, 4, 5]]
    eyes[:, 3:5] = eyes[:, 0:2]  # both eyes look the same way
    angles = np.radians(np.concatenate([wave(1, max_yaw_deg), wave(1, max_yaw_deg / 2), wave(1, max_yaw_deg / 3)], 1))
    rot = euler_to_matrix(*torch.from_numpy(angles).float().unbind(-1))
    shift = torch.from_numpy(np.concatenate([wave(2, 0.25), np.zeros((num_frames, 1), np.float32)], 1))
    transform = look_at_transform(distance, rot, shift)
    pose = np.concatenate([np.zeros((num_frames, 3), np.float32), jaw], 1)
    with torch.no_grad():
        out = flame(torch.from_numpy(shape)[None].expand(num_frames, -1), torch.from_numpy(expression),
                    torch.from_numpy(pose), torch.from_numpy(eyes))
        landmarks = project_points(out.landmarks, transform, focal, width, height)
    return ClipGroundTruth(shape=shape, expression=expression, pose=pose, eyes=eyes,
                           transform_matrix=transform.numpy().astype(np.float32), focal=float(focal),
                           landmarks=landmarks.numpy().astype(np.float32), image_size=(height, width), fps=25.0)


def draw_frames(truth: ClipGroundTruth) -> np.ndarray:
    """[K, H, W, 3] uint8: a grey background, a skin ellipse around the landmarks, landmark dots."""
    h, w = truth.image_size
    yy, xx = np.mgrid[0:h, 0:w] + 0.5
    frames = np.full((truth.num_frames, h, w, 3), 60, np.uint8)
    for k, pts in enumerate(truth.landmarks):
        c = pts[:68].mean(0)
        r = (pts[:68].max(0) - pts[:68].min(0)) * 0.6
        inside = ((xx - c[0]) / r[0]) ** 2 + ((yy - c[1]) / r[1]) ** 2 < 1
        frames[k][inside] = (200, 160, 130)
        for x, y in pts.astype(int):
            frames[k, max(y - 1, 0):y + 1, max(x - 1, 0):x + 1] = (40, 20, 20)
    return frames


def write_video(path: str | Path, frames: np.ndarray, fps: int = 25, codec: str = "libx264") -> Path:
    """Write [K, H, W, 3] uint8 frames with PyAV (yuv420p; H, W even)."""
    import av

    path = Path(path)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "18", "preset": "ultrafast"}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def write_gagatrack(root: Path, frames_per_video: dict[str, int], payload: bytes | None = None, size: int = 32) -> dict:
    """A tiny GAGAvatar_track output: ``img_lmdb`` of JPEG crops + ``optim.pkl``; expcode[0] = frame id."""
    import lmdb

    records = {}
    env = lmdb.open(str(root / "img_lmdb"), map_size=1 << 24)
    with env.begin(write=True) as txn:
        for video, n in frames_per_video.items():
            for f in range(n):
                key = f"{video}_{f}"
                img = encode_image(np.full((size, size, 3), f * 10 % 255, np.uint8)) if payload is None else payload
                txn.put(key.encode(), img)
                records[key] = {"shapecode": np.full(300, 0.1, np.float32), "expcode": np.full(100, f, np.float32),
                                "posecode": np.zeros(6, np.float32), "eyecode": np.zeros(6, np.float32),
                                "transform_matrix": np.eye(3, 4, dtype=np.float32), "bbox": np.array([0.1, 0.1, 0.9, 0.9], np.float32)}
    env.close()
    (root / "optim.pkl").write_bytes(pickle.dumps(records))
    return records


def shifted_clip(frames: np.ndarray, truth: ClipGroundTruth, shift_x: np.ndarray, fill: int = 0
                 ) -> tuple[np.ndarray, ClipGroundTruth]:
    """The clip with frame k's content moved right by shift_x[k] pixels (what leaves is gone, what
    enters is ``fill``): a camera panning until the head has left the frame. Landmarks move along."""
    from dataclasses import replace

    out = np.full_like(frames, fill)
    w = frames.shape[2]
    for k, s in enumerate(np.asarray(shift_x, int)):
        if s < w:
            out[k, :, s:] = frames[k, :, :w - s]
    landmarks = truth.landmarks.copy()
    landmarks[..., 0] += np.asarray(shift_x, np.float32)[:, None]
    return out, replace(truth, landmarks=landmarks)


def concatenated_clip(first: tuple[np.ndarray, ClipGroundTruth], second: tuple[np.ndarray, ClipGroundTruth]
                      ) -> tuple[np.ndarray, ClipGroundTruth]:
    """Two clips one after the other (a cut from one person to another), ground truth joined."""
    from dataclasses import replace

    (fa, ta), (fb, tb) = first, second
    joined = {name: np.concatenate([getattr(ta, name), getattr(tb, name)])
              for name in ("expression", "pose", "eyes", "transform_matrix", "landmarks")}
    return np.concatenate([fa, fb]), replace(ta, **joined)

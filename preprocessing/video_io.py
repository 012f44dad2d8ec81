"""Frame sources: a video file (PyAV) or a folder of images (VFHQ ships frames), read from bytes so
the caller decides where they come from (local disk, S3). Frames are H×W×3 uint8 RGB, indexed
after the frame-rate drop: above 50 fps every other frame is dropped, as GAGAvatar_track does.

A source is read twice (boxes on keyframes first, then the kept frames, one at a time), so nothing
holds a whole long video in memory; frame folders load only the images they need.
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable, Iterator, Sequence
from typing import Protocol

import numpy as np
from PIL import Image

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
HIGH_FPS = 50.0  # above this the rate is halved (GAGAvatar_track)


class DecodeError(ValueError):
    """The input holds no decodable frames (empty, truncated or not a video/image)."""


class FrameSource(Protocol):
    fps: float
    notes: list[str]

    def frames(self) -> Iterator[tuple[int, np.ndarray]]:
        """Every frame in order, as (index, frame)."""

    def keyframes(self, interval: int) -> Iterator[tuple[int, np.ndarray]]:
        """Every ``interval``-th frame from the first, then the last frame (always)."""

    def read(self, indices: Sequence[int]) -> Iterator[tuple[int, np.ndarray]]:
        """The frames with these indices, in order, one at a time."""


class VideoSource:
    """A video file's bytes, decoded with PyAV. Decoding errors after some frames end the clip
    there (a note says so); a file that cannot be opened raises :class:`DecodeError`."""

    def __init__(self, data: bytes, name: str = "video") -> None:
        import av

        self._av = av
        self.name = name
        self.data = data
        self.notes: list[str] = []
        if not data:
            raise DecodeError(f"{name}: empty file (0 bytes)")
        try:
            with av.open(io.BytesIO(data)) as container:
                if not container.streams.video:
                    raise DecodeError(f"{name}: no video stream")
                stream = container.streams.video[0]
                rate = stream.average_rate or stream.guessed_rate or stream.base_rate
                self.fps = float(rate) if rate else 25.0
        except DecodeError:
            raise
        except Exception as exc:  # PyAV raises many FFmpeg error types; all mean "cannot read this"
            raise DecodeError(f"{name}: cannot open video ({type(exc).__name__}: {exc})") from exc
        self.step = 2 if self.fps > HIGH_FPS else 1
        if self.step == 2:
            self.notes.append(f"{self.fps:.1f} fps > {HIGH_FPS:.0f}: every other frame dropped")

    @property
    def output_fps(self) -> float:
        return self.fps / self.step

    def _decoded(self) -> Iterator[tuple[int, object]]:
        """(index, av.VideoFrame) after the rate drop; conversion to RGB is left to the caller."""
        av = self._av
        raw = -1
        index = 0
        try:
            with av.open(io.BytesIO(self.data)) as container:
                stream = container.streams.video[0]
                stream.thread_type = "AUTO"
                for frame in container.decode(stream):
                    raw += 1
                    if self.step == 2 and raw % 2 == 0:  # GAGAvatar_track keeps the odd frames
                        continue
                    yield index, frame
                    index += 1
        except Exception as exc:
            note = f"decoding stopped after {index} frames ({type(exc).__name__}: {exc})"
            if note not in self.notes:
                self.notes.append(note)
            if index == 0:
                raise DecodeError(f"{self.name}: {note}") from exc

    def frames(self) -> Iterator[tuple[int, np.ndarray]]:
        for index, frame in self._decoded():
            yield index, frame.to_ndarray(format="rgb24")

    def keyframes(self, interval: int) -> Iterator[tuple[int, np.ndarray]]:
        interval = max(1, int(interval))
        last = None
        for index, frame in self._decoded():
            if index % interval == 0:
                yield index, frame.to_ndarray(format="rgb24")
                last = None
            else:
                last = (index, frame)
        if last is not None:
            yield last[0], last[1].to_ndarray(format="rgb24")

    def read(self, indices: Sequence[int]) -> Iterator[tuple[int, np.ndarray]]:
        wanted = set(int(i) for i in indices)
        if not wanted:
            return
        last = max(wanted)
        for index, frame in self._decoded():
            if index in wanted:
                yield index, frame.to_ndarray(format="rgb24")
            if index >= last:
                break


def natural_key(name: str) -> list:
    """Sort key that orders frame_2 before frame_10."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def decode_image(data: bytes, name: str = "image") -> np.ndarray:
    if not data:
        raise DecodeError(f"{name}: empty file (0 bytes)")
    try:
        with Image.open(io.BytesIO(data)) as img:
            return np.asarray(img.convert("RGB"))
    except Exception as exc:
        raise DecodeError(f"{name}: cannot decode image ({type(exc).__name__}: {exc})") from exc


class FrameFolderSource:
    """One clip as a folder of images, sorted naturally by name. ``load(name) -> bytes`` reads one.
    An image that cannot be decoded is left out (a note names it; the clip keeps its other
    frames); ``unreadable`` lists the indices left out so far."""

    def __init__(self, names: Sequence[str], load: Callable[[str], bytes], fps: float = 25.0, name: str = "frames") -> None:
        self.names = sorted(names, key=natural_key)
        self.load = load
        self.fps = float(fps)
        self.name = name
        self.notes: list[str] = []
        self.unreadable: set[int] = set()
        if not self.names:
            raise DecodeError(f"{name}: folder has no images ({', '.join(IMAGE_EXTENSIONS)})")
        self.step = 2 if self.fps > HIGH_FPS else 1
        self.names = self.names[1::2] if self.step == 2 else self.names

    @property
    def output_fps(self) -> float:
        return self.fps / self.step

    @property
    def frame_count(self) -> int:
        return len(self.names)

    def _decode(self, i: int) -> np.ndarray | None:
        try:
            return decode_image(self.load(self.names[i]), self.names[i])
        except DecodeError as exc:
            if i not in self.unreadable:
                self.unreadable.add(i)
                self.notes.append(f"frame {i} left out: {exc}")
            return None

    def frames(self) -> Iterator[tuple[int, np.ndarray]]:
        return self.read(range(len(self.names)))

    def keyframes(self, interval: int) -> Iterator[tuple[int, np.ndarray]]:
        picks = list(range(0, len(self.names), max(1, int(interval))))
        if picks[-1] != len(self.names) - 1:
            picks.append(len(self.names) - 1)
        return self.read(picks)

    def read(self, indices: Sequence[int]) -> Iterator[tuple[int, np.ndarray]]:
        for i in sorted(int(i) for i in indices):
            frame = self._decode(i)
            if frame is not None:
                yield i, frame


class ArraySource:
    """Frames already in memory, [K, H, W, 3] uint8 (a photo: K = 1)."""

    def __init__(self, frames: np.ndarray | Sequence[np.ndarray], fps: float = 25.0) -> None:
        self._frames = list(frames)
        self.fps = float(fps)
        self.notes: list[str] = []

    @property
    def frame_count(self) -> int:
        return len(self._frames)

    def frames(self) -> Iterator[tuple[int, np.ndarray]]:
        return self.read(range(len(self._frames)))

    def keyframes(self, interval: int) -> Iterator[tuple[int, np.ndarray]]:
        picks = list(range(0, len(self._frames), max(1, int(interval))))
        if picks and picks[-1] != len(self._frames) - 1:
            picks.append(len(self._frames) - 1)
        return self.read(picks)

    def read(self, indices: Sequence[int]) -> Iterator[tuple[int, np.ndarray]]:
        for i in sorted(int(i) for i in indices):
            yield i, np.asarray(self._frames[i])

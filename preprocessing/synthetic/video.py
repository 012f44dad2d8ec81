"""Deterministic H.264 mp4 files from RGB frames, and decoding them back.

Byte-identical output for identical frames: the RGB → YUV 4:2:0 conversion is done here in
numpy (BT.601 limited range, the matrix decoders assume for untagged SD video), x264 runs on one
thread with fixed options (its multi-threaded modes make frame decisions depend on timing), and
the muxer is asked for bit-exact output (no library version strings, no creation time).
Encoders: PyAV's libx264 when its wheel has one, else imageio-ffmpeg's bundled ffmpeg binary.
"""

from __future__ import annotations

import subprocess
from fractions import Fraction
from pathlib import Path

import numpy as np

# x264 settings that make the bitstream a pure function of the input frames
_X264_PARAMS = "threads=1:lookahead-threads=1:sliced-threads=0:sync-lookahead=0"


def rgb_to_yuv420p(frames: np.ndarray) -> np.ndarray:
    """uint8 RGB [K,H,W,3] (H, W even) → planar I420 [K, H·3/2, W] uint8 (Y, then U, then V,
    each chroma plane H/2×W/2 stored as H/4 rows of W), BT.601 limited range."""
    k, h, w, _ = frames.shape
    if h % 2 or w % 2:
        raise ValueError(f"yuv420p needs even frame sizes, got {w}×{h}")
    rgb = frames.astype(np.float32)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    y = 16.0 + 0.256788 * r + 0.504129 * g + 0.097906 * b
    u = 128.0 - 0.148223 * r - 0.290993 * g + 0.439216 * b
    v = 128.0 + 0.439216 * r - 0.367788 * g - 0.071427 * b
    sub = lambda c: c.reshape(k, h // 2, 2, w // 2, 2).mean(axis=(2, 4))  # 2×2 box average
    to8 = lambda c: np.clip(np.floor(c + 0.5), 0, 255).astype(np.uint8)
    planes = [to8(y), to8(sub(u)).reshape(k, h // 4, w), to8(sub(v)).reshape(k, h // 4, w)]
    return np.concatenate(planes, axis=1)


def pyav_has_x264() -> bool:
    try:
        import av
    except ImportError:
        return False
    return "libx264" in av.codecs_available


def _encode_pyav(i420: np.ndarray, path: Path, fps: int, crf: int, preset: str) -> None:
    import av

    height, width = i420.shape[1] * 2 // 3, i420.shape[2]
    with av.open(str(path), mode="w", format="mp4", options={"fflags": "+bitexact"}) as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.time_base = Fraction(1, fps)
        stream.codec_context.thread_count = 1
        stream.codec_context.flags |= av.codec.context.Flags.bitexact
        stream.options = {"crf": str(crf), "preset": preset, "x264-params": _X264_PARAMS}
        for k, planes in enumerate(i420):
            frame = av.VideoFrame.from_ndarray(planes, format="yuv420p")
            frame.pts = k
            frame.time_base = Fraction(1, fps)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)


def _encode_ffmpeg(i420: np.ndarray, path: Path, fps: int, crf: int, preset: str) -> None:
    import imageio_ffmpeg

    height, width = i420.shape[1] * 2 // 3, i420.shape[2]
    cmd = [
        imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-loglevel", "error", "-nostdin",
        "-f", "rawvideo", "-pix_fmt", "yuv420p", "-s", f"{width}x{height}", "-r", str(fps), "-i", "-",
        "-c:v", "libx264", "-preset", preset, "-crf", str(crf), "-threads", "1",
        "-x264-params", _X264_PARAMS, "-pix_fmt", "yuv420p",
        "-fflags", "+bitexact", "-flags:v", "+bitexact", "-map_metadata", "-1", "-f", "mp4", str(path),
    ]
    proc = subprocess.run(cmd, input=np.ascontiguousarray(i420).tobytes(), capture_output=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"ffmpeg failed ({proc.returncode}): {proc.stderr.decode(errors='replace')[-2000:]}")


def write_video(frames: np.ndarray, path: str | Path, fps: int, crf: int = 18, preset: str = "medium",
                encoder: str = "auto") -> str:
    """Encode uint8 RGB frames [K,H,W,3] as an H.264 (yuv420p) mp4 at ``fps``.

    ``encoder``: "pyav", "ffmpeg" (imageio-ffmpeg's binary) or "auto" (PyAV when it has
    libx264). Returns the encoder used. Same frames + same encoder build → same bytes.
    """
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"expected uint8 frames [K,H,W,3], got {frames.dtype} {frames.shape}")
    if encoder == "auto":
        encoder = "pyav" if pyav_has_x264() else "ffmpeg"
    i420 = rgb_to_yuv420p(frames)
    path = Path(path)
    if encoder == "pyav":
        _encode_pyav(i420, path, fps, crf, preset)
    elif encoder == "ffmpeg":
        _encode_ffmpeg(i420, path, fps, crf, preset)
    else:
        raise ValueError(f"unknown encoder {encoder!r}; valid: auto, pyav, ffmpeg")
    return encoder


def read_video(path: str | Path, max_frames: int | None = None) -> np.ndarray:
    """Decode an mp4 with PyAV → uint8 RGB [K,H,W,3]; frame k is the k-th decoded frame."""
    import av

    out = []
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            out.append(frame.to_ndarray(format="rgb24"))
            if max_frames is not None and len(out) >= max_frames:
                break
    return np.stack(out)

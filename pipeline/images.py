"""Small image helpers for what people look at: training panels, the evaluation grid, the
reenactment sheets and videos. Images are H×W×3 uint8 unless said otherwise."""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
import torch


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """[3,H,W] float in [0, 1] → H×W×3 uint8."""
    return (image.detach().float().clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy()


def encode_png(image: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def resized(image: np.ndarray, size: int) -> np.ndarray:
    """A square image resized to size² (bicubic; unchanged when it already has that size)."""
    from PIL import Image

    image = np.asarray(image)
    if image.shape[:2] == (size, size):
        return image
    return np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.BICUBIC))


def side_by_side(images: Sequence[np.ndarray], tile: int) -> np.ndarray:
    """Images resized to tile² and put in one row: [tile, len·tile, 3]."""
    return np.concatenate([resized(i, tile) for i in images], axis=1)


def label_strip(width: int, labels: Sequence[str], height: int = 16) -> np.ndarray:
    """A white strip with one black label per equal-width column: [height, width, 3]."""
    from PIL import Image, ImageDraw

    strip = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(strip)
    for k, text in enumerate(labels):
        draw.text((k * width // max(len(labels), 1) + 4, 2), text, fill=(0, 0, 0))
    return np.asarray(strip)

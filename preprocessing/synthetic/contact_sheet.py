"""A PNG grid of a generated dataset: a few identities (rows) × a few frames of their first clip."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from .dataset import load_manifest
from .video import read_video


def _spread(n_total: int, n: int) -> list[int]:
    """n indices evenly spread over range(n_total), first and last included."""
    n = max(1, min(n, n_total))
    return sorted({round(i * (n_total - 1) / max(n - 1, 1)) for i in range(n)})


def make_contact_sheet(dataset_dir: str | Path, path: str | Path, identities: int = 4, frames: int = 5,
                       tile: int | None = None) -> Path:
    """Write a PNG of ``identities`` rows (spread over the identity list, train and test) ×
    ``frames`` frames spread over each row's first clip, labelled with clip id and frame index.

    ``tile``: side of each cell in pixels (default min(resolution, 192), which keeps the 4×5
    sheet of the default dataset well under 500 kB). Returns ``path``.
    """
    dataset_dir, path = Path(dataset_dir), Path(path)
    manifest = load_manifest(dataset_dir)
    n_ids = len(manifest["identities"])
    resolution = int(manifest["config"]["resolution"])
    tile = tile or min(resolution, 192)
    rows = []
    for ident in _spread(n_ids, identities):
        clip = next(c for c in manifest["clips"] if c["identity"] == ident and c["clip"] == 0)
        video = read_video(dataset_dir / clip["video"])
        picks = _spread(len(video), frames)
        cells = []
        for k in picks:
            cell = Image.fromarray(video[k]).resize((tile, tile), Image.Resampling.LANCZOS)
            draw = ImageDraw.Draw(cell)
            draw.text((4, 3), f"{clip['clip_id']} ({clip['split']}) f{k}", fill=(200, 200, 200))
            cells.append(np.asarray(cell))
        rows.append(np.concatenate(cells, axis=1))
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0))) for r in rows]
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.concatenate(rows, axis=0)).save(path, optimize=True)
    return path

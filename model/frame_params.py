"""Per-frame tracking parameters in the GAGAvatar tracker's convention (docs/released_model.md, 'Tracker convention'), and their
flat float32 layout inside WebDataset samples (``source.params.npy`` / ``target.params.npy``)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

# name → length, in storage order. transform_matrix is [R|T] (3×4, row-major), PyTorch3D row-vector
# convention with focal 12 NDC; bbox is the head box (x1, y1, x2, y2) on the crop, normalised to [0,1].
PARAM_LAYOUT: tuple[tuple[str, int], ...] = (
    ("shape", 300),
    ("expression", 100),
    ("pose", 6),  # global rotation (zero) + jaw, axis-angle
    ("eyes", 6),
    ("transform_matrix", 12),
    ("bbox", 4),
)
PARAM_SIZE = sum(n for _, n in PARAM_LAYOUT)  # 428
_SLICES = {}
_start = 0
for _name, _n in PARAM_LAYOUT:
    _SLICES[_name] = slice(_start, _start + _n)
    _start += _n


@dataclass
class FrameParams:
    """One tracked frame (numpy float32)."""

    shape: np.ndarray  # [300]
    expression: np.ndarray  # [100]
    pose: np.ndarray  # [6]
    eyes: np.ndarray  # [6]
    transform_matrix: np.ndarray  # [3,4]
    bbox: np.ndarray  # [4]

    def pack(self) -> np.ndarray:
        """→ flat float32 [PARAM_SIZE]."""
        out = np.zeros(PARAM_SIZE, np.float32)
        for name, n in PARAM_LAYOUT:
            value = np.asarray(getattr(self, name), np.float32).reshape(-1)
            if value.size != n:
                raise ValueError(f"FrameParams.{name}: expected {n} values, got {value.size}")
            out[_SLICES[name]] = value
        return out

    @classmethod
    def unpack(cls, flat: np.ndarray) -> FrameParams:
        flat = np.asarray(flat, np.float32).reshape(-1)
        if flat.size != PARAM_SIZE:
            raise ValueError(f"frame parameters: expected {PARAM_SIZE} values, got {flat.size}")
        values = {name: flat[_SLICES[name]].copy() for name, _ in PARAM_LAYOUT}
        values["transform_matrix"] = values["transform_matrix"].reshape(3, 4)
        return cls(**values)


def split_params(flat: torch.Tensor) -> dict[str, torch.Tensor]:
    """Batched torch view: [B, PARAM_SIZE] → dict of [B, n] tensors (transform_matrix [B,3,4])."""
    out = {name: flat[..., _SLICES[name]] for name, _ in PARAM_LAYOUT}
    out["transform_matrix"] = out["transform_matrix"].reshape(*flat.shape[:-1], 3, 4)
    return out

"""Optional background matting of crops. Without a model the background is kept (the manifest
says ``matting: none``); with one, crops are composited onto black as GAGAvatar's training data.

A model is a ``torch.export`` program (``.pt2``) or a TorchScript file (any other suffix), e.g. an
exported StyleMatte/MODNet, taking [N, 3, H, W] RGB in [0, 1] and returning the alpha matte
[N, 1, H, W] in [0, 1] (or a tuple/list whose first element is it). Loaded lazily so the package
imports without it.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Protocol

import numpy as np
import torch


class Matting(Protocol):
    name: str

    def alpha(self, crops: np.ndarray) -> np.ndarray:
        """[N, S, S, 3] uint8 → alpha [N, S, S] float32 in [0, 1]."""


class TorchMatting:
    def __init__(self, path: str | Path, device: torch.device | str = "cpu", batch_size: int = 8) -> None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"matting model {path} not found (preprocess.matting_model)")
        try:
            if path.suffix == ".pt2":
                self.model = torch.export.load(str(path)).module().to(device)
            else:
                with warnings.catch_warnings():  # TorchScript is deprecated in torch ≥ 2.10 but still loads
                    warnings.simplefilter("ignore", DeprecationWarning)
                    self.model = torch.jit.load(str(path), map_location=device).eval()
        except (RuntimeError, ValueError) as exc:
            raise ValueError(f"{path}: not a torch.export (.pt2) or TorchScript matting model ({exc})") from exc
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.name = path.name

    @torch.no_grad()
    def alpha(self, crops: np.ndarray) -> np.ndarray:
        out = []
        for start in range(0, len(crops), self.batch_size):
            x = torch.from_numpy(np.ascontiguousarray(crops[start:start + self.batch_size])).to(self.device)
            x = x.permute(0, 3, 1, 2).float() / 255.0
            a = self.model(x)
            if isinstance(a, (tuple, list)):
                a = a[0]
            if a.dim() != 4 or a.shape[1] != 1 or a.shape[-2:] != x.shape[-2:]:
                raise ValueError(f"matting model {self.name}: expected alpha [N,1,H,W], got {tuple(a.shape)}")
            out.append(a[:, 0].clamp(0, 1).float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros(crops.shape[:3], np.float32)


def load_matting(path: str | None, device: torch.device | str = "cpu") -> Matting | None:
    """The configured matting model, or None (keep the background)."""
    return TorchMatting(path, device) if path else None


def composite(crops: np.ndarray, alpha: np.ndarray, background: float = 0.0) -> np.ndarray:
    """[N, S, S, 3] uint8 over a flat background (0 = black) with alpha [N, S, S] → uint8."""
    out = crops.astype(np.float32) * alpha[..., None] + background * 255.0 * (1.0 - alpha[..., None])
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)

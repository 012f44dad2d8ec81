"""Gaussian rasterization: one function, several backends.

``render_gaussians`` is the only entry point the model uses. Backends live behind a small
registry and are imported only when chosen, so ``import model.rasterizer`` needs neither CUDA
nor gsplat:

- ``torch``: the pure-PyTorch reference (CPU and GPU, autograd backward);
- ``gsplat``: ``gsplat.rasterization`` (CUDA), the whole batch in one call;
- ``inria``: graphdeco's ``diff-gaussian-rasterization`` (CUDA) or GAGAvatar's 32-channel fork,
  one call per sample.

``auto`` picks gsplat for CUDA tensors when it imports, else inria when it imports and its
build has the right channel count, else torch. See docs/rasterizer.md.

Quaternions: by default (``RasterizerConfig.normalize_quats = False``) rotations are built from
the raw quaternion without normalising, as the released GAGAvatar rasterizer does; gsplat then
receives precomputed covariances built that way (``covariance_from_quat_scale``).
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Callable

import torch

from model.config import RasterizerConfig
from model.rasterizer.common import (
    CovarianceFromQuatScale,
    RenderOutput,
    SplatInputs,
    covariance_from_quat_scale,
    prepare_inputs,
    quat_scale_from_covariance,
)

__all__ = [
    "RenderOutput",
    "available_backends",
    "backend_names",
    "CovarianceFromQuatScale",
    "covariance_from_quat_scale",
    "quat_scale_from_covariance",
    "render_gaussians",
]

log = logging.getLogger(__name__)

RenderFn = Callable[[SplatInputs, RasterizerConfig], RenderOutput]


def _load_torch() -> RenderFn:
    from model.rasterizer import torch_backend

    return torch_backend.render


def _load_gsplat() -> RenderFn:
    from model.rasterizer import gsplat_backend

    return gsplat_backend.render


def _load_inria() -> RenderFn:
    from model.rasterizer import inria_backend

    return inria_backend.render


# name → loader; a loader imports its backend (and the backend's CUDA package) when called
_BACKENDS: dict[str, Callable[[], RenderFn]] = {
    "torch": _load_torch,
    "gsplat": _load_gsplat,
    "inria": _load_inria,
}
_logged: set[str] = set()


def backend_names() -> list[str]:
    """Every registered backend name, plus "auto"."""
    return ["auto", *sorted(_BACKENDS)]


def _gsplat_importable() -> bool:
    return importlib.util.find_spec("gsplat") is not None


def available_backends(device: torch.device | str = "cpu", channels: int = 3) -> list[str]:
    """Backends that can render ``channels`` features on ``device`` here (imports nothing heavy)."""
    names = ["torch"]
    if torch.device(device).type == "cuda":
        if _gsplat_importable():
            names.append("gsplat")
        from model.rasterizer.inria_backend import find_module

        if find_module(channels) is not None:
            names.append("inria")
    return names


def _resolve(name: str, inp: SplatInputs) -> str:
    if name not in _BACKENDS and name != "auto":
        raise ValueError(f"unknown rasterizer backend {name!r}; valid: {', '.join(backend_names())}")
    if name != "auto":
        return name
    avail = available_backends(inp.means.device, inp.channels)
    choice = "gsplat" if "gsplat" in avail else "inria" if "inria" in avail else "torch"
    if choice not in _logged:
        _logged.add(choice)
        log.info("rasterizer backend auto → %s (device %s, %d channels)", choice, inp.means.device, inp.channels)
    return choice


def render_gaussians(
    means: torch.Tensor,  # [B,N,3] world positions
    quats: torch.Tensor | None,  # [B,N,4] (w,x,y,z), not necessarily unit norm (see config.normalize_quats)
    scales: torch.Tensor | None,  # [B,N,3] linear standard deviations (not log)
    opacities: torch.Tensor,  # [B,N] or [B,N,1] in [0,1]
    features: torch.Tensor,  # [B,N,C] post-activation colours / features
    viewmats: torch.Tensor,  # [B,4,4] OpenCV world→camera (x right, y down, z forward)
    Ks: torch.Tensor,  # [B,3,3] pixel intrinsics; pixel (i,j)'s centre is (j+0.5, i+0.5)
    width: int,
    height: int,
    background: torch.Tensor | None = None,  # [C]; None: zeros
    covariances: torch.Tensor | None = None,  # [B,N,3,3] world; replaces quats and scales
    backend: str | None = None,  # "auto" | "torch" | "gsplat" | "inria"; None: config.backend
    config: RasterizerConfig | None = None,
) -> RenderOutput:
    """Splats B sets of N 3D Gaussians, each seen by its own camera, into [B,C,H,W] images.

    Rotations come from the raw quaternion (graphdeco's formula, no normalisation) unless
    ``config.normalize_quats``; ``covariances`` [B,N,3,3], when given, are used instead of
    quats and scales. ``cx = W/2, cy = H/2`` is the image centre. Returns a
    :class:`RenderOutput` (image [B,C,H,W], alpha [B,1,H,W], depth [B,1,H,W] or None, backend).
    Differentiable w.r.t. means, quats, scales, covariances, opacities and features.
    """
    config = config or RasterizerConfig()
    inp = prepare_inputs(
        means, quats, scales, opacities, features, viewmats, Ks, width, height, background, covariances
    )
    name = _resolve(backend if backend is not None else config.backend, inp)
    return _BACKENDS[name]()(inp, config)

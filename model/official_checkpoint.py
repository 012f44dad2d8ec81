"""Weights from elsewhere: the released ``GAGAvatar.pt`` and DINOv2 state dicts.

The released file (Lightning Fabric) holds ``{"model": state_dict, "meta_cfg": {...}}``; its
keys are the official module's (listed in ``tests/data/official_state_dict.txt``), which are ours,
plus the training-only ``percep_loss.*`` networks, which the network here does not own.
"""

from __future__ import annotations

import dataclasses
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from model.config import CameraConfig, ModelConfig, RasterizerConfig
from model.dinov2 import load_dinov2_state_dict
from model.gagavatar import GAGAvatar

IGNORED_PREFIXES = ("percep_loss.",)
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DDP / torch.compile wrappers


class CheckpointMismatch(RuntimeError):
    """A checkpoint whose keys or shapes do not fit the model; the message lists them."""


def _read(path_or_state: str | Path | Mapping[str, Any]) -> tuple[dict, dict]:
    """→ (state_dict, meta_cfg). Accepts a path, a ``{"model", "meta_cfg"}`` dict or a state dict.
    Files are read with ``weights_only=True``: a file that needs Python objects to be rebuilt is
    refused, never unpickled (docs/model.md says how to re-save such a file once)."""
    if isinstance(path_or_state, (str, Path)):
        try:
            obj = torch.load(path_or_state, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            raise CheckpointMismatch(
                f"{path_or_state}: holds Python objects beyond tensors and plain containers "
                f"({str(exc).splitlines()[0][:160]}); they are never unpickled — re-save the file as plain "
                "tensors once in an environment you trust (docs/model.md, 'Loading the released weights')"
            ) from exc
    else:
        obj = path_or_state
    if not isinstance(obj, Mapping):
        raise CheckpointMismatch(f"expected a state dict or {{'model': ..., 'meta_cfg': ...}}, got {type(obj).__name__}")
    meta = obj.get("meta_cfg") or {}
    state = obj["model"] if isinstance(obj.get("model"), Mapping) else obj
    if hasattr(state, "state_dict"):
        state = state.state_dict()
    out = {}
    for key, value in state.items():
        for prefix in _WRAPPER_PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix):]
        out[key] = value
    return out, dict(meta) if isinstance(meta, Mapping) else {}


def config_from_meta(meta_cfg: Mapping[str, Any], config: ModelConfig | None = None) -> ModelConfig:
    """``config`` (default: the released ModelConfig) with ``plane_size`` from
    ``meta_cfg["DATASET"]["POINT_PLANE_SIZE"]`` when the checkpoint records it."""
    config = config or ModelConfig()
    dataset = meta_cfg.get("DATASET") if isinstance(meta_cfg, Mapping) else None
    if isinstance(dataset, Mapping) and dataset.get("POINT_PLANE_SIZE") is not None:
        config = dataclasses.replace(config, plane_size=int(dataset["POINT_PLANE_SIZE"]))
    return config


def _mismatch_report(model: torch.nn.Module, state: Mapping[str, torch.Tensor]) -> str:
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(k for k in set(state) - set(own) if not k.startswith(IGNORED_PREFIXES))
    shapes = sorted(
        f"{k}: checkpoint {list(state[k].shape)} vs model {list(own[k].shape)}"
        for k in set(own) & set(state) if tuple(state[k].shape) != tuple(own[k].shape)
    )
    parts = []
    for title, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shapes)):
        if items:
            shown = "\n  ".join(items[:40]) + (f"\n  … and {len(items) - 40} more" if len(items) > 40 else "")
            parts.append(f"{len(items)} {title}:\n  {shown}")
    return "\n".join(parts)


def load_official(path_or_state: str | Path | Mapping[str, Any], model: GAGAvatar | None = None,
                  config: ModelConfig | None = None, camera: CameraConfig | None = None,
                  rasterizer: RasterizerConfig | None = None) -> GAGAvatar:
    """Load the released ``GAGAvatar.pt`` (or a dict in its layout) into ``model``, or into a new
    GAGAvatar built from ``config`` (default: the released architecture) with the checkpoint's
    plane size. Strict except for ``percep_loss.*``; raises :class:`CheckpointMismatch` naming
    every missing/unexpected key and shape mismatch. Returns the model."""
    state, meta = _read(path_or_state)
    if model is None:
        model = GAGAvatar(config_from_meta(meta, config), camera or CameraConfig(), rasterizer or RasterizerConfig())
    report = _mismatch_report(model, state)
    if report:
        raise CheckpointMismatch(f"checkpoint does not fit this GAGAvatar:\n{report}")
    own = model.state_dict()
    model.load_state_dict({k: v for k, v in state.items() if k in own}, strict=True)
    return model


def export_official_state_dict(model: GAGAvatar) -> dict[str, torch.Tensor]:
    """The model's weights in the released layout (= its state dict; no ``percep_loss.*``)."""
    return {k: v for k, v in model.state_dict().items()}


def save_official(model: GAGAvatar, path: str | Path, meta_cfg: Mapping[str, Any] | None = None) -> Path:
    """Write ``{"model": state_dict, "meta_cfg": ...}`` as the released file is laid out."""
    meta = dict(meta_cfg or {"DATASET": {"POINT_PLANE_SIZE": model.config.plane_size}, "MODEL": {"NAME": "GAGAvatar"}})
    path = Path(path)
    torch.save({"model": export_official_state_dict(model), "meta_cfg": meta}, path)
    return path


def load_dinov2_weights(model: GAGAvatar, path: str | Path) -> None:
    """Fill the backbone from a DINOv2 state dict file (official ``dinov2_vitb14`` or timm
    ``vit_base_patch14_dinov2`` layout); strict."""
    state = load_dinov2_state_dict(path)
    try:
        model.base_model.dino_model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointMismatch(f"{path}: not a DINOv2 state dict for this backbone:\n{exc}") from exc

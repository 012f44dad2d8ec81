"""Loading a trained model for inference (evaluation, reenactment, benchmarks), and the warnings
that say when its numbers cannot be compared with the paper's.

A checkpoint is either our checkpoint directory (pipeline.checkpoint: ``model.pt`` + ``config.yaml``
+ ``state.json``; local or ``s3://``) — the architecture, camera and FLAME come from its
``config.yaml`` — or the released ``GAGAvatar.pt`` (any other file), loaded into the architecture
of the given config (the ``paper`` preset) by :func:`model.official_checkpoint.load_official`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .. import storage
from ..checkpoint import CONFIG_FILE, STATE_FILE, load_weights, local_copy, resolve_checkpoint
from ..config import ExperimentConfig, load_config

log = logging.getLogger("gaga.eval")

PAPER_STEPS = 200_000


@dataclass
class CheckpointInfo:
    """What a checkpoint is, without its weights (cheap: config and state files only)."""

    path: str
    kind: str  # "ours" | "official"
    config: ExperimentConfig  # model/camera/flame of the checkpoint, the rest from the caller's config
    step: int | None = None  # optimizer steps (ours)
    run_name: str = ""
    warnings: list[str] = field(default_factory=list)  # why the numbers are not the paper's
    chosen: str = ""  # how --checkpoint was resolved (resolve_checkpoint)

    def summary(self) -> dict:
        return {"path": self.path, "kind": self.kind, "chosen": self.chosen, "step": self.step, "run_name": self.run_name,
                "flame": self.config.flame.path or "generated stand-in head",
                "backbone_weights": self.config.model.backbone.weights, "warnings": list(self.warnings)}


def inspect_checkpoint(checkpoint: str, cfg: ExperimentConfig) -> CheckpointInfo:
    """Kind, config and comparability warnings of a checkpoint (reads no weights); ``checkpoint``
    is anything :func:`resolve_checkpoint` accepts, and ``info.chosen`` says what it took."""
    if not checkpoint:
        raise ValueError("no checkpoint: pass --checkpoint (a run folder, one of its checkpoint folders, or the "
                         "released GAGAvatar.pt)")
    checkpoint, kind, chosen = resolve_checkpoint(checkpoint)
    log.info("checkpoint: %s", chosen)
    if kind == "ours":
        with tempfile.TemporaryDirectory(prefix="gaga-ckpt-cfg-") as tmp:
            local = Path(tmp) / CONFIG_FILE
            local.write_text(storage.read_text(storage.join(checkpoint, CONFIG_FILE)))
            trained = load_config(local)
        used = dataclasses.replace(cfg, model=trained.model, camera=trained.camera, flame=trained.flame)
        info = CheckpointInfo(checkpoint, "ours", used, chosen=chosen)
        state_url = storage.join(checkpoint, STATE_FILE)
        if storage.exists(state_url):
            state = json.loads(storage.read_text(state_url))
            info.step, info.run_name = int(state.get("step", 0)), str(state.get("run_name", ""))
        if not trained.model.backbone.weights:
            info.warnings.append(
                "the DINOv2 backbone started from RANDOM weights (model.backbone.weights unset)"
                + ("; it is frozen, so it stayed random" if trained.model.backbone.frozen
                   else "; it was trained with the rest, not the pretrained DINOv2 of the paper"))
        if info.step is not None and info.step < PAPER_STEPS:
            info.warnings.append(f"trained {info.step:,} steps of the paper's {PAPER_STEPS:,}"
                                 + (" — a smoke model: the numbers only check the pipeline" if info.step < 1000 else ""))
        if not is_paper_architecture(trained):
            info.warnings.append("not the paper's architecture or resolution (model/camera differ from the paper preset)")
    else:
        info = CheckpointInfo(checkpoint, "official", cfg, chosen=chosen)
    if not info.config.flame.path:
        info.warnings.append("FLAME is the generated stand-in head, not FLAME 2020: numbers are not comparable "
                             "with the paper")
    return info


def is_paper_architecture(cfg: ExperimentConfig) -> bool:
    """model and camera equal the released ones (the backbone's weight file aside)."""
    from model.config import CameraConfig, ModelConfig

    model = dataclasses.replace(cfg.model, backbone=dataclasses.replace(cfg.model.backbone, weights=None))
    return model == ModelConfig() and cfg.camera == CameraConfig()


def load_model(info: CheckpointInfo, device: torch.device | str = "cpu"):
    """Build the GAGAvatar of ``info.config`` and load the checkpoint's weights (ours: strict,
    ``pipeline.checkpoint.load_weights``; the released file: strict except the training-only
    ``percep_loss.*``, ``load_official``); returns the model in eval mode on ``device``."""
    from model.gagavatar import GAGAvatar
    from model.official_checkpoint import load_official

    cfg = info.config
    backbone = dataclasses.replace(cfg.model.backbone, weights=None)  # the checkpoint holds the backbone
    model = GAGAvatar(dataclasses.replace(cfg.model, backbone=backbone), cfg.camera, cfg.rasterizer)
    if info.kind == "ours":
        with local_copy(info.path) as directory:
            load_weights(directory, model)
    elif storage.is_s3(info.path):
        with tempfile.NamedTemporaryFile(suffix=".pt") as tmp:
            tmp.write(storage.read_bytes(info.path))
            tmp.flush()
            load_official(tmp.name, model=model)
    else:
        load_official(str(storage.local_path(info.path)), model=model)
    return model.to(device).eval()


def load_flame(info: CheckpointInfo, device: torch.device | str = "cpu"):
    """The FLAME layer the checkpoint's config names (the generated stand-in head when unset)."""
    from model.flame import FlameModel

    return FlameModel.from_config(info.config.flame).to(device)

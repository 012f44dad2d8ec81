"""One training step, independent of where the batch came from and of Ray.

``TrainState`` holds the network, its loss (which owns the perceptual network), the FLAME layer,
the optimizer and the scheduler; ``train_step`` runs forward, losses, backward and the update,
and returns detached loss tensors (no host sync: callers read them when they log).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from model.flame import FlameModel
from model.frame_params import split_params

from .config import ExperimentConfig
from .data import PairBatch


@dataclass
class TrainState:
    model: nn.Module  # GAGAvatar, possibly wrapped in DistributedDataParallel
    loss: nn.Module
    flame: FlameModel
    optimizer: torch.optim.Optimizer
    scheduler: Any
    config: ExperimentConfig

    @property
    def network(self) -> nn.Module:
        """The bare GAGAvatar (unwrapped from DDP / torch.compile)."""
        net = self.model
        net = getattr(net, "module", net)
        return getattr(net, "_orig_mod", net)


def configure_cuda_backends(cfg: ExperimentConfig) -> None:
    """Process-wide CUDA math settings of ``train`` (TF32, cuDNN autotuning)."""
    torch.backends.cuda.matmul.allow_tf32 = cfg.train.tf32
    torch.backends.cudnn.allow_tf32 = cfg.train.tf32
    torch.backends.cudnn.benchmark = cfg.train.cudnn_benchmark


def build_train_state(cfg: ExperimentConfig, device: torch.device) -> TrainState:
    """Network, loss, FLAME, optimizer and scheduler from the config, on ``device`` (on a GPU it
    also applies :func:`configure_cuda_backends`)."""
    if device.type == "cuda":
        configure_cuda_backends(cfg)
    from model.gagavatar import GAGAvatar
    from model.losses import GAGAvatarLoss
    from model.optim import build_optimizer

    model = GAGAvatar(cfg.model, cfg.camera, cfg.rasterizer).to(device)  # loads backbone.weights if set
    loss = GAGAvatarLoss(cfg.loss).to(device)
    flame = FlameModel.from_config(cfg.flame).to(device)
    optimizer, scheduler = build_optimizer(model, cfg.optim)
    return TrainState(model, loss, flame, optimizer, scheduler, cfg)


# The rasterizer (a CUDA extension) stays outside the compiled regions; everything heavy around it
# is compiled in place, so state-dict keys and the official layout do not change.
COMPILED_REGIONS = ("base_model", "gs_generator_g", "gs_generator_l0", "gs_generator_l1", "upsampler", "covariance")


def compile_regions(network: nn.Module) -> nn.Module:
    """``torch.compile`` the backbone/decoder, the Gaussian heads, the neural renderer and the
    covariance builder in place."""
    for name in COMPILED_REGIONS:
        module = getattr(network, name, None)
        if module is not None:
            module.compile()
    return network


def autocast(cfg: ExperimentConfig, device: torch.device) -> contextlib.AbstractContextManager:
    if cfg.train.precision == "bf16" and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def flame_vertices(flame: FlameModel, params: dict[str, torch.Tensor]) -> torch.Tensor:
    """FLAME ×5 vertices [B,V,3] of tracked frames (no gradient: they are data)."""
    with torch.no_grad():
        return flame(params["shape"], params["expression"], params["pose"], params["eyes"]).vertices


def forward_pair(state: TrainState, batch: PairBatch) -> tuple[Any, dict[str, torch.Tensor], torch.Tensor]:
    """Network output, target params and target FLAME vertices for a batch on the model's device."""
    source, target = split_params(batch.source_params), split_params(batch.target_params)
    vertices = flame_vertices(state.flame, target)
    output = state.model(batch.source_image, source["transform_matrix"], vertices, target["transform_matrix"])
    return output, target, vertices


def target_at_render_size(image: torch.Tensor, size: int) -> torch.Tensor:
    """Shards hold crops at preprocess.crop.size; the loss compares at camera.image_size."""
    if image.shape[-1] == size and image.shape[-2] == size:
        return image
    return F.interpolate(image, size=(size, size), mode="bilinear", antialias=True, align_corners=False)


def train_step(state: TrainState, batch: PairBatch) -> tuple[dict[str, torch.Tensor], Any]:
    """forward → losses → backward → clip → optimizer and scheduler step. Returns the detached
    loss terms and the network output (for image panels)."""
    device = batch.source_image.device
    state.model.train()
    target_image = target_at_render_size(batch.target_image, state.config.camera.image_size)
    with autocast(state.config, device):
        output, target, vertices = forward_pair(state, batch)
        losses = state.loss(output, target_image, target["bbox"], vertices)
    state.optimizer.zero_grad(set_to_none=True)
    losses["total"].backward()
    if state.config.optim.grad_clip > 0:
        losses["grad_norm"] = torch.nn.utils.clip_grad_norm_(state.model.parameters(), state.config.optim.grad_clip)
    state.optimizer.step()
    state.scheduler.step()
    return {name: value.detach() for name, value in losses.items()}, output


@torch.no_grad()
def predict(state: TrainState, batch: PairBatch) -> Any:
    """Eval-mode forward (validation, image panels)."""
    state.model.eval()
    with autocast(state.config, batch.source_image.device):
        output, _, _ = forward_pair(state, batch)
    return output

"""One training step, independent of where the batch came from and of Ray.

``TrainState`` holds the network, its loss (which owns the perceptual network), the FLAME layer,
the optimizer and the scheduler; ``train_step`` runs forward, losses, backward and the update,
and returns detached loss tensors (no host sync: callers read them when they log).

A step whose loss or gradient is not finite is skipped on the device (``skipped_step`` = 1): the
weights, Adam's moments and its step count are left as they were; the LR schedule and the data
stream move on. The training loop counts skipped steps and stops the run past
``train.max_skipped_steps``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import sysconfig
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from model.flame import FlameModel
from model.frame_params import split_params
from model.optim import skip_update_if

from .config import ExperimentConfig, TrainConfig
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


def build_train_state(cfg: ExperimentConfig, device: torch.device, channels_last: bool | None = None) -> TrainState:
    """Network, loss, FLAME, optimizer and scheduler from the config, on ``device`` (on a GPU it
    also applies :func:`configure_cuda_backends`). ``channels_last`` (default: on a GPU) stores
    the convolution weights of the network and of the perceptual loss channels-last
    (:func:`model.gagavatar.convs_channels_last_`): the same numbers, no NCHW↔NHWC conversion
    around cuDNN's kernels."""
    if device.type == "cuda":
        configure_cuda_backends(cfg)
    from model.gagavatar import GAGAvatar, convs_channels_last_
    from model.losses import GAGAvatarLoss
    from model.optim import build_optimizer

    model = GAGAvatar(cfg.model, cfg.camera, cfg.rasterizer).to(device)  # loads backbone.weights if set
    loss = GAGAvatarLoss(cfg.loss).to(device)
    if (device.type == "cuda") if channels_last is None else channels_last:
        convs_channels_last_(model)
        convs_channels_last_(loss)
    flame = FlameModel.from_config(cfg.flame).to(device)
    optimizer, scheduler = build_optimizer(model, cfg.optim)
    optimizer.register_load_state_dict_post_hook(_state_in_parameter_layout)
    return TrainState(model, loss, flame, optimizer, scheduler, cfg)


def _state_in_parameter_layout(optimizer: torch.optim.Optimizer) -> None:
    """After ``optimizer.load_state_dict``: moments stored in another memory layout than their
    parameter (a checkpoint of a run without channels-last weights, e.g. trained on a CPU) are
    copied into the parameter's layout. The fused Adam kernel walks parameter, gradient and
    moments as flat memory: with mismatched strides it would pair the wrong elements."""
    for param, state in optimizer.state.items():
        for key, value in state.items():
            if torch.is_tensor(value) and value.shape == param.shape and value.stride() != param.stride():
                state[key] = torch.empty_like(param, dtype=value.dtype).copy_(value)


# The rasterizer (a CUDA extension) stays outside the compiled regions; everything heavy around it
# is compiled in place, so state-dict keys and the official layout do not change.
COMPILED_REGIONS = ("base_model", "gs_generator_g", "gs_generator_l0", "gs_generator_l1", "upsampler", "covariance")


def local_compile_cache() -> str:
    """Inductor's and Triton's caches on this node's disk, kept between runs (``$TORCHINDUCTOR_CACHE_DIR``
    when set, else ``<user cache>/inductor``): a later run or a restarted worker on the same machine
    loads its kernels instead of compiling them. Never restored from the run's storage: those are
    generated code, and storage others can write must not decide what runs (docs/reliability.md)."""
    if "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
        from model.procedural_head import default_cache_dir

        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(default_cache_dir() / "inductor")
    os.environ.setdefault("TRITON_CACHE_DIR", os.path.join(os.environ["TORCHINDUCTOR_CACHE_DIR"], "triton"))
    return os.environ["TORCHINDUCTOR_CACHE_DIR"]


# inductor modes that capture CUDA graphs: a step must tell them where it begins
CUDA_GRAPH_MODES = ("reduce-overhead",)


def compile_unavailable_reason() -> str | None:
    """Why torch.compile's GPU kernels cannot be built on this node, or None. Inductor's kernels
    are Triton's, and Triton builds a small C launcher for each one: it needs a C compiler (``CC``,
    clang or gcc) and Python's headers, which slim containers often lack. Without this check the
    run would fail at its first step, after its workers had started."""
    if importlib.util.find_spec("triton") is None:
        return "Triton is not installed"
    if not (os.environ.get("CC") or shutil.which("clang") or shutil.which("gcc")):
        return "no C compiler (CC, clang or gcc) to build Triton's kernel launchers"
    include = sysconfig.get_paths().get("include") or ""
    if not os.path.isfile(os.path.join(include, "Python.h")):
        return f"no Python headers ({os.path.join(include, 'Python.h')}) to build Triton's kernel launchers"
    return None


def replays_cuda_graphs(train: TrainConfig, device: torch.device) -> bool:
    """Whether the compiled regions run from CUDA graphs (CUDA workers only: train.compile is
    not applied on a CPU)."""
    return train.compile and train.compile_mode in CUDA_GRAPH_MODES and device.type == "cuda"


def compile_regions(network: nn.Module, backend: str = "inductor", mode: str = "default") -> nn.Module:
    """``torch.compile`` the backbone/decoder, the Gaussian heads, the neural renderer and the
    covariance builder in place (``backend``: torch.compile's, tests trace with "aot_eager";
    ``mode``: inductor's, ``train.compile_mode``), with kernels cached on the node
    (:func:`local_compile_cache`)."""
    local_compile_cache()
    kwargs = {"backend": backend} if mode == "default" else {"backend": backend, "mode": mode}
    for name in COMPILED_REGIONS:
        module = getattr(network, name, None)
        if module is not None:
            module.compile(**kwargs)
    return network


def autocast(cfg: ExperimentConfig, device: torch.device) -> contextlib.AbstractContextManager:
    if cfg.train.precision == "bf16" and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def flame_vertices(flame: FlameModel, params: dict[str, torch.Tensor]) -> torch.Tensor:
    """FLAME ×5 vertices [B,V,3] of tracked frames (no gradient: they are data)."""
    with torch.no_grad():
        return flame(params["shape"], params["expression"], params["pose"], params["eyes"]).vertices


def forward_pair(state: TrainState, batch: PairBatch,
                 render_depth: bool | None = None) -> tuple[Any, dict[str, torch.Tensor], torch.Tensor]:
    """Network output, target params and target FLAME vertices for a batch on the model's device
    (``render_depth``: see ``GAGAvatar.splat``)."""
    source, target = split_params(batch.source_params), split_params(batch.target_params)
    vertices = flame_vertices(state.flame, target)
    output = state.model(batch.source_image, source["transform_matrix"], vertices, target["transform_matrix"],
                         render_depth=render_depth)
    return output, target, vertices


def target_at_render_size(image: torch.Tensor, size: int) -> torch.Tensor:
    """Shards hold crops at preprocess.crop.size; the loss compares at camera.image_size."""
    if image.shape[-1] == size and image.shape[-2] == size:
        return image
    return F.interpolate(image, size=(size, size), mode="bilinear", antialias=True, align_corners=False)


def nonfinite_flag(total: torch.Tensor, grad_norm: torch.Tensor) -> torch.Tensor:
    """1.0 when the loss or the gradient norm is NaN/Inf on any rank, else 0.0 (0-dim, on the
    device; under DDP the flag is max-reduced so that every rank skips the same steps)."""
    flag = (~(torch.isfinite(total.detach()) & torch.isfinite(grad_norm))).float()
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
    return flag


def train_step(state: TrainState, batch: PairBatch) -> tuple[dict[str, torch.Tensor], Any]:
    """forward → losses → backward → clip → optimizer and scheduler step. Returns the detached
    loss terms (with ``grad_norm`` and ``skipped_step``) and the network output (for panels)."""
    device = batch.source_image.device
    train = state.config.train
    if replays_cuda_graphs(train, device):
        torch.compiler.cudagraph_mark_step_begin()  # the last step's graph outputs may be overwritten now
    if not (state.model.training and state.network.training):  # train() walks ~1,000 modules: host time per step
        state.model.train()
    target_image = target_at_render_size(batch.target_image, state.config.camera.image_size)
    with autocast(state.config, device):
        # no loss reads the depth: the rasterizer composites one channel less
        output, target, vertices = forward_pair(state, batch, render_depth=False)
        losses = state.loss(output, target_image, target["bbox"], vertices)
    state.optimizer.zero_grad(set_to_none=True)
    losses["total"].backward()
    params = [p for p in state.model.parameters() if p.grad is not None]
    if state.config.optim.grad_clip > 0:
        losses["grad_norm"] = torch.nn.utils.clip_grad_norm_(params, state.config.optim.grad_clip)
    else:
        losses["grad_norm"] = torch.nn.utils.get_total_norm([p.grad for p in params])
    losses["skipped_step"] = nonfinite_flag(losses["total"], losses["grad_norm"])
    skip_update_if(state.optimizer, losses["skipped_step"])
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

"""Optimizer and schedule of the released recipe (docs/released_model.md, 'Training recipe'): Adam, betas (0, 0.99), the StyleGAN
style path (parameter names containing ``style_mlp`` or ``final_linear``) at ``style_lr``,
everything else trainable at ``lr``, and a linear decay 1 → ``final_lr_factor`` over
``decay_steps``, stepped once per iteration. Frozen parameters are left out.

Adam is the fused implementation: besides being one kernel per step, it is the one that can skip a
step on the device (``skip_update_if``), without reading anything back to the host."""

from __future__ import annotations

import torch
from torch import nn

from model.config import OptimConfig

STYLE_KEYS = ("style_mlp", "final_linear")


def param_groups(model: nn.Module, config: OptimConfig) -> list[dict]:
    """[{"name": "default", lr, params}, {"name": "style", style_lr, params}] over the trainable
    parameters (a ``module.``/``_orig_mod.`` wrapper prefix does not matter: names are matched
    by substring)."""
    default, style = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (style if any(k in name for k in STYLE_KEYS) else default).append(param)
    groups = [{"name": "default", "params": default, "lr": config.lr}]
    if style:
        groups.append({"name": "style", "params": style, "lr": config.style_lr})
    return groups


def build_optimizer(model: nn.Module, config: OptimConfig) -> tuple[torch.optim.Adam, torch.optim.lr_scheduler.LinearLR]:
    """Adam over :func:`param_groups` and its per-iteration LinearLR schedule."""
    optimizer = torch.optim.Adam(
        param_groups(model, config), lr=config.lr, betas=tuple(float(b) for b in config.betas), eps=config.eps,
        weight_decay=config.weight_decay, fused=True,
    )
    scheduler = torch.optim.lr_scheduler.LinearLR(
        optimizer, start_factor=1.0, end_factor=config.final_lr_factor, total_iters=max(1, config.decay_steps)
    )
    return optimizer, scheduler


def skip_update_if(optimizer: torch.optim.Adam, flag: torch.Tensor) -> None:
    """Make the next ``optimizer.step()`` a no-op when ``flag`` (0-dim float tensor on the
    parameters' device) is non-zero: parameters, moments and the step count stay as they were.
    This is the channel ``torch.amp.GradScaler`` uses to skip steps of fused optimizers; the
    decision stays on the device (no host sync)."""
    if not optimizer.defaults.get("fused"):
        raise ValueError("skip_update_if needs a fused optimizer (build_optimizer makes one)")
    optimizer.found_inf = flag

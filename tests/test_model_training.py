"""The smoke network overfits one fixed synthetic pair on CPU: 100 steps cut the image L1 ≥ 4×."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from model.config import CameraConfig, LossConfig, ModelConfig, OptimConfig, RasterizerConfig
from model.gagavatar import GAGAvatar
from model.geometry import euler_to_matrix, look_at_transform
from model.losses import GAGAvatarLoss
from model.optim import build_optimizer
from pipeline.configtools import from_dict, load_preset_dict


def blob_image(size: int, seed: int) -> torch.Tensor:
    """A smooth [1,3,size,size] image in [0,1]: a few coloured Gaussian blobs on black."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    img = torch.zeros(1, 3, size, size)
    for _ in range(6):
        cx, cy = (torch.rand(2, generator=g) * 1.2 - 0.6).tolist()
        s = 0.2 + 0.3 * float(torch.rand(1, generator=g))
        colour = torch.rand(3, generator=g).view(1, 3, 1, 1)
        img = img + colour * torch.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * s**2))
    return img.clamp(0, 1)


@pytest.mark.slow
def test_smoke_model_overfits_one_pair(flame):
    data = load_preset_dict("smoke")
    model_cfg = from_dict(ModelConfig, data["model"])
    camera = from_dict(CameraConfig, data["camera"])
    loss_cfg = from_dict(LossConfig, data["loss"])
    # one pair: a higher, constant learning rate than the released schedule, to overfit quickly
    optim_cfg = dataclasses.replace(from_dict(OptimConfig, data["optim"]), lr=1e-3, style_lr=1e-3, decay_steps=10**9)
    torch.manual_seed(0)
    model = GAGAvatar(model_cfg, camera, RasterizerConfig(backend="torch")).train()
    loss_fn = GAGAvatarLoss(loss_cfg)
    optimizer, scheduler = build_optimizer(model, optim_cfg)

    size = camera.image_size
    target = blob_image(size, seed=1)
    source = blob_image(size, seed=2)
    transform = look_at_transform(9.3, euler_to_matrix(torch.tensor([0.1]), torch.tensor([0.05]), torch.zeros(1)))
    with torch.no_grad():
        vertices = flame(torch.zeros(1, 300)).vertices
    bbox = torch.tensor([[0.2, 0.2, 0.8, 0.8]])

    image_l1 = []
    for _ in range(100):  # 6.5× here (11.5× after 200)
        out = model(source, transform, vertices, transform)
        terms = loss_fn(out, target, bbox, vertices)
        optimizer.zero_grad(set_to_none=True)
        terms["total"].backward()
        optimizer.step()
        scheduler.step()
        image_l1.append(float(terms["image"].detach()))
    first, last = image_l1[0], sum(image_l1[-10:]) / 10
    assert first / last >= 4.0, f"L1 went {first:.4f} → {last:.4f} ({first / last:.1f}×)"

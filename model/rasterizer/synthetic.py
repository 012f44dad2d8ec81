"""A deterministic, GAGAvatar-sized Gaussian scene for parity tests and benchmarks."""

from __future__ import annotations

import math

import torch

# GAGAvatar's numbers (docs/released_model.md, 'Constants'): 5,023 expression + 2·296² plane Gaussians, focal 12
# in NDC, camera about 9.3 units from the FLAME(×5) head centre.
NUM_GAUSSIANS = 180_255
NUM_EXPRESSION = 5_023
FOCAL_NDC = 12.0
CAMERA_DISTANCE = 9.3


def head_scene(
    image_size: int = 512,
    batch: int = 1,
    num_gaussians: int = NUM_GAUSSIANS,
    channels: int = 32,
    num_expression: int = NUM_EXPRESSION,
    seed: int = 0,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> dict:
    """Gaussians filling a head-sized ellipsoid (semi-axes 0.8, 1.0, 0.9) around the origin,
    seen by ``batch`` cameras at distance 9.3 with yaws spread over ±0.3 rad.

    Returns keyword arguments for :func:`model.rasterizer.render_gaussians`: means [B,N,3],
    quats [B,N,4] (unit, except the first ``num_expression`` whose norms are 0.004–0.06 like the
    released expression Gaussians), scales [B,N,3] in 0.005–0.03, opacities [B,N] in
    0.05–0.9, features [B,N,C] in [0,1], viewmats [B,4,4], Ks [B,3,3] (fx = 12·S/2), width,
    height. The Gaussians are the same for every batch element.
    """
    g = torch.Generator().manual_seed(seed)
    N = num_gaussians
    d = torch.randn(N, 3, generator=g)
    r = torch.rand(N, 1, generator=g) ** (1.0 / 3.0)
    means = d / d.norm(dim=-1, keepdim=True) * r * torch.tensor([0.8, 1.0, 0.9])
    quats = torch.randn(N, 4, generator=g)
    quats = quats / quats.norm(dim=-1, keepdim=True)
    quats[:num_expression] *= torch.empty(num_expression, 1).uniform_(0.004, 0.06, generator=g)
    scales = torch.exp(torch.empty(N, 3).uniform_(math.log(0.005), math.log(0.03), generator=g))
    opacities = torch.empty(N).uniform_(0.05, 0.9, generator=g)
    features = torch.rand(N, channels, generator=g)

    yaw = torch.linspace(-0.3, 0.3, batch) if batch > 1 else torch.zeros(1)
    c, s = torch.cos(yaw), torch.sin(yaw)
    viewmats = torch.zeros(batch, 4, 4)
    viewmats[:, 0, 0], viewmats[:, 0, 2] = c, s
    viewmats[:, 2, 0], viewmats[:, 2, 2] = -s, c
    viewmats[:, 1, 1] = 1.0
    viewmats[:, 2, 3] = CAMERA_DISTANCE
    viewmats[:, 3, 3] = 1.0
    f = FOCAL_NDC * image_size / 2
    Ks = torch.tensor([[f, 0.0, image_size / 2], [0.0, f, image_size / 2], [0.0, 0.0, 1.0]]).expand(batch, 3, 3)

    def bat(t: torch.Tensor) -> torch.Tensor:
        return t.expand(batch, *t.shape).contiguous().to(device=device, dtype=dtype)

    return dict(
        means=bat(means), quats=bat(quats), scales=bat(scales), opacities=bat(opacities),
        features=bat(features), viewmats=viewmats.to(device=device, dtype=dtype),
        Ks=Ks.contiguous().to(device=device, dtype=dtype), width=image_size, height=image_size,
    )

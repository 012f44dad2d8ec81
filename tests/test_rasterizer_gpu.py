"""CUDA backends against the PyTorch reference on GAGAvatar's scene (180,255 Gaussians, 32 ch).

Run on the GPU machine: ``python -m pytest -q -m gpu tests/test_rasterizer_gpu.py``.
"""

from __future__ import annotations

import pytest
import torch

from model.config import RasterizerConfig
from model.rasterizer import render_gaussians
from model.rasterizer.synthetic import head_scene

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

PARAMS = ("means", "quats", "scales", "opacities", "features")


def rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm())


def render_with_grads(backend: str, scene: dict, config: RasterizerConfig):
    leaves = {k: scene[k].clone().requires_grad_(True) for k in PARAMS}
    out = render_gaussians(
        **leaves, viewmats=scene["viewmats"], Ks=scene["Ks"], width=scene["width"], height=scene["height"],
        backend=backend, config=config,
    )
    g = torch.Generator("cuda").manual_seed(0)
    weights = torch.rand(out.image.shape, device="cuda", generator=g)
    (out.image * weights).sum().backward()
    return out, {k: v.grad for k, v in leaves.items()}


def check_parity(backend: str, size: int, batch: int, normalize: bool) -> None:
    scene = head_scene(size, batch, device="cuda")
    config = RasterizerConfig(normalize_quats=normalize)
    ref, ref_g = render_with_grads("torch", scene, config)
    out, g = render_with_grads(backend, scene, config)
    assert out.backend == backend
    assert out.image.shape == ref.image.shape == (batch, 32, size, size)
    assert rel_l2(out.image, ref.image) < 1e-3
    if out.alpha is not None:
        assert rel_l2(out.alpha, ref.alpha) < 1e-3
    assert rel_l2(g["features"], ref_g["features"]) < 5e-3


# 296² with two cameras checks the batched call; the default (raw quaternion) semantic gives
# gsplat covariances, normalize_quats=True gives it the quaternions.
@pytest.mark.parametrize("size,batch", [(296, 2), (512, 1)])
@pytest.mark.parametrize("normalize", [False, True])
def test_gsplat_matches_torch_reference(size, batch, normalize):
    pytest.importorskip("gsplat")
    check_parity("gsplat", size, batch, normalize)


@pytest.mark.parametrize("size", [296, 512])
def test_inria_matches_torch_reference(size):
    from model.rasterizer.inria_backend import find_module

    if find_module(32) is None:
        pytest.skip("diff_gaussian_rasterization_32d is not installed")
    check_parity("inria", size, 1, normalize=False)


def test_auto_picks_gsplat_on_cuda():
    pytest.importorskip("gsplat")
    scene = head_scene(64, 1, num_gaussians=1000, num_expression=10, device="cuda")
    assert render_gaussians(**scene, backend="auto").backend == "gsplat"

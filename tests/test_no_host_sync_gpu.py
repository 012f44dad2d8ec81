"""The per-step work before and after the rasterizer queues on the GPU without waiting for it:
no ``.item()``, no host→device copy from pageable memory (a tensor built from Python data),
nothing that makes the host wait for the CUDA stream. One such wait per step stops the host from
running ahead of the GPU. (gsplat's own tile-buffer sizing is the one sync a step keeps.)

Run on the GPU machine: ``python -m pytest -q -m gpu tests/test_no_host_sync_gpu.py``.
"""

from __future__ import annotations

import contextlib

import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


@contextlib.contextmanager
def no_sync():
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_flame_cameras_and_covariances_do_not_sync():
    from model.config import FlameConfig
    from model.flame import FlameModel
    from model.geometry import intrinsics, transform_to_viewmat
    from model.rasterizer import covariance_from_quat_scale

    flame = FlameModel.from_config(FlameConfig()).cuda()  # the generated stand-in head
    b = 4
    params = [torch.randn(b, n, device="cuda") * 0.1 for n in (flame.n_shape, flame.n_expression, 6, 6)]
    transform = torch.randn(b, 3, 4, device="cuda")
    q, s = torch.randn(b, 1000, 4, device="cuda"), torch.rand(b, 1000, 3, device="cuda")
    for _ in range(2):  # the first call may make (and cache) device constants
        with no_sync() if _ else contextlib.nullcontext():
            flame(*params)
            transform_to_viewmat(transform)
            intrinsics(12.0, 512, 512, (b,), device="cuda")
            covariance_from_quat_scale(q, s, normalize=False)


def test_reconstruction_and_losses_do_not_sync():
    from model.gagavatar import AvatarOutput
    from pipeline.config import load_config
    from pipeline.step import build_train_state

    cfg = load_config("smoke")
    state = build_train_state(cfg, torch.device("cuda"))
    net, size, b = state.network, cfg.camera.image_size, 2
    image = torch.rand(b, 3, size, size, device="cuda")
    transform = torch.eye(3, 4, device="cuda").expand(b, 3, 4).clone()
    transform[:, 2, 3] = 9.3
    vertices = torch.randn(b, cfg.model.num_vertices, 3, device="cuda")
    bbox = torch.tensor([[0.2, 0.2, 0.8, 0.8]], device="cuda").expand(b, 4)
    for first in (True, False):
        with contextlib.nullcontext() if first else no_sync():
            cache = net.reconstruct(image, transform)
            features = torch.rand(b, cfg.model.gaussian_channels, size, size, device="cuda", requires_grad=True)
            out = AvatarOutput(features[:, :3], features[:, :3].sigmoid(), features, features[:, :1], cache.lifted_points)
            losses = state.loss(out, image, bbox, vertices)
            losses["total"].backward()

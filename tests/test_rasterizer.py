"""CPU tests of the rasterizer API and its PyTorch reference backend (small, float64 where exact)."""

from __future__ import annotations

import logging
import math

import pytest
import torch

from model.config import RasterizerConfig
from model.rasterizer import backend_names, covariance_from_quat_scale, render_gaussians
from model.rasterizer.common import _covariance_few_ops

F64 = torch.float64


def camera(width: int, height: int, f: float, batch: int = 1, dtype=F64):
    """Identity world→camera and centred pinhole intrinsics."""
    viewmats = torch.eye(4, dtype=dtype).expand(batch, 4, 4).clone()
    Ks = torch.tensor([[f, 0, width / 2], [0, f, height / 2], [0, 0, 1]], dtype=dtype).expand(batch, 3, 3).clone()
    return viewmats, Ks


def identity_quats(B: int, N: int, dtype=F64) -> torch.Tensor:
    q = torch.zeros(B, N, 4, dtype=dtype)
    q[..., 0] = 1
    return q


def random_scene(B: int, N: int, C: int, seed: int, dtype=F64) -> dict:
    """Gaussians 4–6 units in front of an identity camera, 16×16 px, f = 30."""
    g = torch.Generator().manual_seed(seed)
    means = torch.cat(
        [torch.empty(B, N, 2).uniform_(-0.8, 0.8, generator=g), torch.empty(B, N, 1).uniform_(4, 6, generator=g)], -1
    )
    quats = torch.randn(B, N, 4, generator=g)
    quats = quats / quats.norm(dim=-1, keepdim=True) * torch.empty(B, N, 1).uniform_(0.6, 1.4, generator=g)
    return dict(
        means=means.to(dtype),
        quats=quats.to(dtype),
        scales=torch.empty(B, N, 3).uniform_(0.12, 0.35, generator=g).to(dtype),
        opacities=torch.empty(B, N).uniform_(0.25, 0.7, generator=g).to(dtype),
        features=torch.rand(B, N, C, generator=g).to(dtype),
    )


def test_single_gaussian_matches_analytic_image():
    W, H, f = 40, 36, 50.0  # not multiples of the tile size: border tiles are cropped
    x, y, z, s, o = 0.3, -0.2, 5.0, 0.4, 0.8
    colour = torch.tensor([0.2, 0.5, 0.9], dtype=F64)
    bg = torch.tensor([0.1, 0.1, 0.1], dtype=F64)
    V, K = camera(W, H, f)
    out = render_gaussians(
        torch.tensor([[[x, y, z]]], dtype=F64), identity_quats(1, 1), torch.full((1, 1, 3), s, dtype=F64),
        torch.tensor([[o]], dtype=F64), colour.view(1, 1, 3), V, K, W, H, background=bg, backend="torch",
    )
    # EWA: J = [[f/z, 0, −f x/z²], [0, f/z, −f y/z²]], Σ₂ᴰ = s² J Jᵀ + 0.3 I
    J = torch.tensor([[f / z, 0, -f * x / z**2], [0, f / z, -f * y / z**2]], dtype=F64)
    cov = s**2 * J @ J.T + 0.3 * torch.eye(2, dtype=F64)
    mean = torch.tensor([f * x / z + W / 2, f * y / z + H / 2], dtype=F64)
    jj, ii = torch.meshgrid(torch.arange(W, dtype=F64), torch.arange(H, dtype=F64), indexing="xy")
    d = torch.stack([jj + 0.5, ii + 0.5], -1) - mean  # [H,W,2]
    q = torch.einsum("hwi,ij,hwj->hw", d, torch.linalg.inv(cov), d)
    a = o * torch.exp(-0.5 * q)
    a = torch.where(a >= 1 / 255, a, torch.zeros_like(a))
    assert (a > 0).sum() > 200  # the Gaussian spans several tiles
    expect = a * colour.view(3, 1, 1) + (1 - a) * bg.view(3, 1, 1)
    torch.testing.assert_close(out.image[0], expect, atol=1e-12, rtol=0)
    torch.testing.assert_close(out.alpha[0, 0], a, atol=1e-12, rtol=0)
    torch.testing.assert_close(out.depth[0, 0], torch.where(a > 0, z, 0.0).to(F64), atol=1e-9, rtol=0)
    assert out.backend == "torch"


def _two_gaussians(z_red: float, z_green: float):
    # both centred on pixel (7, 7), whose centre is (7.5, 7.5): x = y = −0.5·z/f
    W = H = 16
    f = 50.0
    zs = torch.tensor([z_red, z_green], dtype=F64)
    means = torch.stack([-0.5 * zs / f, -0.5 * zs / f, zs], -1).unsqueeze(0)
    feats = torch.tensor([[[1.0, 0, 0], [0, 1.0, 0]]], dtype=F64)
    V, K = camera(W, H, f)
    return render_gaussians(
        means, identity_quats(1, 2), torch.full((1, 2, 3), 0.1, dtype=F64), torch.tensor([[0.6, 0.5]], dtype=F64),
        feats, V, K, W, H, background=torch.tensor([0.0, 0, 1], dtype=F64),
    )


def test_two_gaussians_composite_front_to_back():
    out = _two_gaussians(4.0, 6.0)  # red (o = 0.6) in front of green (o = 0.5), blue background
    # C = 0.6·red + (1−0.6)·0.5·green + (1−0.6)(1−0.5)·blue
    torch.testing.assert_close(out.image[0, :, 7, 7], torch.tensor([0.6, 0.2, 0.2], dtype=F64))
    torch.testing.assert_close(out.alpha[0, 0, 7, 7], torch.tensor(0.8, dtype=F64))
    torch.testing.assert_close(out.depth[0, 0, 7, 7], torch.tensor((0.6 * 4 + 0.2 * 6) / 0.8, dtype=F64))
    swapped = _two_gaussians(6.0, 4.0)  # now green is in front
    torch.testing.assert_close(swapped.image[0, :, 7, 7], torch.tensor([0.3, 0.5, 0.2], dtype=F64))
    torch.testing.assert_close(swapped.depth[0, 0, 7, 7], torch.tensor((0.5 * 4 + 0.3 * 6) / 0.8, dtype=F64))


@pytest.mark.parametrize("chunk", [4096, 1])  # 1: the cut happens across compositing steps
def test_transmittance_cutoff_like_graphdeco(chunk):
    # six Gaussians with alpha 0.95 on one pixel: T = 1, .05, .0025, 1.25e-4, then 6.25e-6 < 1e-4
    # stops the pixel, so the 4th and later Gaussians are skipped.
    W = H = 8
    f = 40.0
    zs = torch.arange(2.0, 8.0, dtype=F64)
    means = torch.stack([-0.5 * zs / f, -0.5 * zs / f, zs], -1).unsqueeze(0)  # pixel (3, 3)
    V, K = camera(W, H, f)
    cfg = RasterizerConfig(torch_chunk_size=chunk)
    out = render_gaussians(
        means, identity_quats(1, 6), torch.full((1, 6, 3), 0.01, dtype=F64), torch.full((1, 6), 0.95, dtype=F64),
        torch.eye(6, dtype=F64).unsqueeze(0), V, K, W, H, backend="torch", config=cfg,
    )
    expect = torch.tensor([0.95, 0.05 * 0.95, 0.0025 * 0.95, 0, 0, 0], dtype=F64)
    torch.testing.assert_close(out.image[0, :, 3, 3], expect, atol=1e-12, rtol=0)
    torch.testing.assert_close(out.alpha[0, 0, 3, 3], torch.tensor(1 - 1.25e-4, dtype=F64), atol=1e-12, rtol=0)


def test_gradients_match_finite_differences():
    scene = random_scene(1, 4, 3, seed=3)
    V, K = camera(16, 16, 30.0)
    bg = torch.tensor([0.2, 0.3, 0.4], dtype=F64)
    names = ["means", "quats", "scales", "opacities", "features"]
    inputs = tuple(scene[k].clone().requires_grad_(True) for k in names)

    def fn(means, quats, scales, opacities, features):
        out = render_gaussians(means, quats, scales, opacities, features, V, K, 16, 16, background=bg, backend="torch")
        return out.image, out.alpha, out.depth

    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-6, rtol=1e-4, fast_mode=True)
    # the gradients are not trivially zero anywhere
    grads = torch.autograd.grad(sum(o.sum() for o in fn(*inputs)), inputs)
    assert all(g.abs().sum() > 0 for g in grads)


def test_stepped_compositing_with_recompute_equals_one_step():
    scene = random_scene(2, 12, 5, seed=1)
    V, K = camera(16, 16, 30.0, batch=2)
    names = ["means", "quats", "scales", "opacities", "features"]
    results = []
    for cfg in (RasterizerConfig(), RasterizerConfig(torch_chunk_size=3, torch_max_elements=200, torch_tile_size=4)):
        inputs = [scene[k].clone().requires_grad_(True) for k in names]
        out = render_gaussians(*inputs, V, K, 16, 16, backend="torch", config=cfg)
        loss = (out.image * torch.linspace(0, 1, 5, dtype=F64).view(1, 5, 1, 1)).sum() + out.depth.sum()
        loss.backward()
        results.append((out.image.detach(), out.alpha.detach(), *[t.grad for t in inputs]))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-8)


def test_batch_equals_one_by_one():
    B = 3
    scene = random_scene(B, 20, 4, seed=2, dtype=torch.float32)
    V, K = camera(24, 20, 30.0, batch=B, dtype=torch.float32)
    V[1, :3, 3] = torch.tensor([0.1, -0.2, 0.5])  # different cameras per sample
    K[2, 0, 0] = K[2, 1, 1] = 25.0
    bg = torch.tensor([0.1, 0.2, 0.3, 0.4])
    batched = render_gaussians(**scene, viewmats=V, Ks=K, width=24, height=20, background=bg)
    for b in range(B):
        one = render_gaussians(
            **{k: v[b : b + 1] for k, v in scene.items()}, viewmats=V[b : b + 1], Ks=K[b : b + 1],
            width=24, height=20, background=bg,
        )
        torch.testing.assert_close(batched.image[b : b + 1], one.image, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(batched.alpha[b : b + 1], one.alpha, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(batched.depth[b : b + 1], one.depth, atol=1e-5, rtol=1e-5)
    assert batched.image.shape == (B, 4, 20, 24)


@pytest.mark.parametrize("normalize", [False, True])
def test_covariance_path_equals_quat_scale_path(normalize):
    scene = random_scene(2, 10, 3, seed=4)
    V, K = camera(16, 16, 30.0, batch=2)
    cfg = RasterizerConfig(normalize_quats=normalize)
    a = render_gaussians(**scene, viewmats=V, Ks=K, width=16, height=16, config=cfg)
    cov = covariance_from_quat_scale(scene["quats"], scene["scales"], normalize=normalize)
    rest = {k: v for k, v in scene.items() if k not in ("quats", "scales")}
    b = render_gaussians(**rest, quats=None, scales=None, covariances=cov, viewmats=V, Ks=K, width=16, height=16)
    torch.testing.assert_close(a.image, b.image, atol=1e-12, rtol=0)
    torch.testing.assert_close(a.depth, b.depth, atol=1e-10, rtol=0)


def test_unnormalised_quaternion_semantic():
    # a 60° rotation about (1,1,1)/√3, scaled to |q| = 0.01 as the released expression Gaussians are
    half = math.radians(30)
    axis = torch.tensor([1.0, 1.0, 1.0], dtype=F64) / math.sqrt(3)
    q_unit = torch.cat([torch.tensor([math.cos(half)], dtype=F64), math.sin(half) * axis])
    s = torch.tensor([0.3, 0.05, 0.05], dtype=F64)
    # raw formula: R(0.01·q) = I + O(1e-4), so Σ ≈ S²
    cov = covariance_from_quat_scale(0.01 * q_unit, s, normalize=False)
    torch.testing.assert_close(cov, torch.diag(s**2), atol=1e-4 * 0.09, rtol=0)
    assert not torch.allclose(covariance_from_quat_scale(0.01 * q_unit, s, normalize=True), torch.diag(s**2), atol=1e-3)

    V, K = camera(32, 32, 60.0)
    common = dict(
        means=torch.tensor([[[0.0, 0.0, 5.0]]], dtype=F64), scales=s.view(1, 1, 3),
        opacities=torch.tensor([[0.8]], dtype=F64), features=torch.ones(1, 1, 1, dtype=F64),
        viewmats=V, Ks=K, width=32, height=32,
    )
    raw = render_gaussians(quats=(0.01 * q_unit).view(1, 1, 4), **common).image
    identity = render_gaussians(quats=identity_quats(1, 1), **common).image
    normalised = render_gaussians(
        quats=(0.01 * q_unit).view(1, 1, 4), **common, config=RasterizerConfig(normalize_quats=True)
    ).image
    rotated = render_gaussians(quats=q_unit.view(1, 1, 4), **common).image
    assert (raw - identity).abs().max() < 1e-3  # near-identity rotation
    assert (raw - normalised).abs().max() > 0.2  # the normalised quaternion really rotates
    torch.testing.assert_close(normalised, rotated, atol=1e-12, rtol=0)


def test_gaussians_behind_the_camera_leave_the_background():
    V, K = camera(8, 8, 10.0)
    bg = torch.tensor([0.25, 0.5], dtype=F64)
    out = render_gaussians(
        torch.tensor([[[0.0, 0.0, -3.0], [0.0, 0.0, 0.001]]], dtype=F64), identity_quats(1, 2),
        torch.full((1, 2, 3), 0.5, dtype=F64), torch.full((1, 2, 1), 0.9, dtype=F64), torch.ones(1, 2, 2, dtype=F64),
        V, K, 8, 8, background=bg,
    )
    torch.testing.assert_close(out.image[0], bg.view(2, 1, 1).expand(2, 8, 8))
    assert out.alpha.abs().max() == 0 and out.depth.abs().max() == 0


def test_auto_picks_torch_on_cpu_and_logs_once(caplog):
    import model.rasterizer as rast

    rast._logged.discard("torch")
    scene = random_scene(1, 3, 3, seed=0, dtype=torch.float32)
    V, K = camera(8, 8, 30.0, dtype=torch.float32)
    with caplog.at_level(logging.INFO, logger="model.rasterizer"):
        for _ in range(2):
            out = render_gaussians(**scene, viewmats=V, Ks=K, width=8, height=8, backend="auto")
            assert out.backend == "torch"
    assert sum("auto → torch" in r.getMessage() for r in caplog.records) == 1
    assert render_gaussians(**scene, viewmats=V, Ks=K, width=8, height=8).backend == "torch"  # config default


def test_unknown_backend_lists_valid_ones():
    scene = random_scene(1, 2, 3, seed=0)
    V, K = camera(8, 8, 30.0)
    with pytest.raises(ValueError, match="unknown rasterizer backend 'cuda'") as err:
        render_gaussians(**scene, viewmats=V, Ks=K, width=8, height=8, backend="cuda")
    for name in backend_names():
        assert name in str(err.value)
    assert set(backend_names()) == {"auto", "torch", "gsplat", "inria"}


def test_bad_shapes_are_reported():
    scene = random_scene(1, 2, 3, seed=0)
    V, K = camera(8, 8, 30.0)
    with pytest.raises(ValueError, match="quats must have shape"):
        render_gaussians(**{**scene, "quats": scene["quats"][..., :3]}, viewmats=V, Ks=K, width=8, height=8)


def test_covariance_builder_is_graphdeco_formula():
    g = torch.Generator().manual_seed(5)
    q = torch.randn(7, 4, generator=g, dtype=F64) * torch.tensor([[0.01], [0.1], [0.5], [1.0], [1.0], [2.0], [3.0]], dtype=F64)
    s = torch.rand(7, 3, generator=g, dtype=F64) + 0.1
    for normalize in (False, True):
        qq = q / q.norm(dim=-1, keepdim=True) if normalize else q
        w, x, y, z = qq.unbind(-1)
        R = torch.stack(
            [
                torch.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)], -1),
                torch.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)], -1),
                torch.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1),
            ],
            -2,
        )
        expect = R @ torch.diag_embed(s**2) @ R.transpose(-1, -2)
        torch.testing.assert_close(covariance_from_quat_scale(q, s, normalize=normalize), expect, atol=1e-12, rtol=1e-12)
        # the implementation used for CUDA tensors
        torch.testing.assert_close(_covariance_few_ops(qq, s), expect, atol=1e-12, rtol=1e-12)


def test_inria_camera_matches_the_api_pixel_convention():
    from model.rasterizer.inria_backend import camera_settings

    W, H, f = 64, 48, 12.0 * 32
    c, s = math.cos(0.3), math.sin(0.3)
    V = torch.tensor([[c, 0, s, 0.1], [0, 1, 0, -0.2], [-s, 0, c, 9.3], [0, 0, 0, 1]])
    K = torch.tensor([[f, 0, W / 2], [0, f * 1.1, H / 2], [0, 0, 1]])
    cam = camera_settings(V, K, W, H, 0.01, 100.0)
    p = torch.tensor([[0.3, -0.5, 0.2], [-0.9, 0.4, -0.6]])
    # graphdeco: p_hom = [p, 1] @ projmatrix (row vectors), pixel = ((ndc + 1)·S − 1) / 2 with
    # pixel centres at integers, i.e. +0.5 in the API's convention
    hom = torch.cat([p, torch.ones(2, 1)], -1) @ cam["projmatrix"]
    ndc = hom[:, :2] / hom[:, 3:]
    pix = ((ndc + 1) * torch.tensor([W, H]) - 1) / 2 + 0.5
    pc = p @ V[:3, :3].T + V[:3, 3]
    expect = torch.stack([f * pc[:, 0] / pc[:, 2] + W / 2, f * 1.1 * pc[:, 1] / pc[:, 2] + H / 2], -1)
    torch.testing.assert_close(pix, expect, atol=1e-3, rtol=0)
    torch.testing.assert_close(
        (torch.cat([p, torch.ones(2, 1)], -1) @ cam["viewmatrix"])[:, :3], pc, atol=1e-5, rtol=0
    )
    torch.testing.assert_close(cam["campos"], -V[:3, :3].T @ V[:3, 3], atol=1e-5, rtol=0)
    assert cam["tanfovx"] == pytest.approx(W / (2 * f))
    off = K.clone()
    off[0, 2] += 3
    with pytest.raises(ValueError, match="principal point at the image centre"):
        camera_settings(V, off, W, H, 0.01, 100.0)


def test_inria_without_a_matching_build_says_so():
    scene = random_scene(1, 2, 5, seed=0, dtype=torch.float32)
    V, K = camera(8, 8, 30.0, dtype=torch.float32)
    with pytest.raises(ValueError, match="no diff-gaussian-rasterization build for 5 channels"):
        render_gaussians(**scene, viewmats=V, Ks=K, width=8, height=8, backend="inria")


@pytest.mark.slow
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=[
    pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")])])
def test_compiled_covariance_module_matches_eager_values_and_gradients(device):
    """The training's compiled region ``covariance`` (pipeline.step.COMPILED_REGIONS) computes the
    same Σ and the same gradients as the eager formula (on CUDA: the few-ops formula)."""
    from model.rasterizer import CovarianceFromQuatScale

    g = torch.Generator().manual_seed(3)
    q = (torch.randn(2, 300, 4, generator=g) * 0.05).to(device).requires_grad_()
    s = (torch.rand(2, 300, 3, generator=g) + 0.1).to(device).requires_grad_()
    weights = torch.randn(2, 300, 3, 3, generator=g).to(device)
    eager = CovarianceFromQuatScale(normalize=False)
    compiled = CovarianceFromQuatScale(normalize=False)
    compiled.compile(dynamic=False)
    results = []
    for module in (eager, compiled):
        cov = module(q, s)
        grads = torch.autograd.grad((cov * weights).sum(), (q, s))
        results.append((cov.detach(), *grads))
    for a, b in zip(*results):
        torch.testing.assert_close(b, a, atol=1e-6, rtol=1e-5)
    assert results[1][1].abs().sum() > 0


def test_unit_quaternions_and_scales_reproduce_raw_quaternion_covariances():
    from model.rasterizer import quat_scale_from_covariance

    g = torch.Generator().manual_seed(11)
    q = torch.randn(3, 500, 4, generator=g, dtype=F64) * torch.tensor([0.004, 0.05, 1.0], dtype=F64)[:, None, None]
    s = torch.rand(3, 500, 3, generator=g, dtype=F64) * 0.05 + 1e-4
    s[:, :50] = 0.02  # isotropic: every basis is an eigenbasis
    cov = covariance_from_quat_scale(q, s, normalize=False)  # the released semantics
    unit, scales = quat_scale_from_covariance(cov)
    assert torch.allclose(unit.norm(dim=-1), torch.ones(3, 500, dtype=F64), atol=1e-9)
    back = covariance_from_quat_scale(unit, scales, normalize=True)  # what gsplat builds
    assert torch.allclose(back, cov, atol=1e-12, rtol=1e-9), (back - cov).abs().max()
    cov32 = cov.float()  # float32 in, float32 out, same covariance to float32 precision
    u32, s32 = quat_scale_from_covariance(cov32)
    assert u32.dtype == torch.float32
    rel = (covariance_from_quat_scale(u32, s32, normalize=True) - cov32).abs().max() / cov32.abs().max()
    assert rel < 1e-5, rel

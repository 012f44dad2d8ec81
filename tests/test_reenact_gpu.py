"""GPU tests of the real-time reenactment path (skipped without CUDA): the eager Reenactor equals
the model's forward with gsplat, and the optimised path (bf16, channels-last, CUDA graphs) equals
eager fp32 within bf16 tolerance, frame after frame and after a change of source, and pipelined on
one or several renderer streams gives the same frames."""

from __future__ import annotations

import dataclasses
import importlib.util

import pytest
import torch

from model.config import CameraConfig, ModelConfig, RasterizerConfig
from model.flame import FlameModel
from model.gagavatar import GAGAvatar
from model.geometry import euler_to_matrix, look_at_transform
from model.procedural_head import load_generated_head
from model.reenactment import ReenactOptions, Reenactor

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(importlib.util.find_spec("gsplat") is None, reason="needs gsplat")]


@pytest.fixture(scope="module")
def paper():
    """The released architecture, random weights, renderer noise off (deterministic frames)."""
    torch.manual_seed(0)
    cfg = ModelConfig()
    cfg = dataclasses.replace(cfg, renderer=dataclasses.replace(cfg.renderer, noise=False))
    with torch.device("cuda"):
        model = GAGAvatar(cfg, CameraConfig(), RasterizerConfig(backend="gsplat")).eval()
    return model, FlameModel(load_generated_head()).cuda()


def _inputs(seed: int, frames: int = 2):
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(1, 3, 512, 512, generator=g)
    shape = torch.randn(1, 300, generator=g) * 0.5
    src_T = look_at_transform(9.3, euler_to_matrix(torch.tensor([0.2]), torch.tensor([0.05]), torch.zeros(1)))
    expression = torch.randn(frames, 100, generator=g) * 0.5
    pose = torch.zeros(frames, 6)
    pose[:, 3] = torch.rand(frames, generator=g) * 0.3
    eyes = torch.randn(frames, 6, generator=g) * 0.1
    yaw = (torch.rand(frames, generator=g) - 0.5) * 0.8
    T = look_at_transform(9.3, euler_to_matrix(yaw, torch.zeros(frames), torch.zeros(frames)))
    return [t.cuda() for t in (image, shape, src_T, expression, pose, eyes, T)]


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


def test_eager_reenactor_equals_forward_on_gpu(paper, monkeypatch):
    # true fp32 maths and fixed kernels: with TF32 convolutions the batch-1 reconstruction
    # (Reenactor) and the batch-2 one (forward) pick different kernels, and the unbounded plane
    # colours of the coarse splat then differ by ~0.06 (measured on an H200), which is not what this
    # test is about; a training test earlier in the session turns TF32 matmuls and cuDNN
    # autotuning on for the process (pipeline.step.configure_cuda_backends), so all three are set here
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    model, flame = paper
    image, shape, src_T, expression, pose, eyes, T = _inputs(0)
    reenactor = Reenactor(model, flame)
    assert reenactor.backend == "gsplat"
    reenactor.set_source(image, shape, src_T)
    out = reenactor(expression, pose, eyes, T)
    with torch.no_grad():
        vertices = flame(shape.expand(2, -1), expression, pose, eyes).vertices
        ref = model(image.expand(2, -1, -1, -1), src_T.expand(2, -1, -1), vertices, T)
    print("eager vs forward: coarse", (out.coarse - ref.coarse).abs().max().item(),
          "refined", (out.refined - ref.refined).abs().max().item())
    assert torch.allclose(out.coarse, ref.coarse, atol=1e-3)
    assert torch.allclose(out.refined, ref.refined, atol=1e-3)


def test_fast_path_matches_eager_fp32_within_bf16(paper):
    model, flame = paper
    eager = Reenactor(model, flame)
    fast = Reenactor(model, flame, ReenactOptions.fast())
    for seed in (1, 2):  # a second source refills the captured buffers
        image, shape, src_T, expression, pose, eyes, T = _inputs(seed)
        eager.set_source(image, shape, src_T)
        fast.set_source(image, shape, src_T)
        refined = []
        for i in range(2):  # consecutive frames through the same graphs
            one = (expression[i:i + 1], pose[i:i + 1], eyes[i:i + 1], T[i:i + 1])
            want = eager(*one)
            got = fast(*one)
            # the fast path also reconstructs in bf16: the float32-splatted coarse features (unbounded plane
            # colours) move by ~3% (measured 3.3e-2 on the H100); the refined image by ~0.5%
            coarse_rel, rel = _rel(got.coarse, want.coarse), _rel(got.refined, want.refined)
            mean_abs = (got.refined - want.refined).abs().mean().item()
            print(f"source {seed} frame {i}: coarse rel L2 {coarse_rel:.2e}, refined rel L2 {rel:.2e}, "
                  f"mean|Δ| {mean_abs:.2e}, notes {fast.notes}")
            assert coarse_rel < 6e-2 and rel < 2e-2 and mean_abs < 1e-2
            refined.append(got.refined.clone())
        assert (refined[0] - refined[1]).abs().max() > 1e-3  # the graphs follow their inputs
    assert not fast.notes, fast.notes  # every stage ran as a CUDA graph

    # two-stream pipelining: the same frames once the renderer stream is waited for
    fast.options = dataclasses.replace(fast.options, pipelined=True, renderer_streams=1)
    for i in range(2):
        out = fast(expression[i:i + 1], pose[i:i + 1], eyes[i:i + 1], T[i:i + 1])
        fast.synchronize()
        assert torch.equal(out.refined, refined[i])

    # renderers on three streams in turn: three frames in flight, each in its own output buffer
    fast.options = dataclasses.replace(fast.options, renderer_streams=3)
    for _ in range(2):
        outs = [fast(expression[i % 2:i % 2 + 1], pose[i % 2:i % 2 + 1], eyes[i % 2:i % 2 + 1],
                     T[i % 2:i % 2 + 1]).refined for i in range(3)]
        fast.synchronize()
        for i in range(3):
            assert torch.equal(outs[i], refined[i % 2])
    assert len(fast._renderer_graphs) == 3 and not fast.notes

"""The fast training step computes what the plain one does: torch.compile of the network's regions
with channels-last convolution weights gives the eager fp32 step's losses and gradients (bf16
tolerance; here they agree far closer), and torch.compile's work survives a process through the
portable compile cache (bench._compile_cache).

CPU-sized: the smoke preset at 32², traced with the "aot_eager" backend (the graphs dynamo and
AOTAutograd build for inductor, without its minutes of C++ code generation on a CPU).
"""

from __future__ import annotations

import io
import itertools
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from train_fixtures import truth_pairs

from pipeline.config import load_config
from pipeline.data import MockPairSource, collate_pairs
from pipeline.step import build_train_state, compile_regions, train_step

BF16_RTOL = 1e-2  # a bf16 mantissa: what a bf16 step may differ by


@pytest.fixture(scope="module")
def cfg():
    return load_config("smoke", ["camera.image_size=32", "loss.box_size=32"])


@pytest.fixture(scope="module")
def batch(cfg):
    pairs = truth_pairs(cfg, clips=1, pairs_per_clip=2)
    return collate_pairs(list(itertools.islice(MockPairSource(pairs).iter_from(0), 2)))


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-12))


def test_compiled_channels_last_step_gives_the_eager_fp32_losses_and_gradients(cfg, batch):
    torch.manual_seed(0)
    reference = build_train_state(cfg, torch.device("cpu"), channels_last=False)
    torch.manual_seed(0)
    fast = build_train_state(cfg, torch.device("cpu"), channels_last=True)
    compile_regions(fast.network, backend="aot_eager")
    conv = fast.network.gs_generator_l0.gaussian_conv[0].weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    want, _ = train_step(reference, batch)
    got, _ = train_step(fast, batch)
    assert set(got) == set(want)
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=BF16_RTOL, atol=1e-6, msg=name)
    assert want["total"] > 0 and want["lifting"] > 0 and want["image"] > 0
    worst, compared = 0.0, 0
    for (name, a), (_, b) in zip(reference.network.named_parameters(), fast.network.named_parameters()):
        assert (a.grad is None) == (b.grad is None), name
        if a.grad is not None and a.grad.norm() > 0:
            worst, compared = max(worst, _rel(b.grad, a.grad)), compared + 1
    assert compared > 50 and worst < BF16_RTOL, worst


def test_resuming_channels_last_weights_from_a_default_layout_checkpoint_trains_the_same(cfg, batch):
    """Adam's moments saved by a run with default-layout weights (e.g. on a CPU), loaded into a
    channels-last model, are put in the parameters' layout: the next steps match (the fused
    kernel would otherwise pair the wrong elements)."""
    states = {}
    for layout in (False, True):
        torch.manual_seed(0)
        states[layout] = build_train_state(cfg, torch.device("cpu"), channels_last=layout)
    for state in states.values():
        train_step(state, batch)
    saved = io.BytesIO()  # the default-layout run's checkpoint, as a file holds it
    torch.save({"model": states[False].network.state_dict(), "optimizer": states[False].optimizer.state_dict()}, saved)
    saved.seek(0)
    checkpoint = torch.load(saved, weights_only=True)
    assert not checkpoint["model"]["gs_generator_l0.gaussian_conv.0.weight"].is_contiguous(
        memory_format=torch.channels_last)
    states[True].network.load_state_dict(checkpoint["model"])
    states[True].optimizer.load_state_dict(checkpoint["optimizer"])
    for state in states.values():
        train_step(state, batch)
    reference = dict(states[False].network.named_parameters())
    worst = max(_rel(p.detach(), reference[n].detach()) for n, p in states[True].network.named_parameters()
                if reference[n].norm() > 0)
    assert worst < 1e-5, worst


_CHILD = textwrap.dedent("""
    import sys, torch
    from torch._dynamo.utils import counters
    from bench._compile_cache import CompileCache
    cache = CompileCache(sys.argv[2])
    if sys.argv[1] == "restore":
        print("restored", cache.restore().nbytes)
    f = torch.compile(lambda x: torch.sin(x) * 2 + x.cos(), dynamic=False)
    x = torch.linspace(0, 1, 64)
    assert torch.allclose(f(x), torch.sin(x) * 2 + x.cos())
    if sys.argv[1] == "save":
        print("saved", cache.save_if_new().nbytes)
    print("hits", counters["inductor"]["fxgraph_cache_hit"])
""")


def _child(mode: str, cache_file: str, cache_dir: str) -> dict[str, int]:
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache_dir, "TRITON_CACHE_DIR": os.path.join(cache_dir, "triton")}
    out = subprocess.run([sys.executable, "-c", _CHILD, mode, cache_file], env=env, capture_output=True, text=True,
                         timeout=300, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert out.returncode == 0, out.stderr[-2000:]
    return {line.split()[0]: int(line.split()[1]) for line in out.stdout.splitlines() if line.strip()}


def test_a_saved_compile_cache_is_a_hit_in_a_fresh_process_with_an_empty_local_cache(tmp_path):
    cache_file = str(tmp_path / "run" / "torch_compile_cache.bin")
    saved = _child("save", cache_file, str(tmp_path / "machine_a"))
    assert saved["saved"] > 0 and saved["hits"] == 0  # an empty local cache compiles
    restored = _child("restore", cache_file, str(tmp_path / "machine_b"))
    assert restored["restored"] == saved["saved"] and restored["hits"] >= 1


@pytest.mark.gpu
def test_inductor_compiled_renderer_trains_channels_last_on_gpu():
    """The paper-size StyleUNet, compiled by inductor with channels-last weights, takes a bf16
    training step and gives every parameter a gradient of its own shape (a [1,C,1,1] bias added
    directly once came back as [C] from the compiled backward, and autograd refused the step)."""
    from model.gagavatar import convs_channels_last_
    from model.style_unet import StyleUNet

    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    torch.manual_seed(0)
    device = torch.device("cuda")
    renderer = StyleUNet(32, 512, load_config("paper", []).model.renderer).to(device)
    convs_channels_last_(renderer)
    renderer.compile()
    x = torch.randn(2, 32, 512, 512, device=device).contiguous(memory_format=torch.channels_last)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = renderer(x)
    out.float().square().mean().backward()
    trained = [(n, p) for n, p in renderer.named_parameters() if p.requires_grad]
    assert trained and all(p.grad is not None and p.grad.shape == p.shape for _, p in trained)
    assert all(torch.isfinite(p.grad).all() for _, p in trained)


def test_compile_mode_reaches_every_region_and_cuda_graph_steps_are_marked(monkeypatch, cfg, batch):
    """train.compile_mode is inductor's mode for each compiled region; in a CUDA-graph mode every
    step first marks its beginning (else the graphs' outputs of the last step could be read after
    being overwritten)."""
    from torch import nn

    from pipeline.configtools import replace
    from pipeline.step import COMPILED_REGIONS

    compiled = []
    monkeypatch.setattr(nn.Module, "compile", lambda self, **kw: compiled.append((type(self).__name__, kw)))
    state = build_train_state(replace(cfg, **{"train.compile": True, "train.compile_mode": "reduce-overhead"}),
                              torch.device("cpu"))
    compile_regions(state.network, mode="reduce-overhead")
    regions = [n for n in COMPILED_REGIONS if getattr(state.network, n, None) is not None]
    assert len(compiled) == len(regions) >= 5
    assert all(kw == {"backend": "inductor", "mode": "reduce-overhead"} for _, kw in compiled)
    compiled.clear()
    compile_regions(state.network)
    assert all(kw == {"backend": "inductor"} for _, kw in compiled)

    marks = []
    monkeypatch.setattr(torch.compiler, "cudagraph_mark_step_begin", lambda: marks.append(1))
    monkeypatch.setattr("pipeline.step.replays_cuda_graphs", lambda train, device: True)
    train_step(state, batch)
    train_step(state, batch)
    assert marks == [1, 1]


def test_only_compiled_cuda_workers_in_a_graph_mode_replay_graphs(cfg):
    from pipeline.configtools import replace
    from pipeline.step import replays_cuda_graphs

    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    graphs = replace(cfg, **{"train.compile": True, "train.compile_mode": "reduce-overhead"}).train
    assert replays_cuda_graphs(graphs, cuda) and not replays_cuda_graphs(graphs, cpu)
    assert not replays_cuda_graphs(replace(graphs, compile=False), cuda)
    assert not replays_cuda_graphs(replace(graphs, compile_mode="default"), cuda)
    assert not replays_cuda_graphs(replace(graphs, compile_mode="max-autotune-no-cudagraphs"), cuda)


@pytest.mark.gpu
def test_cuda_graph_mode_trains_like_the_default_mode_on_gpu(cfg):
    """train.compile_mode=reduce-overhead (each compiled region replayed from CUDA graphs, the
    gradients come out of the graphs' memory pool) takes the same optimizer steps as the default
    inductor mode: per-step losses and the weights after 4 steps on alternating batches agree
    within bf16 tolerance, and eval-mode forwards between steps (validation, panels) neither
    corrupt training nor read each other's overwritten outputs."""
    from pipeline.configtools import replace
    from pipeline.step import predict

    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    device = torch.device("cuda")
    import numpy as np

    from preprocessing.synthetic import generate_clip
    from preprocessing.synthetic.truth_pairs import clip_pairs

    gpu_cfg = replace(cfg, **{"train.precision": "bf16", "train.compile": True})
    rng = np.random.default_rng(0)  # frames made in memory: the device has no video encoder
    pairs = []
    for identity in range(2):
        clip = generate_clip(gpu_cfg.synthetic, identity, 0)
        pairs += clip_pairs(clip.clip_id, clip.frames, clip.truth, gpu_cfg.camera.image_size, 4, rng)
    batches = [collate_pairs(pairs[i:i + 4]).to(device) for i in (0, 4)]
    runs = {}
    for mode in ("default", "reduce-overhead"):
        torch.manual_seed(0)
        state = build_train_state(replace(gpu_cfg, **{"train.compile_mode": mode}), device)
        compile_regions(state.network, mode=mode)
        start = torch.cat([p.detach().float().flatten() for p in state.network.parameters()])
        totals, views = [], []
        for step in range(4):
            losses, _ = train_step(state, batches[step % 2])
            totals.append(float(losses["total"]))
            # clones: a graph's output lives in its memory pool until the next step overwrites it
            # (reading it then raises); validation and panels read theirs before the next step
            first = predict(state, batches[0]).refined.clone()
            again = predict(state, batches[1]).refined.clone()
            views.append((first, again, predict(state, batches[0]).refined.clone()))
        moved = torch.cat([p.detach().float().flatten() for p in state.network.parameters()]) - start
        runs[mode] = (totals, moved, views)
    (want, want_moved, _), (got, got_moved, got_views) = runs["default"], runs["reduce-overhead"]
    print("losses", want, got)
    assert all(torch.isfinite(torch.tensor(got))) and got[-1] < got[0]
    torch.testing.assert_close(torch.tensor(got), torch.tensor(want), rtol=2e-2, atol=1e-4)
    # the 4 updates point the same way (gradients read from overwritten memory would not); Adam's
    # first steps are ±lr per weight, so bf16 noise flips some tiny-gradient weights: not equality
    cosine = float(torch.nn.functional.cosine_similarity(got_moved, want_moved, dim=0))
    print("update cosine", cosine)
    assert cosine > 0.9, cosine
    for first, other, repeat in got_views:  # a later eval forward did not overwrite the clone's source
        torch.testing.assert_close(repeat, first, rtol=1e-3, atol=1e-3)
        assert (other - first).abs().max() > 1e-3  # two different batches render differently


def test_a_node_that_cannot_build_triton_kernels_is_named_before_training_starts(monkeypatch, tmp_path):
    """Triton (inductor's GPU kernels) builds a C launcher per kernel: with no C compiler or no
    Python headers the compiled step would fail at its first step; the check names what is
    missing (the training loop then runs eagerly and warns)."""
    import shutil
    import sysconfig

    from pipeline.step import compile_unavailable_reason

    monkeypatch.setattr("importlib.util.find_spec", lambda name: object())  # as if Triton were installed
    monkeypatch.delenv("CC", raising=False)
    headers = tmp_path / "include"
    headers.mkdir()
    (headers / "Python.h").write_text("")
    monkeypatch.setattr(sysconfig, "get_paths", lambda: {"include": str(headers)})
    monkeypatch.setattr(shutil, "which", lambda name: "/usr/bin/gcc" if name == "gcc" else None)
    assert compile_unavailable_reason() is None
    monkeypatch.setattr(shutil, "which", lambda name: None)
    assert "C compiler" in compile_unavailable_reason()
    monkeypatch.setenv("CC", "/opt/cc")
    assert compile_unavailable_reason() is None
    (headers / "Python.h").unlink()
    assert "Python.h" in compile_unavailable_reason()
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    assert compile_unavailable_reason() == "Triton is not installed"

"""The Reenactor (CPU): its FLAME equals FlameModel, its frames equal the model's forward, and the
`gaga-reenact` CLI on generated inputs (a photo-like source, a driver video, tracked shards)."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from PIL import Image

from model.flame import FlameModel
from model.gagavatar import GAGAvatar
from model.geometry import euler_to_matrix, look_at_transform
from model.reenactment import ReenactOptions, Reenactor, SourceFlame
from pipeline.config import load_config


@pytest.fixture(scope="module")
def smoke():
    cfg = load_config("smoke", ["rasterizer.backend=torch"])  # renderer noise off: deterministic frames
    torch.manual_seed(0)
    model = GAGAvatar(cfg.model, cfg.camera, cfg.rasterizer).eval()
    return cfg, model, FlameModel.from_config(cfg.flame)


def _driver(b: int, seed: int) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    expression = torch.randn(b, 100, generator=g) * 0.5
    pose = torch.zeros(b, 6)
    pose[:, 3] = torch.rand(b, generator=g) * 0.3  # jaw open
    eyes = torch.randn(b, 6, generator=g) * 0.1
    yaw, pitch = (torch.rand(b, generator=g) - 0.5) * 0.8, (torch.rand(b, generator=g) - 0.5) * 0.3
    return expression, pose, eyes, look_at_transform(9.3, euler_to_matrix(yaw, pitch, torch.zeros(b)))


def test_source_flame_equals_flame_model(smoke):
    _, _, flame = smoke
    shape = torch.randn(1, 300) * 0.7
    expression, pose, eyes, _ = _driver(3, 1)
    pose[:, :3] = 0.1  # a global rotation too
    fast = SourceFlame(flame)
    fast.set_shape(shape)
    with torch.no_grad():
        want = flame(shape.expand(3, -1), expression, pose, eyes).vertices
        got = fast(expression, pose, eyes)
    assert torch.allclose(got, want, atol=1e-5), (got - want).abs().max()


def test_reenactor_equals_forward(smoke):
    cfg, model, flame = smoke
    reenactor = Reenactor(model, flame)
    size = cfg.camera.image_size
    for seed in (0, 1):  # a second source replaces the first
        g = torch.Generator().manual_seed(10 + seed)
        image = torch.rand(1, 3, size, size, generator=g)
        shape = torch.randn(1, 300, generator=g) * 0.5
        source_transform = look_at_transform(9.3, euler_to_matrix(torch.tensor([0.2 * seed]), torch.zeros(1), torch.zeros(1)))
        reenactor.set_source(image, shape, source_transform)
        expression, pose, eyes, transform = _driver(2, seed)
        out = reenactor(expression, pose, eyes, transform)
        with torch.no_grad():
            vertices = flame(shape.expand(2, -1), expression, pose, eyes).vertices  # source shape, driver codes
            ref = model(image.expand(2, -1, -1, -1), source_transform.expand(2, -1, -1), vertices, transform)
        assert out.refined.shape == (2, 3, size, size)
        assert torch.allclose(out.coarse, ref.coarse, atol=1e-4), (out.coarse - ref.coarse).abs().max()
        assert torch.allclose(out.refined, ref.refined, atol=1e-4), (out.refined - ref.refined).abs().max()
    # flat parameters (the shard layout) give the same frames
    from model.frame_params import FrameParams

    flat = torch.from_numpy(np.stack([FrameParams(np.zeros(300), expression[i], pose[i], eyes[i], transform[i],
                                                  np.zeros(4)).pack() for i in range(2)]))
    assert torch.allclose(reenactor.render_params(flat).refined, out.refined, atol=1e-6)


def test_cuda_graphs_are_refused_on_cpu(smoke):
    _, model, flame = smoke
    with pytest.raises(ValueError, match="CUDA"):
        Reenactor(model, flame, ReenactOptions.fast())
    with pytest.raises(RuntimeError, match="set_source"):
        Reenactor(model, flame)(*_driver(1, 0))


@pytest.mark.slow
def test_gaga_reenact_cli_with_a_video_and_with_shards(tmp_path, capsys):
    from test_evaluate import make_smoke_checkpoint, write_test_shards

    from jobs.reenact import main
    from preprocessing.synthetic import ensure_dataset, read_video, write_video

    cfg = load_config("smoke", ["rasterizer.backend=torch"])
    dataset = ensure_dataset(cfg.synthetic)
    shards = write_test_shards(tmp_path / "shards", dataset, cfg.camera.image_size)
    checkpoint = make_smoke_checkpoint(tmp_path / "checkpoint", cfg, shards["test_self"], steps=1)
    up = lambda f: np.asarray(Image.fromarray(f).resize((256, 256), Image.Resampling.BICUBIC))  # dlib needs ≥ 80 px faces
    Image.fromarray(up(read_video(dataset / "videos" / "synth002c00.mp4")[3])).save(tmp_path / "face.png")
    clip = read_video(dataset / "videos" / "synth003c00.mp4")[:6]
    write_video(np.stack([up(f) for f in clip]), tmp_path / "driver.mp4", fps=25, preset="ultrafast")
    common = ["--config", "smoke", "--checkpoint", str(checkpoint), "--source", str(tmp_path / "face.png"),
              "--set", "preprocess.tracking.rigid_steps=20", "--set", "preprocess.tracking.steps=30"]

    main([*common, "--driver", str(tmp_path / "driver.mp4"), "--out", str(tmp_path / "video.mp4")])
    summary = json.loads(capsys.readouterr().out)
    assert summary["frames"] == 6 and summary["driver"]["kind"] == "video" and summary["layout"] == "driver | result"
    frames = read_video(tmp_path / "video.mp4")
    size = cfg.camera.image_size
    assert frames.shape == (6, size, 2 * size, 3)
    pngs = sorted((tmp_path / "video_frames").glob("*.png"))
    assert len(pngs) == 6 and np.asarray(Image.open(pngs[0])).shape == (size, size, 3)
    assert any("smoke model" in w for w in summary["warnings"])

    main([*common, "--driver", shards["test_self"], "--driver-clip", "synth003c00", "--no-side-by-side",
          "--out", str(tmp_path / "shards.mp4"), "--frames", str(tmp_path / "shard_frames")])
    summary = json.loads(capsys.readouterr().out)
    assert summary["driver"]["kind"] == "shards" and summary["frames"] == 3  # frames 0, 8, 16 of the clip
    assert read_video(tmp_path / "shards.mp4").shape == (3, size, size, 3)
    assert len(list((tmp_path / "shard_frames").glob("*.png"))) == 3


class _ReplayByCalling:
    """Stands in for a CUDA graph on the CPU: "replay" reruns the captured function on the same
    static buffers, which is what a graph replay does with them."""

    def __init__(self, fn, warmup: int = 3) -> None:
        self.fn = fn
        self.output = fn()

    def replay(self):
        self.output = self.fn()
        return self.output


@pytest.mark.parametrize("splat_quats", [False, True])
def test_graphed_path_buffer_plumbing_on_cpu(smoke, monkeypatch, splat_quats):
    """The CUDA-graph path's static buffers (driver inputs, the means buffer, the refilled source
    cache, the renderer input) give the eager frames, across frames and a change of source."""
    import dataclasses

    import model.reenactment as reenactment

    cfg, model, flame = smoke
    monkeypatch.setattr(reenactment, "_Graph", _ReplayByCalling)
    eager = Reenactor(model, flame)
    graphed = Reenactor(model, flame, ReenactOptions(splat_quats=splat_quats))
    graphed.options = dataclasses.replace(graphed.options, cuda_graphs=True)  # past the CUDA check: the plumbing only
    size = cfg.camera.image_size
    for seed in (3, 4):
        g = torch.Generator().manual_seed(seed)
        image, shape = torch.rand(1, 3, size, size, generator=g), torch.randn(1, 300, generator=g) * 0.5
        source_transform = look_at_transform(9.3)[None]
        eager.set_source(image, shape, source_transform)
        graphed.set_source(image, shape, source_transform)
        expression, pose, eyes, transform = _driver(2, seed)
        for i in range(2):
            one = (expression[i:i + 1], pose[i:i + 1], eyes[i:i + 1], transform[i:i + 1])
            assert torch.allclose(graphed(*one).refined, eager(*one).refined, atol=1e-5)
    assert graphed._frame_graph is not None and graphed._renderer_graph is not None and graphed._recon_graph is not None
    assert not graphed.notes


def test_unit_quaternion_source_gives_the_covariance_frames(smoke):
    """``splat_quats`` (the fast path's source representation: raw-quaternion covariances
    re-expressed as unit quaternions + scales) renders the frames of the covariance path."""
    cfg, _, flame = smoke
    cfg = load_config("smoke", ["rasterizer.backend=torch", "model.expression.rotation_norm=official"])
    torch.manual_seed(0)
    model = GAGAvatar(cfg.model, cfg.camera, cfg.rasterizer).eval()  # non-unit expression quaternions
    plain, quats = Reenactor(model, flame), Reenactor(model, flame, ReenactOptions(splat_quats=True))
    size = cfg.camera.image_size
    g = torch.Generator().manual_seed(7)
    image, shape = torch.rand(1, 3, size, size, generator=g), torch.randn(1, 300, generator=g) * 0.5
    for r in (plain, quats):
        r.set_source(image, shape, look_at_transform(9.3)[None])
    assert "quats" in quats._cache and "covariances" not in quats._cache
    expression, pose, eyes, transform = _driver(2, 7)
    a, b = plain(expression, pose, eyes, transform), quats(expression, pose, eyes, transform)
    assert torch.allclose(a.features, b.features, atol=1e-4), (a.features - b.features).abs().max()
    assert torch.allclose(a.refined, b.refined, atol=1e-4)


@pytest.mark.parametrize("mode", ["reduce-overhead", "max-autotune"])
def test_compile_modes_that_capture_their_own_graphs_are_refused(mode):
    with pytest.raises(ValueError, match="max-autotune-no-cudagraphs"):
        ReenactOptions.fast(compile=True, compile_mode=mode)
    ReenactOptions.fast(compile=True, compile_mode="max-autotune-no-cudagraphs")  # the tuned mode is accepted


def test_renderer_with_bf16_weights_cast_once_renders_what_autocast_renders(smoke):
    """The fast path's StyleUNet copy (weights stored in bf16, Σw² from the float32 weights, the
    style modulations fused into one matmul) gives what bf16 autocast of the float32 model gives;
    the model itself is not changed."""
    from model.reenactment import inference_renderer
    from model.style_unet import ModulatedConv2d

    cfg, model, _ = smoke
    renderer = model.upsampler
    before = {k: v.clone() for k, v in renderer.state_dict().items()}
    converted = inference_renderer(renderer, ReenactOptions(precision="bf16", bf16_weights=True))
    assert converted is not renderer and renderer.conv_body_first.weight.dtype == torch.float32
    assert converted.conv_body_first.weight.dtype == torch.bfloat16
    assert all(m.weight_sq_sum is not None for m in converted.modules() if isinstance(m, ModulatedConv2d))
    assert converted.stylegan_decoder.fused_modulation is not None and renderer.stylegan_decoder.fused_modulation is None
    x = torch.rand(2, renderer.conv_body_first.in_channels, cfg.camera.image_size, cfg.camera.image_size)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        want, got = renderer(x).float(), converted(x).float()
    assert torch.equal(got, want), (got - want).abs().max()  # autocast casts the same weights the same way
    assert all(torch.equal(v, renderer.state_dict()[k]) for k, v in before.items())
    assert inference_renderer(renderer, ReenactOptions(bf16_weights=True)) is renderer  # fp32: nothing to cast


def test_fused_modulation_computes_what_the_separate_layers_compute(smoke):
    """float32: the decoder's one stacked style modulation gives the separate layers' output to
    rounding (the separate layers are what training runs), and it is what the fused path uses."""
    cfg, model, _ = smoke
    fused = copy.deepcopy(model.upsampler)
    fused.stylegan_decoder.fuse_modulations()
    x = torch.rand(2, fused.conv_body_first.in_channels, cfg.camera.image_size, cfg.camera.image_size)
    with torch.no_grad():
        want, got = model.upsampler(x), fused(x)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
        fused.stylegan_decoder.fused_modulation.bias.add_(0.5)  # the stacked layer is the one used
        assert (fused(x) - got).abs().max() > 1e-3
        assert torch.equal(model.upsampler(x), want)


@pytest.mark.parametrize("demod_reduction", [False, True])
def test_small_kernel_renderer_computes_what_the_decoder_computes(smoke, demod_reduction):
    """float32: the fast path's StyleUNet copy with its ToRGB convs zero-padded to 8 output
    channels and its demodulations as products + sums gives the model's output to rounding, and
    its padded convs are the ones used; the model is not changed."""
    from model.reenactment import inference_renderer, small_kernel_renderer_
    from model.style_unet import ModulatedConv2d, ToRGB

    cfg, model, _ = smoke
    renderer = model.upsampler
    before = {k: v.clone() for k, v in renderer.state_dict().items()}
    converted = copy.deepcopy(renderer)
    converted.stylegan_decoder.fuse_modulations()
    small_kernel_renderer_(converted, demod_reduction=demod_reduction)
    convs = [m for m in converted.modules() if isinstance(m, ModulatedConv2d)]
    assert convs and all(m.demod_reduction is demod_reduction and m.weight.shape[1] % 8 == 0 for m in convs)
    to_rgbs = [m.modulated_conv for m in converted.modules() if isinstance(m, ToRGB)]
    assert to_rgbs and all(m.weight.shape[1] == 8 and m.out_ch == 3 for m in to_rgbs)
    x = torch.rand(2, renderer.conv_body_first.in_channels, cfg.camera.image_size, cfg.camera.image_size)
    with torch.no_grad():
        want, got = renderer(x), converted(x)
        torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
        last = to_rgbs[-1].weight
        last[:, 3:] = 1.0  # the padding is sliced off
        assert torch.equal(converted(x), got)
        last[:, :3] += 0.5  # the padded conv is the one used
        assert (converted(x) - got).abs().max() > 1e-3
    assert all(torch.equal(v, renderer.state_dict()[k]) for k, v in before.items())
    assert not any(m.demod_reduction for m in renderer.modules() if isinstance(m, ModulatedConv2d))
    assert ReenactOptions.fast().small_kernels and not ReenactOptions().small_kernels
    fast_copy = inference_renderer(renderer, ReenactOptions(small_kernels=True))
    assert all(m.modulated_conv.weight.shape[1] == 8 for m in fast_copy.modules() if isinstance(m, ToRGB))


@pytest.mark.parametrize("graphed", [False, True])
def test_several_streams_in_one_batch_give_each_stream_its_single_source_frames(smoke, monkeypatch, graphed):
    """S sources, B frames per call, frame i from source ``sources[i]``: each frame equals the
    one-source, one-frame render; the graph path's buffers follow a new assignment and new sources."""
    import dataclasses

    import model.reenactment as reenactment

    cfg, model, flame = smoke
    monkeypatch.setattr(reenactment, "_Graph", _ReplayByCalling)
    size = cfg.camera.image_size
    g = torch.Generator().manual_seed(5)
    images, shapes = torch.rand(2, 3, size, size, generator=g), torch.randn(2, 300, generator=g) * 0.5
    cams = look_at_transform(9.3, euler_to_matrix(torch.tensor([0.0, 0.3]), torch.zeros(2), torch.zeros(2)))
    streams = Reenactor(model, flame, ReenactOptions(splat_quats=graphed))
    if graphed:
        streams.options = dataclasses.replace(streams.options, cuda_graphs=True)  # past the CUDA check: the plumbing only
    single = Reenactor(model, flame)
    expression, pose, eyes, transform = _driver(3, 6)
    for sources, flip in (((0, 1, 1), False), ((1, 0, 0), False), ((1, 0, 0), True)):
        imgs, shps = (images.flip(0), shapes.flip(0)) if flip else (images, shapes)
        streams.set_source(imgs, shps, cams)
        out = streams(expression, pose, eyes, transform, sources=sources)
        for i, s in enumerate(sources):
            single.set_source(imgs[s:s + 1], shps[s:s + 1], cams[s:s + 1])
            want = single(expression[i:i + 1], pose[i:i + 1], eyes[i:i + 1], transform[i:i + 1])
            assert torch.allclose(out.refined[i], want.refined[0], atol=1e-5), (sources, flip, i)
    with pytest.raises(ValueError, match="sources"):
        streams(expression, pose, eyes, transform, sources=(0, 2, 1))

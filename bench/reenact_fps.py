"""Reenactment speed, the paper's Table 2 protocol: the source reconstructed and cached, driving
frames with their parameters precomputed on the GPU, 512² output, batch 1; frames per second over
``--frames`` frames after warm-up (CUDA-synchronised wall clock around them), repeated over
``--windows`` windows (median and min–max), plus the per-frame latency (synchronised each frame),
the one-shot reconstruction latency, the warm-up until the first frame, and the refined image's
PSNR against the eager fp32 path on the same frames (faithfulness of the fast paths).

    python -m bench.reenact_fps --out bench/results/reenact_fps_h200.json      # random weights
    python -m bench.reenact_fps --checkpoint assets/GAGAvatar.pt --source face.jpg --out ...
    python -m bench.reenact_fps --smoke          # CPU code check on the smoke preset (eager only)

(the trained checkpoint of bench/results/reenact_fps_h100_trained.json: see bench/_pair_shards.py)

Model: the paper architecture with random weights, or ``--checkpoint`` (a run folder of ours, one of
its checkpoint folders, or the released ``GAGAvatar.pt``; the architecture, camera and FLAME come
from it), always with the StyleUNet's stored noise maps (``renderer.noise: stored``, the released
decoder's randomize_noise=False path): every path then draws the same noise, so their images can
be compared; fresh random noise costs the same. Source: ``--source noise`` (a uniform-noise image,
random FLAME shape, frontal camera) or a photo / a tracked shard prefix (``gaga-reenact``'s source
path: a photo is cropped and tracked, from shards the first frame of the first clip).

The splatting's cost depends on the Gaussians the weights make: ``gaussians_on_screen`` in the JSON gives
their screen-space size on the first driving frame and gsplat's tile intersections (pairs of a
16² tile and a Gaussian whose opacity-aware box touches it — the rows the rasterizer sorts and
walks). Random weights put every Gaussian at half the largest scale (sigmoid(0) · 0.05), ~8 px
σ at 512², so a frame has ~3 M intersections: a worst case, not a trained model.

Variants, measured in this order (the JSON is rewritten after each):
  model_fp32       FlameModel + GAGAvatar.render per frame (the forward path; FLAME on the GPU)
  eager_fp32       model.reenactment.Reenactor, fp32 (TF32 matmuls/convs, the released recipe):
                   the reference of every PSNR
  fast             Reenactor, bf16 + channels-last + CUDA graphs (FLAME/camera and StyleUNet), the
                   source as unit quaternions + scales
  fast_compiled    fast + torch.compile of the StyleUNet (inductor's default mode)
  fast_compiled_autocast_weights  fast_compiled without bf16_weights (autocast casts every frame)
  *_pipelined      the same graphs, the StyleUNet of frame k on another stream during frame k+1
  *_pipelined_<n>streams  the compiled variants' StyleUNets on n streams in turn (--renderer-streams;
                   the largest n is the one profiled with --profile-frames, and its two halves
                   — splatting, renderer graphs — timed alone: ``halves``)
  streams_<B>      fast_compiled (pipelined) with B sources, each driven by its own driver, in
                   one batch of B frames per call: total frames per second of all streams
  fast_compiled_<mode> for each other inductor mode in --compile-modes (e.g. the autotuned one)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from bench._report import command_line, gpu_state, spread, write_report

TARGETS = {"fast_fps_min": 450.0, "first_frame_s_max": 120.0, "refined_psnr_db_min": 45.0,
           "reconstruction_ms_max": 10.0}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def driving_frames(n: int, device: torch.device, seed: int = 0) -> dict[str, torch.Tensor]:
    """n precomputed driving frames: expression [n,100], pose [n,6] (jaw), eyes [n,6], camera [n,3,4]."""
    from model.geometry import euler_to_matrix, look_at_transform

    g = torch.Generator().manual_seed(seed)
    t = torch.linspace(0, 1, n)
    pose = torch.zeros(n, 6)
    pose[:, 3] = 0.15 + 0.15 * torch.sin(12 * t)  # talking jaw
    frames = {
        "expression": torch.randn(n, 100, generator=g) * 0.4,
        "pose": pose,
        "eyes": torch.randn(n, 6, generator=g) * 0.05,
        "transform": look_at_transform(9.3, euler_to_matrix(0.4 * torch.sin(3 * t), 0.15 * torch.sin(5 * t),
                                                            0.05 * torch.sin(2 * t))),
    }
    return {k: v.to(device) for k, v in frames.items()}


def timed_frames(render, frames: dict[str, torch.Tensor], warmup: int, windows: int, device: torch.device,
                 batch: int = 1, finish=None) -> dict:
    """FPS over all frames of a window (one synchronised clock around them), ``windows`` times,
    and per-call latency (synchronised each call), after ``warmup`` calls. ``batch`` frames per
    call (streams); ``finish`` (pipelined) makes the stream wait for the last frame's renderer."""
    n = frames["expression"].shape[0]
    calls = n // batch
    one = lambda i: {k: v[i * batch:(i + 1) * batch] for k, v in frames.items()}  # noqa: E731
    for i in range(warmup):
        render(**one(i % calls))
    _sync(device)
    fps = []
    for _ in range(windows):
        t0 = time.perf_counter()
        for i in range(calls):
            render(**one(i))
        if finish is not None:
            finish()
        _sync(device)
        fps.append(calls * batch / (time.perf_counter() - t0))
    latency = []
    for i in range(min(calls, 50)):
        t1 = time.perf_counter()
        render(**one(i))
        if finish is not None:
            finish()
        _sync(device)
        latency.append(1000.0 * (time.perf_counter() - t1))
    return {"fps": round(statistics.median(fps), 1), "fps_spread": spread(fps, 1),
            "ms_per_frame": round(1000.0 / statistics.median(fps), 3), "frames_per_window": calls * batch,
            "frames_per_call": batch, "latency_median_ms": round(statistics.median(latency), 3),
            "latency_max_ms": round(max(latency), 3)}


def timed(fn, reps: int, device: torch.device, warmup: int = 3) -> float:
    """Median milliseconds of ``fn`` (synchronised around each call)."""
    for _ in range(warmup):
        fn()
    _sync(device)
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        out.append(1000.0 * (time.perf_counter() - t0))
    return round(statistics.median(out), 3)


def psnr_db(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = (a.float().clamp(0, 1) - b.float().clamp(0, 1)).square().mean()
    return round(float(10 * torch.log10(1.0 / mse.clamp_min(1e-12))), 2)


def bench(args: argparse.Namespace, info: dict) -> dict:
    from model.config import RasterizerConfig
    from model.reenactment import ReenactOptions

    start = time.perf_counter()
    device = torch.device("cpu" if args.smoke else "cuda")
    torch.set_float32_matmul_precision("high")  # the released recipe: fp32 with TF32
    torch.backends.cudnn.benchmark = True
    raster = RasterizerConfig(backend="torch" if args.smoke else args.backend)
    model, flame, weights = bench_model(args, raster, device)
    size = model.camera.image_size
    streams = max(1, args.streams)
    sources, shapes, source_T, source_info = bench_sources(args, model, flame, streams, device)
    source, shape = sources[:1], shapes[:1]
    frames = driving_frames(args.frames, device)
    check = {k: v[:args.check_frames] for k, v in frames.items()}
    result = info
    result.update({"model": {"gaussians": model.num_gaussians, "parameters": sum(p.numel() for p in model.parameters()),
                             "image_size": size, "renderer_noise": model.config.renderer.noise},
                   "weights": weights, "source": source_info,
                   "rasterizer": raster.backend, "gpu_before": gpu_state() if device.type == "cuda" else None,
                   "variants": {}, "reconstruction_ms": {}, "stages_ms": {}})
    save = lambda: write_report(result, args.out, echo=False)  # noqa: E731 - after every variant

    # --- the forward path: FLAME per frame + GAGAvatar.render on the cached reconstruction
    with torch.no_grad():
        cache = model.reconstruct(source, source_T[:1])

        def model_render(expression, pose, eyes, transform):
            verts = flame(shape, expression, pose, eyes).vertices
            return model.render(cache, verts, transform)

        result["gaussians_on_screen"] = gaussian_statistics(model, cache, flame(shape, frames["expression"][:1], frames["pose"][:1],
                                                                      frames["eyes"][:1]).vertices, frames["transform"][:1])
        print("gaussians_on_screen", json.dumps(result["gaussians_on_screen"]), flush=True)
        result["variants"]["model_fp32"] = timed_frames(model_render, frames, args.warmup, args.windows, device)
        result["reconstruction_ms"]["fp32"] = timed(lambda: model.reconstruct(source, source_T[:1]), args.recon_reps, device)
    print("model_fp32", result["variants"]["model_fp32"], result["reconstruction_ms"], flush=True)
    save()

    variants: list[tuple[str, object, int]] = [("eager_fp32", ReenactOptions(), 1)]
    if not args.smoke:
        variants.append(("fast", ReenactOptions.fast(), 1))
        if args.compile:
            variants.append(("fast_compiled", ReenactOptions.fast(compile=True), 1))
            if args.autocast_weights:  # what casting the weights once buys
                variants.append(("fast_compiled_autocast_weights",
                                 dataclasses.replace(ReenactOptions.fast(compile=True), bf16_weights=False), 1))
            if streams > 1:
                variants.append((f"streams_{streams}", ReenactOptions.fast(compile=True), streams))
            for mode in filter(None, args.compile_modes.split(",")):
                if mode != "default":
                    variants.append((f"fast_compiled_{mode.replace('-', '_')}",
                                     dataclasses.replace(ReenactOptions.fast(compile=True), compile_mode=mode), 1))
    reference = None
    for name, options, batch in variants:
        if name != "eager_fp32" and time.perf_counter() - start > args.max_seconds:
            result["variants"][name] = {"skipped": f"over --max-seconds {args.max_seconds} before it started"}
            save()
            continue
        try:
            cell = measure_variant(model, flame, options, batch, sources[:batch] if batch > 1 else source,
                                   shapes[:batch] if batch > 1 else shape, source_T[:batch], frames, check, args,
                                   device, reference)
        except Exception as exc:  # one broken variant is reported; the others are still measured
            cell = {"error": f"{type(exc).__name__}: {exc}"[:2000]}
        reference = cell.pop("_refined", None) if name == "eager_fp32" else reference
        cell.pop("_refined", None)
        stages = cell.pop("_stages", None)
        if stages:
            result["stages_ms"][name] = stages
        pipelined = cell.pop("_pipelined", None)
        result["variants"][name] = cell
        print(name, json.dumps(cell), flush=True)
        for suffix, sub in (pipelined or {}).items():
            result["variants"][f"{name}_{suffix}"] = sub
            print(f"{name}_{suffix}", json.dumps(sub), flush=True)
        save()
    summary = summarize(result)
    if summary:
        result["summary"] = summary
    result["gpu_after"] = gpu_state() if device.type == "cuda" else None
    result["seconds"] = round(time.perf_counter() - start, 1)
    return result


def bench_model(args: argparse.Namespace, raster, device: torch.device) -> tuple[torch.nn.Module, torch.nn.Module, dict]:
    """The model, its FLAME layer and what its weights are: random (seed 0; the paper
    architecture, or the smoke preset's with ``--smoke``) or ``--checkpoint``'s; the StyleUNet
    draws its stored noise maps either way."""
    from model.config import CameraConfig, ModelConfig
    from model.flame import FlameModel
    from model.gagavatar import GAGAvatar
    from model.procedural_head import load_generated_head
    from pipeline.configtools import from_dict, load_preset_dict

    def stored_noise(model_cfg: ModelConfig) -> ModelConfig:
        return dataclasses.replace(model_cfg, renderer=dataclasses.replace(model_cfg.renderer, noise="stored"))

    if args.checkpoint:
        from pipeline.config import load_config
        from pipeline.eval.checkpoints import inspect_checkpoint, load_flame, load_model

        info = inspect_checkpoint(args.checkpoint, load_config("smoke" if args.smoke else "paper"))
        info.config = dataclasses.replace(info.config, model=stored_noise(info.config.model), rasterizer=raster)
        weights = info.summary()  # kind "ours" or "official", step, warnings
        weights["path"] = weights["chosen"] = Path(info.path).name  # a machine's paths mean nothing elsewhere
        return load_model(info, device), load_flame(info, device), weights
    if args.smoke:
        data = load_preset_dict("smoke")
        model_cfg, camera = from_dict(ModelConfig, data["model"]), from_dict(CameraConfig, data["camera"])
    else:
        model_cfg, camera = ModelConfig(), CameraConfig()
    torch.manual_seed(0)
    with torch.device(device):  # build on the device: the paper model's random init is slow on a CPU
        model = GAGAvatar(stored_noise(model_cfg), camera, raster).eval()
    weights = {"kind": "random", "seed": 0, "flame": "generated stand-in head"}
    return model, FlameModel(load_generated_head()).to(device), weights


def bench_sources(args: argparse.Namespace, model, flame, streams: int, device: torch.device):
    """``streams`` source images [S,3,H,W], FLAME shapes [S,300] and cameras [S,3,4]: uniform
    noise with random shapes and a frontal camera (``--source noise``, seed 1), or the one source
    of ``--source`` (a photo, tracked, or a tracked shard prefix) repeated; and what they are."""
    from model.geometry import look_at_transform

    size = model.camera.image_size
    if args.source == "noise":
        g = torch.Generator().manual_seed(1)
        images = torch.rand(streams, 3, size, size, generator=g)
        shapes = torch.randn(streams, 300, generator=g) * 0.5
        transforms = look_at_transform(9.3)[None].expand(streams, 3, 4)
        return images.to(device), shapes.to(device), transforms.contiguous().to(device), {"kind": "noise", "seed": 1}
    from model.frame_params import split_params
    from pipeline.config import load_config
    from pipeline.reenact import load_source

    cfg = load_config("smoke" if args.smoke else "paper")
    cfg = dataclasses.replace(cfg, camera=model.camera)
    tracked = load_source(args.source, cfg, flame, size, device)
    if tracked.images.shape[1:3] != (size, size):
        raise ValueError(f"--source {args.source}: {tracked.images.shape[2]}×{tracked.images.shape[1]} frames, "
                         f"the model renders {size}²")
    image = torch.from_numpy(tracked.images.copy()).permute(0, 3, 1, 2).float().div(255.0)
    params = split_params(torch.from_numpy(tracked.params))
    repeat = lambda t: t[:1].expand(streams, *t.shape[1:]).contiguous().to(device)  # noqa: E731
    info = {"kind": tracked.kind, "name": tracked.name, "notes": list(tracked.notes)}
    return repeat(image), repeat(params["shape"]), repeat(params["transform_matrix"]), info


def tile_spans(means2d: torch.Tensor, cov2d: torch.Tensor, opacity: torch.Tensor, size: int,
               tile: int = 16) -> torch.Tensor:
    """Tiles each 2D Gaussian is binned into, gsplat's rule: the opacity-aware box of half-widths
    ceil(min(3.33, √(2 ln(255·o)))·σ) per axis (σ² the projected variance, low-pass included),
    tiles from floor((m − r)/tile) to ceil((m + r)/tile), clamped to the image; 0 for a Gaussian
    below 1/255 opacity. means2d [N,2], cov2d [N,3] (xx, xy, yy), opacity [N] → [N]."""
    n_tiles = math.ceil(size / tile)
    extend = torch.sqrt(2 * torch.log(opacity.clamp_min(1 / 255) * 255)).clamp(max=3.33)

    def span(mean: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
        radius = torch.ceil(extend * var.sqrt())
        lo = torch.floor((mean - radius) / tile).clamp(0, n_tiles)
        return (torch.ceil((mean + radius) / tile).clamp(0, n_tiles) - lo).clamp_min(0)

    return span(means2d[:, 0], cov2d[:, 0]) * span(means2d[:, 1], cov2d[:, 2]) * (opacity >= 1 / 255)


@torch.no_grad()
def gaussian_statistics(model, cache, vertices: torch.Tensor, transform: torch.Tensor, tile: int = 16) -> dict:
    """One frame's Gaussians on screen: their size (σ of the projected covariance along its
    longer axis, pixels), opacity and largest 3D scale (p10/p50/p90), and gsplat's (tile, Gaussian)
    intersections (:func:`tile_spans`) — the rows its rasterizer sorts and walks, which with the
    per-pixel work set the splatting's cost."""
    from model.gaussian_heads import GaussianAttributes
    from model.geometry import intrinsics, transform_to_viewmat
    from model.rasterizer.torch_backend import project_gaussians

    attrs = GaussianAttributes.cat([cache.expression, cache.lifted])
    means = torch.cat([vertices.float(), cache.lifted_points.float()], dim=1)
    cov = model.covariance(attrs.rotations.float(), attrs.scales.float())
    size = model.camera.image_size
    Ks = intrinsics(model.camera.focal, size, size, (1,), device=means.device)
    proj = project_gaussians(means, cov, transform_to_viewmat(transform.float()), Ks, size, size,
                             model.rasterizer.near_plane, model.rasterizer.far_plane)
    opacity = attrs.opacities.float()[0, :, 0]
    drawn = proj.valid[0] & (opacity >= 1 / 255)
    tiles = tile_spans(proj.means2d[0], proj.cov2d[0], opacity, size, tile) * drawn
    a, b, c = proj.cov2d[0][drawn].unbind(-1)
    sigma = torch.sqrt(0.5 * (a + c) + torch.sqrt(0.25 * (a - c) ** 2 + b * b))

    def quantiles(t: torch.Tensor) -> list[float]:
        return [round(float(q), 3) for q in torch.quantile(t.float(), torch.tensor([0.1, 0.5, 0.9], device=t.device))]

    return {"drawn": int(drawn.sum()), "of": int(drawn.numel()), "sigma_px_p10_p50_p90": quantiles(sigma),
            "opacity_p10_p50_p90": quantiles(opacity[drawn]),
            "largest_scale_p10_p50_p90": quantiles(attrs.scales.float()[0].amax(-1)[drawn]),
            "tile": tile, "tile_intersections": int(tiles.sum()),
            "tiles_per_gaussian": round(float(tiles.sum() / drawn.sum().clamp_min(1)), 2)}


def measure_variant(model, flame, options, batch: int, source, shape, source_T, frames, check, args, device,
                    reference: torch.Tensor | None) -> dict:
    """One Reenactor variant: warm-up to the first frame, FPS windows, set_source latency,
    PSNR of its refined frames against ``reference`` (the eager fp32 frames), stage split; for
    graph-capturing options also the pipelined mode."""
    from model.reenactment import Reenactor

    t0 = time.perf_counter()
    reenactor = Reenactor(model, flame, options)
    reenactor.set_source(source, shape, source_T)
    reenactor(**{k: v[:batch] for k, v in frames.items()})  # builds graphs / compiles
    _sync(device)
    cell = {"options": dataclasses.asdict(options), "sources": int(source.shape[0]),
            "first_frame_s": round(time.perf_counter() - t0, 2)}
    cell.update(timed_frames(reenactor, frames, args.warmup, args.windows, device, batch=batch))
    cell["set_source_ms"] = timed(lambda: reenactor.set_source(source, shape, source_T), args.recon_reps, device)
    refined = []
    for i in range(check["expression"].shape[0] // batch * batch):  # frame i of the check set, batch slot 0
        one = {k: v[i:i + 1].expand(batch, *v.shape[1:]) for k, v in check.items()}
        refined.append(reenactor(**one).refined[:1].clone())
    reenactor.synchronize()
    refined = torch.cat(refined) if refined else None
    if reference is not None and refined is not None:
        cell["refined_psnr_db_vs_eager_fp32"] = psnr_db(refined, reference)
    cell["notes"] = list(reenactor.notes)
    cell["_refined"] = refined
    if batch == 1:
        cell["_stages"] = stage_split(reenactor, frames, device, args.recon_reps)
    if options.cuda_graphs:  # the same graphs, renderer on other streams (throughput)
        cell["_pipelined"] = {}
        counts = sorted({1, *(args.renderer_streams if options.compile and batch == 1 else ())})
        for n in counts:
            reenactor.options = dataclasses.replace(options, pipelined=True, renderer_streams=n)
            sub = {"options": dataclasses.asdict(reenactor.options),
                   **timed_frames(reenactor, frames, args.warmup, args.windows, device, batch=batch,
                                  finish=reenactor.synchronize)}
            if n == counts[-1] and args.profile_frames and options.compile and batch == 1 and device.type == "cuda":
                sub["profile"] = profile_frames(reenactor, frames, args.profile_frames)
                try:  # one more explanation of the frame time; its failure must not cost the cell
                    sub["halves"] = halves_throughput(reenactor, frames, args.frames, args.windows, device)
                except Exception as exc:
                    sub["halves"] = {"error": f"{type(exc).__name__}: {exc}"[:500]}
            cell["_pipelined"]["pipelined" if n == 1 else f"pipelined_{n}streams"] = sub
    return cell


@torch.no_grad()
def halves_throughput(reenactor, frames: dict[str, torch.Tensor], calls: int, windows: int,
                      device: torch.device) -> dict:
    """Frames per second of each half of a pipelined frame alone, ``calls`` back to back per
    window: the splatting (gsplat on one frame's FLAME vertices) and the renderer graphs (on
    their streams in turn, one frame's features); and the FPS if the halves did not overlap at all
    (1 / the sum of their frame times): when the pipelined FPS is that, each half fills the GPU."""
    one = {k: v[:1] for k, v in frames.items()}
    slots = reenactor._slots_for(1, None)
    verts = reenactor.vertices(one["expression"], one["pose"], one["eyes"]).float()
    means = torch.cat([verts, slots["lifted_points"]], dim=1)
    features = reenactor._splat(means, one["transform"], slots).image.clone()

    def window_fps(fn, finish=lambda: None) -> list[float]:
        for _ in range(10):
            fn()
        finish()
        _sync(device)
        out = []
        for _ in range(windows):
            t0 = time.perf_counter()
            for _ in range(calls):
                fn()
            finish()
            _sync(device)
            out.append(calls / (time.perf_counter() - t0))
        return out

    splat = window_fps(lambda: reenactor._splat(means, one["transform"], slots))
    renderer = window_fps(lambda: reenactor._replay_renderer(features), reenactor.synchronize)
    a, b = statistics.median(splat), statistics.median(renderer)
    return {"splatting_fps": spread(splat, 1), "renderer_fps": spread(renderer, 1),
            "fps_if_not_overlapped": round(1.0 / (1.0 / a + 1.0 / b), 1)}


def profile_frames(reenactor, frames: dict[str, torch.Tensor], n: int) -> dict:
    """Where a pipelined frame's time goes: ``n`` frames under torch.profiler → GPU busy/idle
    ms per frame and the idle gaps' causes (:func:`pipeline.gpu_timeline.idle_report`), and the
    top kernels by GPU time per frame."""
    from torch.profiler import ProfilerActivity, profile

    from pipeline.gpu_timeline import idle_report
    from pipeline.profiling import operator_rows

    count = frames["expression"].shape[0]
    one = lambda i: {k: v[i % count:i % count + 1] for k, v in frames.items()}  # noqa: E731
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for i in range(n):
            reenactor(**one(i))
        reenactor.synchronize()
        torch.cuda.synchronize()
    with tempfile.TemporaryDirectory() as tmp:
        trace = Path(tmp) / "trace.json"
        prof.export_chrome_trace(str(trace))
        timeline = idle_report(trace, n)
    return {"frames": n, "gpu_timeline": timeline, "kernels": operator_rows(prof, n, top=25, on_gpu=True)}


def summarize(result: dict) -> dict | None:
    """The best batch-1 optimised variant against the faster of the two fp32 eager baselines (the
    forward path and the eager Reenactor), its warm-up and faithfulness, the streams' total FPS,
    and the targets."""
    v = result["variants"]
    fast = {k: c for k, c in v.items() if k.startswith("fast") and "fps" in c}
    if not fast:
        return None
    best = max(fast, key=lambda k: fast[k]["fps"])
    base_name = best.split("_pipelined")[0]
    baseline = max(("model_fp32", "eager_fp32"), key=lambda k: v[k].get("fps", 0))
    base = v[baseline]["fps"]
    recon = min(c["set_source_ms"] for c in fast.values() if "set_source_ms" in c)
    first = v[base_name].get("first_frame_s")
    psnr = v[base_name].get("refined_psnr_db_vs_eager_fp32")
    stream_cells = {k: c["fps"] for k, c in v.items() if k.startswith("streams") and "fps" in c}
    return {
        "baseline_variant": baseline, "baseline_fps": base, "best_variant": best, "fast_fps": fast[best]["fps"],
        "fast_fps_spread": fast[best]["fps_spread"], "first_frame_s": first, "refined_psnr_db_vs_eager_fp32": psnr,
        "fast_latency_median_ms": fast[best]["latency_median_ms"], "speedup": round(fast[best]["fps"] / base, 2),
        "reconstruction_ms_fp32": result["reconstruction_ms"]["fp32"], "reconstruction_ms_fast": recon,
        "streams_total_fps": stream_cells, "targets": TARGETS,
        "met": {"fast_fps": fast[best]["fps"] >= TARGETS["fast_fps_min"],
                "first_frame": first is not None and first <= TARGETS["first_frame_s_max"],
                "faithful": psnr is not None and psnr >= TARGETS["refined_psnr_db_min"],
                "reconstruction": recon < TARGETS["reconstruction_ms_max"]},
    }


@torch.no_grad()
def stage_split(reenactor, frames: dict[str, torch.Tensor], device: torch.device, reps: int) -> dict:
    """Milliseconds per stage, each timed alone (synchronised): FLAME vertices (eager), splatting,
    neural renderer (eager, or the graph replay in the CUDA-graph mode)."""
    one = {k: v[:1] for k, v in frames.items()}
    slots = reenactor._slots_for(1, None)
    out = {"flame_eager": timed(lambda: reenactor.vertices(one["expression"], one["pose"], one["eyes"]), reps, device)}
    verts = reenactor.vertices(one["expression"], one["pose"], one["eyes"]).float()
    means = torch.cat([verts, slots["lifted_points"]], dim=1)
    out["rasterizer"] = timed(lambda: reenactor._splat(means, one["transform"], slots), reps, device)
    features = reenactor._splat(means, one["transform"], slots).image
    if reenactor._renderer_graph is not None:
        out["neural_renderer"] = timed(reenactor._renderer_graph.replay, reps, device)
    else:
        out["neural_renderer"] = timed(lambda: reenactor._refine(features), reps, device)
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, default=100)
    p.add_argument("--windows", type=int, default=3)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--check-frames", type=int, default=4, help="frames compared with eager fp32 (PSNR)")
    p.add_argument("--recon-reps", type=int, default=10)
    p.add_argument("--streams", type=int, default=8, help="sources in the multi-stream variant (1: none)")
    p.add_argument("--backend", default="gsplat")
    p.add_argument("--checkpoint", default="",
                   help="weights: a run folder, one of its checkpoint folders, or GAGAvatar.pt (default: random, seed 0)")
    p.add_argument("--source", default="noise",
                   help="source: noise (default), a photo (cropped and tracked: the faces extra) or a tracked shard prefix")
    p.add_argument("--no-compile", dest="compile", action="store_false", help="skip the compiled variants")
    p.add_argument("--compile-modes", default="default",
                   help="inductor modes for the compiled variant, comma-separated (e.g. default,max-autotune-no-cudagraphs)")
    p.add_argument("--no-autocast-weights", dest="autocast_weights", action="store_false",
                   help="skip the compiled variant whose float32 weights autocast casts on every frame")
    p.add_argument("--renderer-streams", type=lambda s: [int(x) for x in s.split(",") if x], default=[2, 3],
                   help="also measure the compiled pipelined variants with these numbers of renderer streams")
    p.add_argument("--profile-frames", type=int, default=0,
                   help="profile this many pipelined frames of the compiled variant (GPU timeline, top kernels)")
    p.add_argument("--max-seconds", type=float, default=420.0, help="skip variants that would start past this")
    p.add_argument("--smoke", action="store_true", help="CPU, smoke preset, eager variants only (a code check)")
    p.add_argument("--device-command", default="", help="the command as run on the device (recorded)")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    if not args.smoke and not torch.cuda.is_available():
        sys.exit("bench.reenact_fps needs a CUDA GPU (or --smoke for a CPU code check)")
    if args.smoke:
        args.frames, args.warmup, args.recon_reps, args.windows, args.check_frames = min(args.frames, 4), 1, 2, 2, 2
    paths = {"--checkpoint": "CHECKPOINT" if args.checkpoint else "",
             "--source": args.source if args.source == "noise" else "SOURCE"}
    info = {"command": command_line("bench.reenact_fps", argv if argv is not None else sys.argv[1:], paths),
            "device_command": args.device_command, "torch": torch.__version__, "python": platform.python_version(),
            "protocol": "source reconstructed once; driving parameters precomputed on the device; 512² batch 1; "
                        "FPS = frames / synchronised wall time of all frames after warm-up, per window; "
                        "TF32 on (released recipe)"}
    if torch.cuda.is_available() and not args.smoke:
        info["gpu"] = f"one {torch.cuda.get_device_name(0)}"
        info["cuda"] = torch.version.cuda
        try:
            import gsplat

            info["gsplat"] = gsplat.__version__
        except ImportError:
            info["gsplat"] = None
    from pipeline.eval import paper_results

    info["paper"] = {"table2_fps": paper_results.TABLE2_FPS["GAGAvatar"], "table2_gpu": paper_results.TABLE2_GPU,
                     "released_code_h100": paper_results.RELEASED_H100}
    write_report(bench(args, info), args.out)


if __name__ == "__main__":
    main()

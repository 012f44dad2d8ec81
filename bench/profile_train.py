"""Where the GPU time of one training step goes, and what its costliest pieces cost alone.

    python -m bench.profile_train --out bench/results/train_profile_h200.json [--steps-variants bf16_compile,bf16]
    python -m bench.profile_train --micro-only --out ...

``steps``: for each bench.train variant (each in a fresh process; ``_nchw`` suffix: without
channels-last weights), the wall ms of 10 plain-loop steps after warm-up (the first step's
seconds = compilation) and a torch.profiler window over 3 steps: GPU kernel ms per step and the
top operators by GPU time, and the window's GPU timeline (pipeline.gpu_timeline: busy and idle ms
per step, idle gaps by the host operator that delayed the next launch; a second window with
Python frames names the code). A step whose GPU busy time is far below its wall time is waiting
for the host. ``micro``: the pieces alone (CUDA events, median of repeated calls):
- ``nearest``: the lifting loss's nearest-point search at the training size (8 × 5,023 queries ×
  175,232 points) — the compiled reduction, chunked matmuls, and the Triton kernel at several
  block sizes, each checked to find points at the brute-force distance;
- ``gsplat``: forward+backward of the 180k-Gaussian head scene at 512², batch 8, 32 channels,
  through ``gsplat.rasterization`` (covariances, depth channel: the previous backend) and through
  our backend (gsplat's stages called directly), with and without depth; images compared;
- ``upsample``: bilinear ×2 forward+backward at the DPT decoder's and the StyleUNet's sizes:
  ``F.interpolate`` eager and compiled, and model.resize's matrices compiled.
The same window inside a Ray Train run: ``GAGA_PROFILE_DIR`` (pipeline.profiling).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from bench._pair_shards import make_shards
from bench._report import command_line, cuda_ms, gpu_state, write_report
from bench.train import VARIANTS, isolated, variant_config, worker_like_setup
from pipeline.profiling import StepProfiler
from pipeline.step import train_step


def profile_variant(cfg, channels_last: bool, out_dir: str, warmup: int = 10, steps: int = 3) -> dict:
    device = torch.device("cuda")
    state, loader = worker_like_setup(cfg, device, channels_last)
    t0 = time.perf_counter()
    train_step(state, next(loader).to(device))
    torch.cuda.synchronize()
    first = time.perf_counter() - t0
    for _ in range(warmup - 1):
        train_step(state, next(loader).to(device))
    torch.cuda.synchronize()
    t1 = time.perf_counter()
    for _ in range(10):
        train_step(state, next(loader).to(device))
    torch.cuda.synchronize()
    wall = (time.perf_counter() - t1) / 10 * 1000
    windows = {}
    for name, with_stack in (("profile", False), ("profile_with_python_frames", True)):
        profiler = StepProfiler(Path(out_dir, name), 0, 1, steps, top=45, on_gpu=True, with_stack=with_stack)
        for done in range(1, steps + 2):  # steps 2…steps+1 of this loop
            train_step(state, next(loader).to(device))
            profiler.after_step(done)
        windows[name] = json.loads((Path(out_dir, name) / "ops.json").read_text())
    loader.close()
    # the second window records Python frames (a slower host): only its idle causes are of use
    windows["profile_with_python_frames"] = {k: windows["profile_with_python_frames"]["gpu_timeline"][k]
                                             for k in ("gpu_idle_ms_per_step", "idle_gaps_by_cause")}
    out = {"first_step_s": round(first, 1), "wall_ms_per_step": round(wall, 1),
           "pairs_per_s": round(cfg.data.batch_size * 1000 / wall, 2), **windows,
           "peak_mem_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2)}
    if cfg.train.compile:
        from torch._dynamo.utils import counters

        saved = torch.compiler.save_cache_artifacts()
        out["compile"] = {"graph_breaks": sum(counters["graph_break"].values()),
                          "graph_break_reasons": list(counters["graph_break"])[:10],
                          "unique_graphs": counters["stats"]["unique_graphs"],
                          "portable_cache_bytes": len(saved[0]) if saved else 0}
    return out


def micro_nearest() -> dict:
    from model import nearest_triton
    from model.losses import _nearest_index_chunked, _nearest_index_fused

    g = torch.Generator("cuda").manual_seed(0)
    q = torch.randn(8, 5023, 3, device="cuda", generator=g) * 0.6
    p = torch.randn(8, 2 * 296 * 296, 3, device="cuda", generator=g)
    origin = q.mean(1, keepdim=True)
    qc, pc = q - origin, p - origin
    p_sq = pc.pow(2).sum(-1)
    truth = _nearest_index_chunked(qc, pc, p_sq, 1024, 16384)

    def dist(index):
        return (q - torch.gather(p, 1, index[..., None].expand(-1, -1, 3))).pow(2).sum(-1)

    ref = dist(truth)
    out = {"chunked_ms": cuda_ms(lambda: _nearest_index_chunked(qc, pc, p_sq, 1024, 16384), reps=5)}
    fused = _nearest_index_fused(qc, pc, p_sq, 1024)
    out["fused_ms"] = cuda_ms(lambda: _nearest_index_fused(qc, pc, p_sq, 1024))
    out["fused_max_dist_excess"] = float((dist(fused) - ref).max())
    for bv, bp, nw in ((64, 64, 4), (32, 64, 4), (64, 128, 4), (128, 64, 8), (64, 32, 4), (32, 32, 2), (128, 32, 4)):
        index = nearest_triton.nearest_index(q, p, bv, bp, nw)
        out[f"triton_{bv}x{bp}_w{nw}_ms"] = cuda_ms(lambda bv=bv, bp=bp, nw=nw: nearest_triton.nearest_index(q, p, bv, bp, nw))
        out[f"triton_{bv}x{bp}_w{nw}_max_dist_excess"] = float((dist(index) - ref).max())
    return out


def micro_gsplat() -> dict:
    import gsplat

    from model.config import RasterizerConfig
    from model.rasterizer import covariance_from_quat_scale, render_gaussians
    from model.rasterizer.synthetic import head_scene

    scene = head_scene(512, 8, device="cuda")
    leaves = {k: scene[k].detach().clone().requires_grad_(True) for k in ("means", "quats", "scales", "opacities", "features")}
    weights = torch.rand(8, 32, 512, 512, device="cuda")

    def old(depth: bool):  # the previous backend: gsplat.rasterization with 3×3 covariances
        cov = covariance_from_quat_scale(leaves["quats"], leaves["scales"], normalize=False)
        colors, alphas, _ = gsplat.rasterization(
            leaves["means"], None, None, leaves["opacities"], leaves["features"], scene["viewmats"].unsqueeze(1),
            scene["Ks"].unsqueeze(1), 512, 512, near_plane=0.01, far_plane=100.0, sh_degree=None, packed=False,
            backgrounds=torch.zeros(8, 1, 32, device="cuda"), render_mode="RGB+ED" if depth else "RGB", covars=cov,
            channel_chunk=33)
        return colors[:, 0].permute(0, 3, 1, 2)[:, :32]

    def new(depth: bool):
        cov = covariance_from_quat_scale(leaves["quats"], leaves["scales"], normalize=False)
        return render_gaussians(leaves["means"], None, None, leaves["opacities"], leaves["features"], scene["viewmats"],
                                scene["Ks"], 512, 512, covariances=cov, backend="gsplat",
                                config=RasterizerConfig(render_depth=depth)).image

    def fwd_bwd(fn, depth):
        def run():
            (fn(depth) * weights).sum().backward()
            for t in leaves.values():
                t.grad = None
        return run

    out = {}
    with torch.no_grad():
        out["max_abs_diff_old_vs_new"] = float((old(True) - new(True)).abs().max())
    for name, fn in (("rasterization_covars", old), ("stages", new)):
        for depth in (True, False):
            out[f"{name}{'_depth' if depth else ''}_fwd_bwd_ms"] = cuda_ms(fwd_bwd(fn, depth), reps=10)
    return out


def micro_upsample() -> dict:
    """Bilinear resizing forward+backward at the DPT decoder's and the StyleUNet's training sizes
    (bf16, channels-last): ``F.interpolate`` eager and compiled, and model.resize's matrices
    compiled (what the compiled step runs)."""
    from model.resize import bilinear_resize

    out = {}
    shapes = {"dpt_256ch_148to296_corners": ((8, 256, 148, 148), True),
              "unet_64ch_256to512": ((8, 64, 256, 256), False), "unet_128ch_128to256": ((8, 128, 128, 128), False)}
    for name, (shape, corners) in shapes.items():
        x0 = torch.randn(shape, device="cuda", dtype=torch.bfloat16).contiguous(memory_format=torch.channels_last)
        size = (2 * shape[2], 2 * shape[3])

        def interpolate(t, size=size, c=corners):
            return F.interpolate(t, size=size, mode="bilinear", align_corners=c)

        fns = {"interpolate": interpolate, "interpolate_compiled": torch.compile(interpolate, dynamic=False),
               "matrices_compiled": torch.compile(lambda t, s=size, c=corners: bilinear_resize(t, s, c), dynamic=False)}
        with torch.no_grad():
            ref = fns["interpolate"](x0).float()
        for label, fn in fns.items():
            x = x0.detach().clone().requires_grad_(True)

            def run(fn=fn, x=x):
                y = fn(x)
                y.backward(torch.ones_like(y))
                x.grad = None
            y = fn(x)
            out[f"{name}_{label}_max_abs_diff"] = float((y.detach().float() - ref).abs().max())
            out[f"{name}_{label}_fwd_bwd_ms"] = cuda_ms(run)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--steps-variants", default="bf16_nchw,bf16,bf16_compile",
                        help="bench.train variants to profile (suffix _nchw: without channels-last)")
    parser.add_argument("--micro", default="nearest,gsplat,upsample")
    parser.add_argument("--micro-only", action="store_true")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--device-command", default="")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench.profile_train needs a CUDA GPU")
    report = {"benchmark": "GPU time of one training step (paper preset, batch 8, 512²) and of its pieces",
              "command": command_line("bench.profile_train", sys.argv[1:]),
              "device_command": args.device_command, "gpu": f"one {torch.cuda.get_device_name()}",
              "torch": torch.__version__, "gpu_before": gpu_state(), "micro": {}, "steps": {}}
    torch.backends.cuda.matmul.allow_tf32 = True
    for name in filter(None, args.micro.split(",")):
        try:
            report["micro"][name] = {"nearest": micro_nearest, "gsplat": micro_gsplat, "upsample": micro_upsample}[name]()
        except Exception as exc:  # one broken piece is reported; the others still run
            report["micro"][name] = {"error": f"{type(exc).__name__}: {exc}"[:1500]}
        print(name, json.dumps(report["micro"][name]), flush=True)
        write_report(report, args.out, echo=False)
    if not args.micro_only:
        shards = make_shards(Path(tempfile.mkdtemp(prefix="bench-shards-")), 512)
        for name in filter(None, args.steps_variants.split(",")):
            base = name.removesuffix("_nchw")
            channels_last = VARIANTS[base][4] and not name.endswith("_nchw")
            try:
                cfg = variant_config(shards, base, args.overrides)
                report["steps"][name] = isolated(profile_variant, cfg, channels_last,
                                                 tempfile.mkdtemp(prefix="bench-profile-"))
            except Exception as exc:
                report["steps"][name] = {"error": f"{type(exc).__name__}: {exc}"[:1500]}
            cell = report["steps"][name]
            print(name, json.dumps({k: v for k, v in cell.items() if k != "profile"}),
                  json.dumps(cell.get("profile", {}).get("top_ops", [])[:12]), flush=True)
            write_report(report, args.out, echo=False)
    report["gpu_after"] = gpu_state()
    write_report(report, args.out, echo=False)


if __name__ == "__main__":
    main()

"""Rasterizer benchmark: every available backend on GAGAvatar's scene, plus parity figures.

    python -m bench.rasterizer --out bench/results/rasterizer_h100.json
    python -m bench.rasterizer --cpu --out bench/results/rasterizer_cpu.json   # CPU smoke only

Scene: 180,255 Gaussians, 32 channels, camera at 9.3 with focal 12 (model.rasterizer.synthetic).
Per backend, image size and batch: forward and forward+backward milliseconds (CUDA events,
median over ``--reps`` runs after warm-up) and peak allocated GPU memory. The torch reference
gets fewer repetitions where one run is slow (``reps`` is recorded per cell). Parity: relative
L2 errors of images and gradients of each CUDA backend against the torch reference. CPU smoke:
the torch reference at 64² with 10k Gaussians, forward+backward.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from bench._report import command_line, cuda_ms
from model.config import RasterizerConfig
from model.rasterizer import available_backends, render_gaussians
from model.rasterizer.synthetic import head_scene

PARAMS = ("means", "quats", "scales", "opacities", "features")
REFERENCE_H100_GSPLAT_FWD_BWD_MS = {"296x1": 3.3, "296x8": 13.6, "512x8": 22.6}  # another H100 measurement (docs/rasterizer.md)
REFERENCE_H100_INRIA32_FWD_BWD_MS = {"296x1": 4.7, "296x8": 38.0, "512x8": 79.6}


def _leaves(scene: dict) -> dict:
    return {k: scene[k].detach().clone().requires_grad_(True) for k in PARAMS}


def _render(backend: str, scene: dict, leaves: dict, config: RasterizerConfig):
    return render_gaussians(
        **leaves, viewmats=scene["viewmats"], Ks=scene["Ks"], width=scene["width"], height=scene["height"],
        backend=backend, config=config,
    )


# gsplat configurations besides the default (raw-quaternion covariances + depth channel): the last
# one is what the reference figures measure (quaternions, features only)
GSPLAT_VARIANTS = {
    "gsplat[rgb]": RasterizerConfig(render_depth=False),
    "gsplat[rgb,quats]": RasterizerConfig(render_depth=False, normalize_quats=True),
}


def bench_cell(backend: str, size: int, batch: int, reps: int, cell_budget_s: float, config: RasterizerConfig) -> dict:
    scene = head_scene(size, batch, device="cuda")
    leaves = _leaves(scene)
    weights = torch.rand(batch, 32, size, size, device="cuda", generator=torch.Generator("cuda").manual_seed(1))

    def fwd():
        return _render(backend, scene, leaves, config)

    def fwd_bwd():
        out = fwd()
        (out.image * weights).sum().backward()
        for t in leaves.values():
            t.grad = None

    torch.cuda.synchronize()
    t0 = time.perf_counter()
    fwd_bwd()  # first call: compiles/loads kernels; also sizes the repetition count
    torch.cuda.synchronize()
    first = time.perf_counter() - t0
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    fwd_bwd()
    torch.cuda.synchronize()
    one = time.perf_counter() - t0
    n = max(5, min(reps, int(cell_budget_s / max(one, 1e-6) / 2)))
    torch.cuda.reset_peak_memory_stats()
    fwd_bwd_ms = cuda_ms(fwd_bwd, n, warmup=2)
    peak_fwd_bwd = torch.cuda.max_memory_allocated()
    fwd_ms = cuda_ms(fwd, n, warmup=2)
    return dict(
        backend=backend, size=size, batch=batch, fwd_ms=round(fwd_ms, 3), fwd_bwd_ms=round(fwd_bwd_ms, 3),
        peak_mem_mib=round(peak_fwd_bwd / 2**20, 1), reps=n, first_call_s=round(first, 3),
    )


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def parity(backend: str, size: int, batch: int, config: RasterizerConfig) -> dict:
    """Relative L2 errors of ``backend`` against the torch reference, images and gradients."""
    scene = head_scene(size, batch, device="cuda")
    weights = torch.rand(batch, 32, size, size, device="cuda", generator=torch.Generator("cuda").manual_seed(2))
    results = {}
    for name in ("torch", backend):
        leaves = _leaves(scene)
        out = _render(name, scene, leaves, config)
        (out.image * weights).sum().backward()
        results[name] = (out, {k: v.grad for k, v in leaves.items()})
    (ref, ref_g), (out, g) = results["torch"], results[backend]
    row = dict(backend=backend, size=size, batch=batch, normalize_quats=config.normalize_quats)
    row["image"] = _rel(out.image, ref.image)
    if out.alpha is not None:
        row["alpha"] = _rel(out.alpha, ref.alpha)
    if out.depth is not None:  # compare Σwz = depth·alpha: depth alone is unstable where alpha → 0
        row["depth_x_alpha"] = _rel(out.depth * out.alpha, ref.depth * ref.alpha)
    for k in PARAMS:
        if g[k] is not None and ref_g[k] is not None:
            row[f"grad_{k}"] = _rel(g[k], ref_g[k])
    return row


def profile_torch(size: int, batch: int = 1) -> str:
    """Top CUDA ops of one torch-reference forward+backward (for finding slow kernels)."""
    from torch.profiler import ProfilerActivity, profile

    scene = head_scene(size, batch, device="cuda")
    leaves = _leaves(scene)
    config = RasterizerConfig()
    _render("torch", scene, leaves, config).image.sum().backward()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        _render("torch", scene, leaves, config).image.sum().backward()
        torch.cuda.synchronize()
    return prof.key_averages().table(sort_by="cuda_time_total", row_limit=25)


def covariance_builders(batch: int, reps: int = 20) -> dict:
    """fwd+bwd ms of the two covariance builders at 180,255 Gaussians (the CUDA one is used)."""
    from model.rasterizer.common import _covariance_few_ops, quaternion_rotation

    def matmul(q, s):
        m = quaternion_rotation(q, False) * s.unsqueeze(-2)
        return m @ m.transpose(-1, -2)

    q = torch.randn(batch, 180_255, 4, device="cuda", requires_grad=True)
    s = torch.rand(batch, 180_255, 3, device="cuda", requires_grad=True)
    row = {"batch": batch}
    for name, fn in (("few_ops", _covariance_few_ops), ("stack_matmul", matmul)):
        row[name] = cuda_ms(lambda fn=fn: fn(q, s).sum().backward(), reps, warmup=3)
    return row


def cpu_smoke(reps: int = 10) -> dict:
    """The torch reference on CPU at the smoke-training size: 64², 10k Gaussians, 32 channels."""
    scene = head_scene(64, 1, num_gaussians=10_000, num_expression=300, device="cpu")
    leaves = _leaves(scene)
    config = RasterizerConfig()
    times, fwd_times = [], []
    for i in range(reps + 2):
        t0 = time.perf_counter()
        out = _render("torch", scene, leaves, config)
        t1 = time.perf_counter()
        out.image.sum().backward()
        t2 = time.perf_counter()
        if i >= 2:
            fwd_times.append(t1 - t0)
            times.append(t2 - t0)
    return dict(
        size=64, gaussians=10_000, channels=32, threads=torch.get_num_threads(),
        fwd_ms=round(1e3 * statistics.median(fwd_times), 1), fwd_bwd_ms=round(1e3 * statistics.median(times), 1),
        cpu=platform.processor() or platform.machine(),
    )


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="JSON file to write")
    p.add_argument("--sizes", type=int, nargs="+", default=[296, 512])
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    p.add_argument("--reps", type=int, default=20, help="timed repetitions per cell (median)")
    p.add_argument("--backends", nargs="+", default=None, help="default: every available one")
    p.add_argument("--torch-cell-budget-s", type=float, default=8.0,
                   help="time per torch-reference cell; slow cells get fewer repetitions (≥ 5)")
    p.add_argument("--cpu", action="store_true", help="only the CPU smoke measurement")
    p.add_argument("--profile-torch", type=int, default=0, metavar="SIZE",
                   help="print the torch reference's top CUDA ops at SIZE² first")
    args = p.parse_args(argv)

    report: dict = {
        "command": command_line("bench.rasterizer", sys.argv[1:] if argv is None else argv),
        "torch": torch.__version__,
        "scene": "model.rasterizer.synthetic.head_scene: 180,255 Gaussians, 32 channels, focal 12, distance 9.3",
        "config": dataclasses.asdict(RasterizerConfig()),
        "cpu_smoke": cpu_smoke(),
    }
    print("cpu smoke:", report["cpu_smoke"], flush=True)
    if not args.cpu:
        if not torch.cuda.is_available():
            raise SystemExit("no CUDA device: run with --cpu for the CPU smoke measurement only")
        report["gpu"] = torch.cuda.get_device_name()
        report["covariance_builder_fwd_bwd_ms"] = [covariance_builders(b) for b in args.batches]
        print("covariance builders:", report["covariance_builder_fwd_bwd_ms"], flush=True)
        if args.profile_torch:
            print(profile_torch(args.profile_torch), flush=True)
        try:
            import gsplat

            report["gsplat"] = gsplat.__version__
        except ImportError:
            report["gsplat"] = None
        backends = args.backends or available_backends("cuda", 32)
        report["backends"] = backends
        report["reference_h100_fwd_bwd_ms"] = {
            "gsplat": REFERENCE_H100_GSPLAT_FWD_BWD_MS, "inria_32d": REFERENCE_H100_INRIA32_FWD_BWD_MS,
        }
        cells = [(b, b, RasterizerConfig()) for b in backends]
        if "gsplat" in backends:
            cells += [(label, "gsplat", cfg) for label, cfg in GSPLAT_VARIANTS.items()]
        rows, errors = [], []
        for label, backend, config in cells:
            for size in args.sizes:
                for batch in args.batches:
                    budget = args.torch_cell_budget_s if backend == "torch" else 60.0
                    try:
                        row = bench_cell(backend, size, batch, args.reps, budget, config)
                        row["backend"] = label
                        rows.append(row)
                        print(row, flush=True)
                    except Exception as e:  # record and go on: one failing cell must not lose the rest
                        errors.append(dict(backend=label, size=size, batch=batch, error=repr(e)[:500]))
                        print("FAILED", errors[-1], flush=True)
                    torch.cuda.empty_cache()
        report["results"], report["errors"] = rows, errors
        par = []
        for backend in [b for b in backends if b != "torch"]:
            for size in args.sizes:
                for normalize in (False, True):
                    try:
                        row = parity(backend, size, 1, RasterizerConfig(normalize_quats=normalize))
                    except Exception as e:
                        row = dict(backend=backend, size=size, normalize_quats=normalize, error=repr(e)[:500])
                    par.append(row)
                    print("parity", row, flush=True)
        report["parity_vs_torch_rel_l2"] = par
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    print("wrote", out)


if __name__ == "__main__":
    main()

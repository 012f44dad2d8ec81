"""GAGAvatar training-step benchmark (paper preset): bf16 autocast vs fp32, gsplat rasterizer.

    python -m bench.model_step --out bench/results/model_step_h100.json

Per precision: forward + losses + backward + Adam step + LR-schedule step of the released
architecture (180,255 Gaussians, 512² renders, StyleUNet) at ``--batch`` (8), median and
quartiles of ``--steps`` timed steps after ``--warmup`` (CUDA-synchronised wall clock), and the
peak allocated GPU memory. Data: one fixed synthetic batch (random images, generated-head FLAME
vertices with random expressions, cameras with random yaw/pitch). Losses: the released terms
(L1 full + L1 crops + perceptual on crops + lifting); the perceptual net is LPIPS-AlexNet with
random AlexNet weights unless ``--alexnet`` is given (same cost). Also: reenactment, batch 1,
render from a cached reconstruction (rasterize + StyleUNet), frames per second.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

from bench._report import command_line, write_report
from model.config import CameraConfig, LossConfig, ModelConfig, OptimConfig, RasterizerConfig
from model.flame import FlameModel
from model.gagavatar import GAGAvatar
from model.geometry import euler_to_matrix, look_at_transform
from model.losses import GAGAvatarLoss
from model.optim import build_optimizer
from model.procedural_head import load_generated_head


def synthetic_batch(batch: int, image_size: int, device: torch.device | str, seed: int = 0) -> dict:
    """One fixed training batch on ``device``: source/target images, cameras, FLAME ×5 vertices, bbox."""
    g = torch.Generator().manual_seed(seed)
    flame = FlameModel(load_generated_head())
    with torch.no_grad():
        expression = torch.randn(batch, 100, generator=g) * 0.5
        vertices = flame(torch.zeros(batch, 300), expression).vertices

    def cams() -> torch.Tensor:
        yaw = (torch.rand(batch, generator=g) - 0.5) * 0.8
        pitch = (torch.rand(batch, generator=g) - 0.5) * 0.3
        return look_at_transform(9.3, euler_to_matrix(yaw, pitch, torch.zeros(batch)))

    out = dict(
        source=torch.rand(batch, 3, image_size, image_size, generator=g),
        source_T=cams(),
        target=torch.rand(batch, 3, image_size, image_size, generator=g),
        target_T=cams(),
        vertices=vertices,
        bbox=torch.tensor([[0.2, 0.18, 0.8, 0.82]]).expand(batch, 4).clone(),
    )
    return {k: v.to(device) for k, v in out.items()}


def train_step(model: GAGAvatar, loss_fn: GAGAvatarLoss, optimizer: torch.optim.Optimizer,
               scheduler, data: dict, precision: str) -> dict[str, torch.Tensor]:
    """One optimisation step; returns the (detached) loss terms. No host sync inside."""
    device_type = data["source"].device.type
    with torch.autocast(device_type=device_type, dtype=torch.bfloat16, enabled=precision == "bf16"):
        out = model(data["source"], data["source_T"], data["vertices"], data["target_T"])
        terms = loss_fn(out, data["target"], data["bbox"], data["vertices"])
    optimizer.zero_grad(set_to_none=True)
    terms["total"].backward()
    optimizer.step()
    scheduler.step()
    return {k: v.detach() for k, v in terms.items()}


def _timed(fn, steps: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) * 1000.0)
    return times


def _summary(times: list[float]) -> dict:
    q = statistics.quantiles(times, n=4) if len(times) >= 4 else [min(times), statistics.median(times), max(times)]
    return {"median_ms": round(statistics.median(times), 2), "q1_ms": round(q[0], 2), "q3_ms": round(q[2], 2),
            "min_ms": round(min(times), 2), "n": len(times)}


def bench(args: argparse.Namespace) -> dict:
    device = torch.device("cuda")
    torch.set_float32_matmul_precision("high")  # the released recipe: fp32 with TF32 matmuls
    torch.manual_seed(0)
    model_cfg = ModelConfig()
    camera = CameraConfig()
    raster = RasterizerConfig(backend=args.backend, render_depth=False)
    loss_cfg = LossConfig(alexnet_weights=args.alexnet)
    model = GAGAvatar(model_cfg, camera, raster).to(device).train()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the random-AlexNet warning: timing only
        loss_fn = GAGAvatarLoss(loss_cfg).to(device)
    optimizer, scheduler = build_optimizer(model, OptimConfig())
    data = synthetic_batch(args.batch, camera.image_size, device)
    result: dict = {
        "model": {"gaussians": model.num_gaussians,
                  "parameters": sum(p.numel() for p in model.parameters()),
                  "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad)},
        "batch": args.batch, "backend": args.backend, "train_step": {}, "reenact_batch1": {},
    }
    for precision in args.precisions.split(","):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        last: dict = {}

        def step(precision=precision, last=last) -> None:
            last.update(train_step(model, loss_fn, optimizer, scheduler, data, precision))

        times = _timed(step, args.steps, args.warmup)
        cell = _summary(times)
        cell["pairs_per_s"] = round(args.batch * 1000.0 / cell["median_ms"], 2)
        cell["peak_mem_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        cell["loss_terms"] = {k: round(float(v), 5) for k, v in last.items()}
        result["train_step"][precision] = cell
        print(precision, json.dumps(cell), flush=True)

    model.eval()
    one = {k: v[:1] for k, v in data.items()}
    for precision in args.precisions.split(","):
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=precision == "bf16"):
            cache = model.reconstruct(one["source"], one["source_T"])
            times = _timed(lambda cache=cache: model.render(cache, one["vertices"], one["target_T"]),
                           args.reenact_frames, 5)
        cell = _summary(times)
        cell["fps"] = round(1000.0 / cell["median_ms"], 1)
        result["reenact_batch1"][precision] = cell
        print("reenact", precision, json.dumps(cell), flush=True)
    return result


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--reenact-frames", type=int, default=30)
    p.add_argument("--backend", default="gsplat")
    p.add_argument("--precisions", default="bf16,fp32")
    p.add_argument("--alexnet", default=None, help="torchvision alexnet-owt-7be5be79.pth (timing is the same)")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit("bench.model_step needs a CUDA GPU")
    result = {
        "command": command_line("bench.model_step", argv if argv is not None else sys.argv[1:]),
        "gpu": torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "config": {"model": dataclasses.asdict(ModelConfig()), "camera": dataclasses.asdict(CameraConfig())},
    }
    result.update(bench(args))
    write_report(result, args.out)


if __name__ == "__main__":
    main()

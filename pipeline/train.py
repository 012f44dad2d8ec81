"""Distributed training on Ray Train: ``run_training(cfg)`` builds a TorchTrainer (DDP, gloo on
CPU, NCCL on GPU) whose workers run ``train_loop_per_worker``.

Fault tolerance: every ``train.checkpoint_every`` steps each rank writes its part of a checkpoint
(pipeline.checkpoint) and reports it; ``FailureConfig(max_failures)`` restarts crashed workers from
the latest one, and resubmitting a run with the same name (``RunConfig(name)`` in the same
storage) resumes it — the data stream restarts at the exact sample position.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import storage
from .checkpoint import MODEL_FILE, TrainProgress, load_checkpoint, save_checkpoint
from .config import ExperimentConfig, config_from_dict, save_config
from .configtools import to_dict
from .data import (
    MockPairSource,
    PairBatch,
    PrefetchingLoader,
    ShardPairSource,
    image_to_uint8,
    read_eval_pairs,
)
from .profiling import StepProfiler
from .run_logging import RunLogger
from .run_names import run_name
from .step import (
    TrainState,
    build_train_state,
    compile_regions,
    predict,
    target_at_render_size,
    train_step,
)

log = logging.getLogger("gaga.train")

@dataclass
class TrainingResult:
    run_name: str
    checkpoint_path: str | None  # latest checkpoint (local path or URI)
    storage_path: str
    metrics: dict[str, Any]
    run_dir: Path  # local folder with images / wandb / config


# ----------------------------------------------------------------------------- worker side


def make_source(cfg: ExperimentConfig, rank: int, world: int, mock_samples: list[dict] | None = None,
                options: storage.S3Options | None = None) -> MockPairSource | ShardPairSource:
    if mock_samples is not None:
        return MockPairSource(mock_samples, rank, world)
    return ShardPairSource(storage.shard_urls(cfg.data.train_shards, options), rank, world, seed=cfg.seed,
                           options=options)


def per_rank_batch(cfg: ExperimentConfig, world: int) -> int:
    if cfg.data.batch_size % world:
        raise ValueError(f"data.batch_size={cfg.data.batch_size} is not divisible by {world} workers")
    return cfg.data.batch_size // world


def ddp_options() -> dict[str, Any]:
    """DistributedDataParallel arguments: no buffer sync in forward (no BatchNorm; the frozen
    backbone's buffers are constants), and gradients kept in the all-reduce buckets instead of
    being copied into them after backward. Newer torch renames ``broadcast_buffers``."""
    import inspect

    from torch.nn.parallel import DistributedDataParallel

    accepted = inspect.signature(DistributedDataParallel.__init__).parameters
    no_sync = "forward_sync_buffers" if "forward_sync_buffers" in accepted else "broadcast_buffers"
    return {no_sync: False, "gradient_as_bucket_view": True}


def _panel(batch: PairBatch, output: Any) -> np.ndarray:
    """source | target | coarse | refined of the first pair, H×4W uint8."""
    tiles = [batch.source_image[0], batch.target_image[0], output.coarse[0], output.refined[0]]
    size = batch.target_image.shape[-2:]
    tiles = [torch.nn.functional.interpolate(t[None].float(), size=size, mode="bilinear", antialias=True)[0]
             if t.shape[-2:] != size else t for t in tiles]
    return np.concatenate([image_to_uint8(t) for t in tiles], axis=1)


def _all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(values)
    return values


def validate(state: TrainState, pairs: list[dict], rank: int, world: int, device: torch.device) -> dict[str, float]:
    """PSNR/SSIM (and LPIPS when the loss has an LPIPS network) of refined outputs, averaged over
    every rank's share of the held-out pairs (one all-reduce)."""
    from model.metrics import psnr, ssim

    from .data import collate_pairs

    mine = pairs[rank::world]
    sums = torch.zeros(4, dtype=torch.float64, device=device)  # psnr, ssim, lpips, count
    from model.perceptual import LPIPS

    lpips_net = state.loss.perceptual if isinstance(state.loss.perceptual, LPIPS) else None
    for i in range(0, len(mine), 4):
        batch = collate_pairs(mine[i:i + 4]).to(device)
        out = predict(state, batch)
        pred = out.refined.float().clamp(0, 1)
        target = target_at_render_size(batch.target_image, state.config.camera.image_size)
        sums[0] += psnr(pred, target).sum().double()
        sums[1] += ssim(pred, target).sum().double()
        if lpips_net is not None:
            sums[2] += lpips_net(pred, target).sum().double()
        sums[3] += len(batch)
    sums = _all_reduce_sum(sums)
    n = sums[3].clamp_min(1)
    out = {"val/psnr": (sums[0] / n).item(), "val/ssim": (sums[1] / n).item()}
    if lpips_net is not None:
        out["val/lpips"] = (sums[2] / n).item()
    return out


def local_run_dir(cfg: ExperimentConfig, name: str) -> Path:
    """Images, wandb and config of a run: next to the checkpoints for local storage, else under outputs/."""
    if "://" in cfg.train.storage_path:
        return Path("outputs") / "runs" / name
    return Path(cfg.train.storage_path).expanduser().resolve() / name


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """The Ray Train worker: build state, restore, train ``train.steps`` steps, report checkpoints."""
    import ray.train
    import ray.train.torch

    cfg = config_from_dict(loop_config["config"])
    name = loop_config["run_name"]
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    if loop_config.get("pid_dir"):  # test hook: lets a test kill this worker process
        Path(loop_config["pid_dir"], f"rank{rank}.pid").write_text(str(os.getpid()))

    torch.manual_seed(cfg.seed)  # identical initial weights on every rank
    state = build_train_state(cfg, device)  # the network freezes its never-used parameters (DDP)
    progress = TrainProgress(run_name=name)
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            progress = load_checkpoint(directory, rank, state.model, state.optimizer, state.scheduler, device)
    else:
        torch.manual_seed(cfg.seed + 1000 * rank)  # per-rank noise streams from here on
        if cfg.train.init_from:  # fine-tuning: weights only (ours or the official GAGAvatar.pt)
            from model.official_checkpoint import load_official

            init = Path(cfg.train.init_from).expanduser()
            load_official(str(init / MODEL_FILE if init.is_dir() else init), model=state.network)
    if cfg.train.compile:
        compile_regions(state.network)
    state.model = ray.train.torch.prepare_model(state.model, parallel_strategy_kwargs=ddp_options())

    batch_size = per_rank_batch(cfg, world)
    s3 = loop_config.get("s3_options")  # captured on the driver: workers may not share its environment
    source = make_source(cfg, rank, world, loop_config.get("mock_samples"), s3)
    loader = PrefetchingLoader(source, batch_size, start_batch=progress.step, threads=max(1, cfg.data.num_workers))
    val_pairs = []
    if cfg.train.val_every and (cfg.data.val_shards or cfg.data.test_self_shards):
        val_pairs = read_eval_pairs(cfg.data.val_shards or cfg.data.test_self_shards, cfg.train.val_pairs, s3)
    run_dir = local_run_dir(cfg, name)
    logger = RunLogger(rank == 0, run_dir, name, cfg.train.wandb_project, to_dict(cfg), cfg.train.steps,
                       progress.step, group=loop_config.get("group"))
    if rank == 0:
        save_config(cfg, run_dir / "config.yaml")

    profiler = StepProfiler.from_env(rank, progress.step, on_gpu=device.type == "cuda")
    sums: dict[str, torch.Tensor] = {}
    window_start, data_wait, window_steps = time.perf_counter(), 0.0, 0
    metrics: dict[str, float] = dict(progress.metrics)
    for step in range(progress.step, cfg.train.steps):
        t0 = time.perf_counter()
        batch = next(loader).to(device)
        data_wait += time.perf_counter() - t0
        losses, output = train_step(state, batch)
        if profiler is not None:
            profiler.after_step(step + 1)
        for key, value in losses.items():
            sums[key] = sums.get(key, 0.0) + value.float()
        window_steps += 1
        done = step + 1
        if rank == 0 and cfg.train.image_every and done % cfg.train.image_every == 0:
            logger.log_image(done, "train", _panel(batch, output), "source | target | coarse | refined")
        if done % cfg.train.log_every == 0 or done == cfg.train.steps:
            elapsed = time.perf_counter() - window_start
            metrics = {f"loss/{k}": (v / window_steps).item() for k, v in sums.items()}  # one host sync
            metrics.update({
                "lr": state.scheduler.get_last_lr()[0],
                "perf/step_ms": 1000 * elapsed / window_steps,
                "perf/pairs_per_s": batch_size * world * window_steps / elapsed,
                "perf/pairs_per_s_per_worker": batch_size * window_steps / elapsed,
                "perf/data_wait_frac": data_wait / elapsed,
            })
            if device.type == "cuda":
                metrics["perf/peak_mem_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
            logger.log(done, metrics)
            sums, window_start, data_wait, window_steps = {}, time.perf_counter(), 0.0, 0
        if val_pairs and cfg.train.val_every and done % cfg.train.val_every == 0:
            val = validate(state, val_pairs, rank, world, device)
            metrics.update(val)
            logger.log(done, val)
        if done % cfg.train.checkpoint_every == 0 or done == cfg.train.steps:
            progress = TrainProgress(step=done, samples_seen={str(rank): loader.position}, run_name=name,
                                     metrics={k: float(v) for k, v in metrics.items()})
            with tempfile.TemporaryDirectory(prefix="gaga-ckpt-") as tmp:
                save_checkpoint(tmp, rank, progress, state.network, state.optimizer, state.scheduler, cfg)
                ray.train.report({**metrics, "step": done},
                                 checkpoint=ray.train.Checkpoint.from_directory(tmp),
                                 checkpoint_dir_name=f"checkpoint_{done:07d}")
    loader.close()
    logger.summary({"final_step": cfg.train.steps, **metrics})
    logger.close()


# ----------------------------------------------------------------------------- driver side


def run_training(cfg: ExperimentConfig, *, mock_samples: list[dict] | None = None, pid_dir: str | None = None,
                 group: str | None = None, worker_env: dict[str, str] | None = None) -> TrainingResult:
    """Train ``cfg`` on the current Ray cluster (local 127.0.0.1 one when none is running).
    ``worker_env``: environment variables for the training workers (e.g. NCCL settings)."""
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from .ray_cluster import ensure_ray

    ensure_ray()
    name = run_name(cfg)
    use_gpu = cfg.train.use_gpu and ray.cluster_resources().get("GPU", 0) >= 1
    if cfg.train.use_gpu and not use_gpu:
        log.warning("train.use_gpu is set but the cluster has no GPU: training on CPU with gloo")
    resources = {"CPU": cfg.train.cpus_per_worker, **({"GPU": 1} if use_gpu else {})}
    storage_path, filesystem = storage.ray_storage(cfg.train.storage_path)
    loop_config: dict[str, Any] = {"config": to_dict(cfg), "run_name": name, "group": group,
                                   "s3_options": storage.S3Options.from_env()}
    if mock_samples is not None:
        loop_config["mock_samples"] = mock_samples
    if pid_dir:
        loop_config["pid_dir"] = pid_dir
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config,
        scaling_config=ScalingConfig(num_workers=cfg.train.num_workers, use_gpu=use_gpu, resources_per_worker=resources),
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo", timeout_s=cfg.train.collective_timeout_s),
        run_config=RunConfig(
            name=name,
            storage_path=storage_path,
            storage_filesystem=filesystem,
            failure_config=FailureConfig(max_failures=cfg.train.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.train.keep_checkpoints),
            worker_runtime_env={"env_vars": dict(worker_env)} if worker_env else None,
        ),
    )
    result = trainer.fit()
    checkpoint = result.checkpoint
    return TrainingResult(
        run_name=name,
        checkpoint_path=checkpoint.path if checkpoint is not None else None,
        storage_path=cfg.train.storage_path,
        metrics=dict(result.metrics or {}),
        run_dir=local_run_dir(cfg, name),
    )

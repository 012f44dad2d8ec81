"""Distributed training on Ray Train: ``run_training(cfg)`` builds a TorchTrainer (DDP, gloo on
CPU, NCCL on GPU) whose workers run ``train_loop_per_worker``.

Fault tolerance: every ``train.checkpoint_every`` steps each rank writes its part of a checkpoint
(pipeline.checkpoint, with a manifest of sizes and checksums) and reports it;
``FailureConfig(max_failures)`` restarts crashed workers, and resubmitting a run with the same name
(same storage) resumes it. Either way the workers resume from the newest checkpoint that verifies
(a truncated or altered one is skipped with a warning naming it), and every rank's data stream
restarts at its exact sample position. What the run refuses, and what it skips and records, is in
docs/reliability.md.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from . import storage
from .checkpoint import (
    CheckpointError,
    TrainProgress,
    all_finite,
    checkpoint_dir_name,
    load_checkpoint,
    load_weights,
    local_copy,
    newest_intact,
    resolve_checkpoint,
    save_checkpoint,
)
from .config import ExperimentConfig, config_from_dict, save_config
from .configtools import replace, to_dict
from .data import MockPairSource, PairBatch, PrefetchingLoader, ShardPairSource
from .images import side_by_side, to_uint8
from .profiling import StepProfiler
from .run_files import (
    RunFiles,
    TrainingAborted,
    absolute_paths,
    check_config,
    clear_abort,
    list_run_files,
    read_abort,
    repair_ray_snapshot,
    write_abort,
)
from .run_logging import RunLogger
from .run_names import run_name
from .shard_reader import BadDataLog, DataError, first_usable_sample, read_pairs
from .step import (
    TrainState,
    build_train_state,
    compile_regions,
    compile_unavailable_reason,
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
    run_dir: str  # the run's folder in its storage (local path or s3:// URL)
    files: list[str] = field(default_factory=list)  # the run's own files there (config, metrics, curves, images)


# ----------------------------------------------------------------------------- worker side


def make_source(cfg: ExperimentConfig, rank: int, world: int, mock_samples: list[dict] | None = None,
                options: storage.S3Options | None = None, bad: BadDataLog | None = None) -> MockPairSource | ShardPairSource:
    if mock_samples is not None:
        return MockPairSource(mock_samples, rank, world)
    return ShardPairSource(storage.shard_urls(cfg.data.train_shards, options), rank, world, seed=cfg.seed,
                           group_shards=cfg.data.shuffle_shards, options=options, bad=bad)


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
    """source | target | coarse | refined of the first pair, each at the target's size."""
    tiles = [batch.source_image[0], batch.target_image[0], output.coarse[0], output.refined[0]]
    return side_by_side([to_uint8(t) for t in tiles], batch.target_image.shape[-1])


def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def _all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    if _distributed():
        torch.distributed.all_reduce(values)
    return values


def _all_gather_ints(values: list[int], device: torch.device) -> list[list[int]]:
    """Every rank's ``values`` (same length on every rank), in rank order."""
    mine = torch.tensor(values, dtype=torch.int64, device=device)
    if not _distributed():
        return [values]
    out = [torch.empty_like(mine) for _ in range(torch.distributed.get_world_size())]
    torch.distributed.all_gather(out, mine)
    return [t.tolist() for t in out]


def _broadcast_int(value: int, device: torch.device) -> int:
    """Rank 0's ``value`` on every rank."""
    if not _distributed():
        return value
    t = torch.tensor([value], dtype=torch.int64, device=device)
    torch.distributed.broadcast(t, src=0)
    return int(t.item())


def validate(state: TrainState, pairs: list[dict], rank: int, world: int, device: torch.device) -> dict[str, float]:
    """PSNR/SSIM (and LPIPS when the loss has an LPIPS network) of refined outputs, averaged over
    every rank's share of the held-out pairs (one all-reduce), and ``val/refined_std``: the spread
    of all their pixels (0 for images of one flat colour, see :func:`flat_output_warning`)."""
    from model.metrics import psnr, ssim
    from model.perceptual import LPIPS

    from .data import collate_pairs

    mine = pairs[rank::world]
    sums = torch.zeros(7, dtype=torch.float64, device=device)  # psnr, ssim, lpips, count, Σx, Σx², pixels
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
        sums[4] += pred.sum().double()
        sums[5] += pred.square().sum().double()
        sums[6] += pred.numel()
    sums = _all_reduce_sum(sums)
    n = sums[3].clamp_min(1)
    mean = sums[4] / sums[6].clamp_min(1)
    out = {"val/psnr": (sums[0] / n).item(), "val/ssim": (sums[1] / n).item(),
           "val/refined_std": (sums[5] / sums[6].clamp_min(1) - mean.square()).clamp_min(0).sqrt().item()}
    if lpips_net is not None:
        out["val/lpips"] = (sums[2] / n).item()
    return out


FLAT_OUTPUT_STD = 1e-3  # below this spread every validation image is one flat colour


def flat_output_warning(val: dict[str, float], step: int) -> str | None:
    """The warning for a run whose validation images have all become one flat colour (a neural
    renderer whose sigmoid saturated gives no gradient back and does not recover): losses stay
    finite, so nothing else would say that the run stopped learning."""
    if val.get("val/refined_std", 1.0) >= FLAT_OUTPUT_STD:
        return None
    return (f"step {step}: every validation image is one flat colour (pixel spread {val['val/refined_std']:.1e}): "
            "the neural renderer's output saturated and the run is not learning; a lower optim.lr / "
            "optim.style_lr may avoid it")


def _restore(state: TrainState, run_url: str, rank: int, device: torch.device, s3: storage.S3Options | None,
             name: str) -> TrainProgress | None:
    """Rank 0 picks the newest checkpoint that verifies (warning about newer ones that do not) and
    every rank loads it; None for a fresh run."""
    step = -1
    if rank == 0:
        url, skipped = newest_intact(run_url, s3)
        for line in skipped:
            log.warning("skipping a damaged checkpoint: %s", line)
        step = int(storage.basename(url).split("_")[1]) if url else -1
    step = _broadcast_int(step, device)
    if step < 0:
        return None
    with local_copy(storage.join(run_url, checkpoint_dir_name(step)), s3) as directory:
        progress = load_checkpoint(directory, rank, state.model, state.optimizer, state.scheduler, device)
    log.info("run %s resumes from step %d", name, progress.step)
    return progress


def _init_weights(init_from: str, network: torch.nn.Module, s3: storage.S3Options | None) -> None:
    from model.official_checkpoint import load_official

    url, kind, chosen = resolve_checkpoint(init_from, s3)
    log.info("initial weights: %s", chosen)
    if kind == "official":
        load_official(str(storage.local_path(url)), model=network)
    else:
        with local_copy(url, s3) as directory:
            load_weights(directory, network)


class _Window:
    """Loss sums of the steps since the last log line, kept on the device (one host read per log)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.reset()

    def reset(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.skipped = torch.zeros((), device=self.device)
        self.steps, self.data_wait, self.start = 0, 0.0, time.perf_counter()

    def add(self, losses: dict[str, torch.Tensor]) -> None:
        skipped = losses["skipped_step"]
        self.skipped = self.skipped + skipped
        for key, value in losses.items():
            if key != "skipped_step":  # a skipped step's NaN must not turn the window's mean into NaN
                self.sums[key] = self.sums.get(key, 0.0) + torch.where(skipped > 0, 0.0, value.float())
        self.steps += 1


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """The Ray Train worker: build state, restore, train ``train.steps`` steps, report checkpoints."""
    import ray.train
    import ray.train.torch

    cfg = config_from_dict(loop_config["config"])
    name, run_url = loop_config["run_name"], loop_config["run_url"]
    s3 = loop_config.get("s3_options")  # captured on the driver: workers may not share its environment
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    if loop_config.get("pid_dir"):  # test hook: one line per worker start, so a test can kill or count them
        with open(os.path.join(loop_config["pid_dir"], f"rank{rank}.pid"), "a") as fh:
            fh.write(f"{os.getpid()}\n")
    if read_abort(run_url, s3) is not None:  # a restart after the run stopped itself: stop again at once
        return

    try:
        _train(cfg, loop_config, name, run_url, rank, world, device, s3)
    except (DataError, CheckpointError) as exc:  # deterministic: a restart would fail the same way
        write_abort(run_url, str(exc), -1, s3)
        raise


def _train(cfg: ExperimentConfig, loop_config: dict[str, Any], name: str, run_url: str, rank: int, world: int,
           device: torch.device, s3: storage.S3Options | None) -> None:
    import ray.train.torch

    torch.manual_seed(cfg.seed)  # identical initial weights on every rank
    state = build_train_state(cfg, device)  # the network freezes its never-used parameters (DDP)
    progress = _restore(state, run_url, rank, device, s3, name)
    batch_size = cfg.data.batch_size // world
    start = 0
    if progress is None:
        progress = TrainProgress(run_name=name, world_size=world)
        torch.manual_seed(cfg.seed + 1000 * rank)  # per-rank noise streams from here on
        if cfg.train.init_from:  # fine-tuning: weights only (one of our checkpoints, or the released GAGAvatar.pt)
            _init_weights(cfg.train.init_from, state.network, s3)
    elif progress.world_size == world and str(rank) in progress.samples_seen:
        start = int(progress.samples_seen[str(rank)])
    else:
        start = progress.step * batch_size
        log.warning("run %s resumes with %d workers instead of %d: the shards are dealt out anew, so the data "
                    "order is not the one an uninterrupted run would have seen", name, world, progress.world_size)
    if cfg.train.compile and device.type == "cuda":
        unavailable = compile_unavailable_reason()
        if unavailable:  # same numbers, only slower: run, and say so (every rank: nodes may differ)
            log.warning("train.compile: %s on the node of rank %d; it trains eagerly (1.3-2.7x slower on an H200, "
                        "README \"Measured\"). Install it, or set train.compile=false to silence this",
                        unavailable, rank)
            # what the step reads: no compiled regions, so no CUDA-graph steps to mark
            state.config = replace(state.config, **{"train.compile": False})
        else:
            if rank == 0:  # the first steps then take minutes: say why before they start
                log.info("torch.compile of the network's regions (mode %s): the first steps compile for 2-3 minutes "
                         "(cached on this node for the next run; train.compile=false skips it)", cfg.train.compile_mode)
            compile_regions(state.network, mode=cfg.train.compile_mode)
    state.model = ray.train.torch.prepare_model(state.model, parallel_strategy_kwargs=ddp_options())

    bad = BadDataLog()
    source = make_source(cfg, rank, world, loop_config.get("mock_samples"), s3, bad)
    val_pairs = []
    if cfg.train.val_every and (cfg.data.val_shards or cfg.data.test_self_shards):
        val_pairs = read_pairs(cfg.data.val_shards or cfg.data.test_self_shards, cfg.train.val_pairs, s3,
                               loop_config.get("image_size"))
    loader = PrefetchingLoader(source, batch_size, start=start, threads=max(1, cfg.data.num_workers),
                               image_size=loop_config.get("image_size"), bad=bad)
    files = RunFiles(run_url, s3) if rank == 0 else None
    logger = RunLogger(rank == 0, files.local if files else None, name, cfg.train.wandb_project, to_dict(cfg),
                       cfg.train.steps, progress.step, group=loop_config.get("group"))
    if files is not None:
        save_config(cfg, files.local / "config.yaml")
    profiler = StepProfiler.from_env(rank, progress.step, on_gpu=device.type == "cuda")
    window = _Window(device)
    metrics: dict[str, float] = dict(progress.metrics)
    skipped_total = progress.skipped_steps
    try:
        for step in range(progress.step, cfg.train.steps):
            t0 = time.perf_counter()
            batch = next(loader).to(device)
            window.data_wait += time.perf_counter() - t0
            losses, output = train_step(state, batch)
            if profiler is not None:
                profiler.after_step(step + 1)
            window.add(losses)
            done = step + 1
            if rank == 0 and cfg.train.image_every and done % cfg.train.image_every == 0:
                logger.log_image(done, "train", _panel(batch, output), "source | target | coarse | refined")
            if done % cfg.train.log_every == 0 or done == cfg.train.steps:
                metrics, skipped_total, problem = _log_window(cfg, state, window, bad, logger, done, batch_size,
                                                              world, device, skipped_total)
                if problem:  # decided on numbers summed over ranks: every rank stops here
                    if rank == 0:
                        write_abort(run_url, problem, done, s3)
                    return
            if val_pairs and cfg.train.val_every and done % cfg.train.val_every == 0:
                val = validate(state, val_pairs, rank, world, device)
                warning = flat_output_warning(val, done)
                if warning and rank == 0:
                    log.warning(warning)
                metrics.update(val)
                logger.log(done, val)
            if done % cfg.train.checkpoint_every == 0 or done == cfg.train.steps:
                if not all_finite(state.network):  # the same weights on every rank: all stop together
                    if rank == 0:
                        write_abort(run_url, f"the weights hold NaN/Inf at step {done}; no checkpoint written",
                                    done, s3)
                    return
                _checkpoint(cfg, state, loader, bad, name, done, world, device, skipped_total, metrics)
                if files is not None:
                    files.sync()
    finally:
        loader.close()
        logger.summary({"final_step": cfg.train.steps, **metrics})
        logger.close()
        if files is not None:
            files.close()


def _log_window(cfg: ExperimentConfig, state: TrainState, window: _Window, bad: BadDataLog, logger: RunLogger,
                done: int, batch_size: int, world: int, device: torch.device,
                skipped_total: int) -> tuple[dict, int, str]:
    """Metrics of the window (one host read), the run's bad-data and skipped-step counts summed
    over ranks, and the reason to stop ("" to go on)."""
    elapsed = time.perf_counter() - window.start
    counts = _all_reduce_sum(torch.stack([window.skipped.double(), torch.tensor(float(bad.samples), device=device,
                                          dtype=torch.float64), torch.tensor(float(bad.shards), device=device,
                                          dtype=torch.float64)]))
    skipped_window, bad_samples, bad_shards = (int(v) for v in counts.tolist())
    if _distributed():
        skipped_window //= world  # every rank skips the same steps (the flag is max-reduced)
    skipped_total += skipped_window
    finite_steps = max(window.steps - skipped_window, 1)
    metrics = {f"loss/{k}": (v / finite_steps).item() for k, v in window.sums.items() if k != "grad_norm"}
    if "grad_norm" in window.sums:
        metrics["grad_norm"] = (window.sums["grad_norm"] / finite_steps).item()
    metrics.update({
        "lr": state.scheduler.get_last_lr()[0],
        "perf/step_ms": 1000 * elapsed / window.steps,
        "perf/pairs_per_s": batch_size * world * window.steps / elapsed,
        "perf/pairs_per_s_per_worker": batch_size * window.steps / elapsed,
        "perf/data_wait_frac": window.data_wait / elapsed,
        "train/skipped_steps": skipped_total,
        "data/bad_samples": bad_samples,
        "data/bad_shards": bad_shards,
    })
    if device.type == "cuda":
        metrics["perf/peak_mem_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    logger.log(done, metrics)
    window.reset()
    problem = ""
    if skipped_total > cfg.train.max_skipped_steps:
        problem = (f"{skipped_total} steps had a non-finite loss or gradient (more than train.max_skipped_steps="
                   f"{cfg.train.max_skipped_steps}); the weights were never updated with them")
    elif bad_samples > cfg.data.max_bad_samples or bad_shards > cfg.data.max_bad_shards:
        problem = (f"too much bad data: {bad_samples} unusable samples (data.max_bad_samples="
                   f"{cfg.data.max_bad_samples}), {bad_shards} unreadable shards (data.max_bad_shards="
                   f"{cfg.data.max_bad_shards}); e.g. {'; '.join(bad.examples[:2]) or 'see the workers logs'}")
    return metrics, skipped_total, problem


def _checkpoint(cfg: ExperimentConfig, state: TrainState, loader: PrefetchingLoader, bad: BadDataLog, name: str,
                done: int, world: int, device: torch.device, skipped_total: int, metrics: dict[str, float]) -> None:
    import ray.train

    ranks = _all_gather_ints([loader.position, bad.samples, bad.shards], device)
    progress = TrainProgress(step=done, run_name=name, world_size=world, skipped_steps=skipped_total,
                             metrics={k: float(v) for k, v in metrics.items()},
                             samples_seen={str(r): v[0] for r, v in enumerate(ranks)},
                             bad_samples={str(r): v[1] for r, v in enumerate(ranks)},
                             bad_shards={str(r): v[2] for r, v in enumerate(ranks)})
    rank = ray.train.get_context().get_world_rank()
    with tempfile.TemporaryDirectory(prefix="gaga-ckpt-") as tmp:
        save_checkpoint(tmp, rank, progress, state.network, state.optimizer, state.scheduler, cfg)
        ray.train.report({**metrics, "step": done}, checkpoint=ray.train.Checkpoint.from_directory(tmp),
                         checkpoint_dir_name=checkpoint_dir_name(done))


# ----------------------------------------------------------------------------- driver side


def run_training(cfg: ExperimentConfig, *, mock_samples: list[dict] | None = None, pid_dir: str | None = None,
                 group: str | None = None, worker_env: dict[str, str] | None = None,
                 allow_config_change: bool = False) -> TrainingResult:
    """Train ``cfg`` on the connected Ray cluster (the caller runs ``ray.init``). Before anything
    starts: the stored config of a resumed run must match (unless ``allow_config_change``) and the
    training shards must hold a usable sample. ``worker_env``: environment variables for the
    training workers (e.g. NCCL settings). Raises TrainingAborted when the run stopped itself."""
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    name = run_name(cfg)
    cfg = absolute_paths(cfg)  # the name above comes from the paths as given
    s3 = storage.S3Options.from_env()
    run_url = storage.join(cfg.train.storage_path, name)
    check_config(run_url, cfg, allow_config_change, s3)
    clear_abort(run_url, s3)
    repair_ray_snapshot(run_url, s3)
    image_size = None
    if mock_samples is None:
        urls = storage.shard_urls(cfg.data.train_shards, s3)
        image_size = int(first_usable_sample(urls, s3, f"data.train_shards={cfg.data.train_shards}")["source"].shape[0])

    use_gpu = cfg.train.use_gpu and ray.cluster_resources().get("GPU", 0) >= 1
    if cfg.train.use_gpu and not use_gpu:
        log.warning("train.use_gpu is set but the cluster has no GPU: training on CPU with gloo")
    resources = {"CPU": cfg.train.cpus_per_worker, **({"GPU": 1} if use_gpu else {})}
    storage_path, filesystem = storage.ray_storage(cfg.train.storage_path)
    loop_config: dict[str, Any] = {"config": to_dict(cfg), "run_name": name, "run_url": run_url, "group": group,
                                   "s3_options": s3, "image_size": image_size}
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
    try:
        result = trainer.fit()
    except Exception:
        aborted = read_abort(run_url, s3)
        if aborted is not None:
            raise TrainingAborted(f"run {name} stopped at step {aborted['step']}: {aborted['message']}") from None
        raise
    aborted = read_abort(run_url, s3)
    if aborted is not None:
        raise TrainingAborted(f"run {name} stopped at step {aborted['step']}: {aborted['message']}")
    if result.checkpoint is not None:  # Ray's latest registered checkpoint: complete
        latest = storage.join(run_url, storage.basename(result.checkpoint.path))
    else:  # nothing reported in this submission (e.g. the run had already finished)
        latest, _ = newest_intact(run_url, s3)
    files = list_run_files(run_url, s3)
    log.info("run %s: checkpoint %s; its files: %s", name, latest, ", ".join(files))
    return TrainingResult(run_name=name, checkpoint_path=latest, storage_path=cfg.train.storage_path,
                          metrics=dict(result.metrics or {}), run_dir=run_url, files=files)

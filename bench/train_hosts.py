"""Where the training step loses time inside Ray: the same loop (bench.train's plain loop, rank 0's
seeds and shard order) hosted five ways, one after another in one run.

    python -m bench.train_hosts --out bench/results/train_hosts_h100.json

- ``process``: a fresh spawned process, loop on its main thread (bench.train's plain loop);
- ``thread``: a fresh spawned process, loop on a second thread (Ray Train 2 runs the training
  function on a thread of the worker actor);
- ``process_8_threads``: as ``process`` with 8 intra-op CPU threads (Ray sets a worker's
  OMP_NUM_THREADS to its CPU count, ``train.cpus_per_worker``);
- ``ray_task``: a Ray task with one GPU and ``train.cpus_per_worker`` CPUs (Ray's worker process,
  main thread);
- ``ray_train``: TorchTrainer with one GPU worker (bench.train's Ray number).

Each result is written as soon as it is measured. On the H100 machine ``ray_task`` did not return
within the time limit, twice (after other GPU processes; cause not known): it now gives up after
300 s and is reported as an error. bench/results/train_hosts_h100.json: TorchTrainer measured
first 43.2 pairs/s, the plain loop right after 42.0 (1.03×).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import threading
from pathlib import Path

import torch

from bench.report import write_report
from bench.train import isolated, make_shards, measure_loop, measure_ray, variant_config
from pipeline.config import ExperimentConfig


def measure_on_thread(cfg: ExperimentConfig, steps: int, warmup: int, device: torch.device) -> dict:
    result: dict = {}

    def run() -> None:
        try:
            result.update(measure_loop(cfg, steps, warmup, device))
        except Exception as exc:  # re-raised on the calling thread
            result["exception"] = exc

    thread = threading.Thread(target=run, name="TrainingThread")
    thread.start()
    thread.join()
    if "exception" in result:
        raise result["exception"]
    return result


def measure_with_threads(cfg: ExperimentConfig, steps: int, warmup: int, device: torch.device, threads: int) -> dict:
    torch.set_num_threads(threads)
    return measure_loop(cfg, steps, warmup, device)


def measure_ray_task(cfg: ExperimentConfig, steps: int, warmup: int) -> dict:
    import ray

    from pipeline.ray_cluster import ensure_ray

    ensure_ray()
    task = ray.remote(num_gpus=1, num_cpus=cfg.train.cpus_per_worker)(_ray_task_loop)
    return ray.get(task.remote(cfg, steps, warmup), timeout=300)


def _ray_task_loop(cfg: ExperimentConfig, steps: int, warmup: int) -> dict:
    return {**measure_loop(cfg, steps, warmup, torch.device("cuda")), "intra_op_threads": torch.get_num_threads()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--variant", default="bf16_compile", help="a bench.train variant")
    parser.add_argument("--hosts", default="process,thread,process_8_threads,ray_task,ray_train")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench.train_hosts needs a CUDA GPU")
    cfg = variant_config(make_shards(Path(tempfile.mkdtemp(prefix="bench-shards-")), 512), args.variant, args.overrides)
    device = torch.device("cuda")
    hosts = {
        "process": lambda: isolated(measure_loop, cfg, args.steps, args.warmup, device),
        "thread": lambda: isolated(measure_on_thread, cfg, args.steps, args.warmup, device),
        "process_8_threads": lambda: isolated(measure_with_threads, cfg, args.steps, args.warmup, device,
                                              cfg.train.cpus_per_worker),
        "ray_task": lambda: measure_ray_task(cfg, args.steps, args.warmup),
        "ray_train": lambda: measure_ray(cfg, args.steps, args.warmup),
    }
    results: dict[str, dict] = {}
    for name in args.hosts.split(","):
        try:
            results[name] = hosts[name]()
        except Exception as exc:  # one broken host is reported; the others are still measured
            results[name] = {"error": f"{type(exc).__name__}: {exc}"}
        print(name, json.dumps(results[name], default=float), flush=True)
        # written after every host: a run cut short by a time limit keeps what it measured
        pairs = {k: v.get("pairs_per_s", v.get("perf/pairs_per_s")) for k, v in results.items()}
        base = pairs.get("process")
        report = {
            "benchmark": f"one training loop ({args.variant}, paper preset, batch 8, 512²) hosted in and out of Ray",
            "command": " ".join([Path(sys.executable).name, "-m", "bench.train_hosts", *sys.argv[1:]]),
            "gpu": torch.cuda.get_device_name(),
            "torch": torch.__version__,
            "python": platform.python_version(),
            "steps": args.steps, "warmup": args.warmup,
            "hosts": results,
            "pairs_per_s_vs_process": {k: v / base for k, v in pairs.items() if v and base},
        }
        write_report(report, args.out, echo=False)
    write_report(report, args.out)


if __name__ == "__main__":
    main()

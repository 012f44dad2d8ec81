"""Generation speed of the mini-VFHQ (acceptance: 8 identities × 2 clips × 48 frames at 256² in
under 2 minutes on 2 CPU cores).

    python -m bench.synthetic_data --out bench/results/synthetic_data_cpu.json

Generates the default dataset (``SyntheticDataConfig()``, or ``--set field=value`` overrides of
it) ``--repeats`` times into fresh temporary folders, from scratch (the cache is not used), and
records each run's wall time, frames/s, the machine's cores and load average (the machine may be
shared), and whether every run produced byte-identical files.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

from bench._report import command_line
from preprocessing.config import SyntheticDataConfig
from preprocessing.synthetic import GENERATOR_VERSION, dataset_key, generate_dataset


def _digest(folder: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        h.update(str(path.relative_to(folder)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def _size_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench/results/synthetic_data_cpu.json")
    parser.add_argument("--repeats", type=int, default=2, help="runs (the machine may be shared: take the best)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
                        help="override a SyntheticDataConfig field, e.g. --set resolution=512")
    args = parser.parse_args()
    values = {}
    for text in args.overrides:
        key, _, value = text.partition("=")
        values[key] = yaml.safe_load(value)
    cfg = dataclasses.replace(SyntheticDataConfig(), **values)
    frames = cfg.identities * cfg.clips_per_identity * cfg.frames_per_clip

    runs, digests = [], []
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory() as tmp:
            load = os.getloadavg()[0]
            start = time.perf_counter()
            out = generate_dataset(cfg, Path(tmp) / "dataset")
            seconds = time.perf_counter() - start
            digests.append(_digest(out))
            runs.append({"seconds": round(seconds, 2), "frames_per_s": round(frames / seconds, 1),
                         "load_avg_1min_at_start": round(load, 2), "dataset_mb": round(_size_bytes(out) / 2**20, 2)})
        print(json.dumps(runs[-1]), flush=True)
    best = min(runs, key=lambda r: r["seconds"])
    result = {
        "command": command_line("bench.synthetic_data", sys.argv[1:]),
        "config": dataclasses.asdict(cfg),
        "dataset_key": dataset_key(cfg),
        "generator_version": GENERATOR_VERSION,
        "frames": frames,
        "total_seconds": best["seconds"],
        "frames_per_s": best["frames_per_s"],
        "runs": runs,
        "byte_identical_across_runs": len(set(digests)) == 1,
        "acceptance_seconds": 120,
        "passed": best["seconds"] < 120,
        "machine": {"cpu_cores": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "torch": torch.__version__, "note": "2 cores shared with other engineers' jobs"},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: result[k] for k in ("total_seconds", "frames_per_s", "byte_identical_across_runs", "passed")}))


if __name__ == "__main__":
    main()

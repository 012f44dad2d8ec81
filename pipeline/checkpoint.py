"""Training checkpoints: a plain directory that resumes a run exactly.

  model.pt        the network's state dict (official GAGAvatar key layout)
  optimizer.pt    Adam state;  scheduler.pt  LinearLR state
  state.json      step, samples seen per rank (the data position), run name, metrics
  config.yaml     the resolved ExperimentConfig
  rng_rank{r}.pt  every rank's torch/numpy/python RNG states

Rank 0 writes everything but the per-rank RNG files, which each rank writes itself; Ray Train
merges the ranks' files into one checkpoint directory.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .config import ExperimentConfig, load_config, save_config

MODEL_FILE, OPTIMIZER_FILE, SCHEDULER_FILE, STATE_FILE, CONFIG_FILE = (
    "model.pt", "optimizer.pt", "scheduler.pt", "state.json", "config.yaml"
)


@dataclass
class TrainProgress:
    step: int = 0  # optimizer steps done
    samples_seen: dict[str, int] = field(default_factory=dict)  # rank → samples consumed
    run_name: str = ""
    metrics: dict[str, float] = field(default_factory=dict)


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(directory: str | Path, rank: int, progress: TrainProgress, model: torch.nn.Module,
                    optimizer: torch.optim.Optimizer, scheduler: Any, config: ExperimentConfig) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    torch.save(rng_state(), directory / f"rng_rank{rank}.pt")
    if rank == 0:
        torch.save(model.state_dict(), directory / MODEL_FILE)
        torch.save(optimizer.state_dict(), directory / OPTIMIZER_FILE)
        torch.save(scheduler.state_dict(), directory / SCHEDULER_FILE)
        (directory / STATE_FILE).write_text(json.dumps(progress.__dict__, indent=1, sort_keys=True))
        save_config(config, directory / CONFIG_FILE)
    return directory


def load_progress(directory: str | Path) -> TrainProgress:
    data = json.loads((Path(directory) / STATE_FILE).read_text())
    return TrainProgress(**data)


def load_checkpoint(directory: str | Path, rank: int, model: torch.nn.Module,
                    optimizer: torch.optim.Optimizer | None = None, scheduler: Any = None,
                    map_location: str | torch.device = "cpu") -> TrainProgress:
    """Restore model (+ optimizer, scheduler, this rank's RNG) and return the progress record."""
    directory = Path(directory)
    model.load_state_dict(torch.load(directory / MODEL_FILE, map_location=map_location, weights_only=True))
    if optimizer is not None:
        optimizer.load_state_dict(torch.load(directory / OPTIMIZER_FILE, map_location=map_location, weights_only=True))
    if scheduler is not None:
        scheduler.load_state_dict(torch.load(directory / SCHEDULER_FILE, weights_only=True))
    rng_file = directory / f"rng_rank{rank}.pt"
    if rng_file.is_file():
        set_rng_state(torch.load(rng_file, weights_only=False))  # numpy/python states are tuples
    return load_progress(directory)


def load_checkpoint_config(directory: str | Path) -> ExperimentConfig:
    return load_config(Path(directory) / CONFIG_FILE)

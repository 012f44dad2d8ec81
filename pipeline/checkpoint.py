"""Training checkpoints: a plain directory that resumes a run exactly and can prove it is intact.

  model.pt              the network's state dict (official GAGAvatar key layout)
  optimizer.pt          Adam state;  scheduler.pt  LinearLR state
  state.json            step, run name, metrics, world size, every rank's data position and counters
  config.yaml           the resolved ExperimentConfig
  rng_rank{r}.pt        rank r's torch/numpy/python (and CUDA) RNG states, as tensors and numbers
  manifest_rank{r}.json bytes and sha256 of every file rank r wrote, written after them

Rank 0 writes everything but the per-rank files, which each rank writes itself; Ray Train merges
the ranks' files into one checkpoint directory. Every file is read with ``weights_only=True`` or
as JSON/YAML: nothing in a checkpoint is ever executed. :func:`verify_checkpoint` checks a folder
against its manifests; :func:`newest_intact` picks the newest folder of a run that passes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import random
import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import storage
from .config import ExperimentConfig, save_config

log = logging.getLogger("gaga.train")

MODEL_FILE, OPTIMIZER_FILE, SCHEDULER_FILE, STATE_FILE, CONFIG_FILE = (
    "model.pt", "optimizer.pt", "scheduler.pt", "state.json", "config.yaml"
)
CHECKPOINT_DIR = re.compile(r"^checkpoint_(\d+)$")


class CheckpointError(RuntimeError):
    """A checkpoint file that is missing, truncated, altered or not what it should be (names it)."""


def checkpoint_dir_name(step: int) -> str:
    return f"checkpoint_{step:07d}"


@dataclass
class TrainProgress:
    step: int = 0  # optimizer steps done
    samples_seen: dict[str, int] = field(default_factory=dict)  # rank → raw samples consumed (data position)
    run_name: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    world_size: int = 1
    bad_samples: dict[str, int] = field(default_factory=dict)  # rank → samples skipped as unreadable
    bad_shards: dict[str, int] = field(default_factory=dict)  # rank → shards (partly) unreadable
    skipped_steps: int = 0  # steps whose update was skipped (non-finite loss or gradient)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainProgress:
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})


# ----------------------------------------------------------------------------- RNG states


def rng_state() -> dict[str, Any]:
    """This process's RNG states as tensors and plain numbers (loadable with weights_only=True)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(gauss)},
        "python": {"version": int(version), "internal": torch.tensor(internal, dtype=torch.int64),
                   "gauss_next": gauss_next},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any], name: str = "RNG state") -> None:
    """Inverse of :func:`rng_state`; a malformed state raises CheckpointError naming ``name``."""
    try:
        np_state = state["numpy"]
        py_state = state["python"]
        numpy_tuple = (np_state["kind"], np_state["keys"].numpy().astype(np.uint32), int(np_state["pos"]),
                       int(np_state["has_gauss"]), float(np_state["cached_gaussian"]))
        python_tuple = (int(py_state["version"]), tuple(int(v) for v in py_state["internal"].tolist()),
                        py_state["gauss_next"])
        torch_state = state["torch"]
        if not isinstance(torch_state, torch.Tensor) or torch_state.dtype != torch.uint8:
            raise TypeError("torch state is not a uint8 tensor")
        torch.set_rng_state(torch_state)
        np.random.set_state(numpy_tuple)
        random.setstate(python_tuple)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise CheckpointError(f"{name}: not an RNG state of this project ({type(exc).__name__}: {exc})") from exc
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ----------------------------------------------------------------------------- files


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _save_tensor_file(obj: Any, path: Path) -> None:
    with storage.open_write(str(path)) as fh:  # written aside and renamed: never a torn file
        torch.save(obj, fh)


def _load_tensor_file(path: Path, map_location: str | torch.device = "cpu") -> Any:
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError as exc:
        raise CheckpointError(f"{path}: missing") from exc
    except Exception as exc:  # truncated zip, planted pickle, ...: refused, never executed
        raise CheckpointError(f"{path}: unreadable or not plain tensors ({type(exc).__name__}: "
                              f"{str(exc).splitlines()[0][:200]})") from exc


def manifest_name(rank: int) -> str:
    return f"manifest_rank{rank}.json"


def write_manifest(directory: Path, rank: int, names: list[str]) -> Path:
    """Sizes and checksums of ``names`` (files of ``directory``), written last."""
    entries = {n: {"bytes": (directory / n).stat().st_size, "sha256": _sha256(directory / n)} for n in sorted(names)}
    path = directory / manifest_name(rank)
    storage.write_text(str(path), json.dumps({"rank": rank, "files": entries}, indent=1, sort_keys=True))
    return path


def all_finite(*modules_or_states: Any) -> bool:
    """Every floating tensor in these modules / (nested) state dicts is finite."""
    def tensors(obj: Any) -> Iterator[torch.Tensor]:
        if isinstance(obj, torch.nn.Module):
            yield from obj.state_dict().values()
        elif isinstance(obj, torch.Tensor):
            yield obj
        elif isinstance(obj, dict):
            for v in obj.values():
                yield from tensors(v)
        elif isinstance(obj, (list, tuple)):
            for v in obj:
                yield from tensors(v)
    flags = [torch.isfinite(t).all() for x in modules_or_states for t in tensors(x) if t.is_floating_point()]
    return bool(torch.stack(flags).all()) if flags else True


def save_checkpoint(directory: str | Path, rank: int, progress: TrainProgress, model: torch.nn.Module,
                    optimizer: torch.optim.Optimizer, scheduler: Any, config: ExperimentConfig) -> Path:
    """This rank's part of a checkpoint in ``directory`` (its manifest last). Refuses to write
    non-finite weights or optimizer state."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    names = [f"rng_rank{rank}.pt"]
    _save_tensor_file(rng_state(), directory / names[0])
    if rank == 0:
        optimizer_state = optimizer.state_dict()
        if not all_finite(model, optimizer_state):
            raise CheckpointError(f"{directory}: the weights or optimizer state hold NaN/Inf; not saved")
        _save_tensor_file(model.state_dict(), directory / MODEL_FILE)
        _save_tensor_file(optimizer_state, directory / OPTIMIZER_FILE)
        _save_tensor_file(scheduler.state_dict(), directory / SCHEDULER_FILE)
        storage.write_text(str(directory / STATE_FILE), json.dumps(progress.__dict__, indent=1, sort_keys=True))
        save_config(config, directory / CONFIG_FILE)
        names += [MODEL_FILE, OPTIMIZER_FILE, SCHEDULER_FILE, STATE_FILE, CONFIG_FILE]
    write_manifest(directory, rank, names)
    return directory


# ----------------------------------------------------------------------------- verification


def verify_checkpoint(directory: str | Path) -> list[str]:
    """Problems of a local checkpoint folder (empty: intact): each rank's manifest present, every
    file it lists present with its size and checksum. A folder written before manifests existed is
    reported as ``unverified`` (a problem only if a file is missing)."""
    directory = Path(directory)
    problems: list[str] = []
    try:
        state = json.loads((directory / STATE_FILE).read_text())
        world = int(state.get("world_size", 1))
    except (OSError, ValueError, TypeError) as exc:
        return [f"{directory / STATE_FILE}: missing or unreadable ({type(exc).__name__})"]
    if not (directory / manifest_name(0)).is_file() and "world_size" not in state:  # an older layout
        missing = [n for n in (MODEL_FILE, CONFIG_FILE) if not (directory / n).is_file()]
        return [f"{directory / n}: missing" for n in missing] or ["unverified: written before checkpoints had manifests"]
    for rank in range(world):
        path = directory / manifest_name(rank)
        try:
            entries = json.loads(path.read_text())["files"]
        except (OSError, ValueError, KeyError) as exc:
            problems.append(f"{path}: missing or unreadable ({type(exc).__name__})")
            continue
        for name, entry in entries.items():
            file = directory / name
            if not file.is_file():
                problems.append(f"{file}: missing")
            elif file.stat().st_size != entry["bytes"]:
                problems.append(f"{file}: {file.stat().st_size} bytes, the manifest says {entry['bytes']} (truncated?)")
            elif _sha256(file) != entry["sha256"]:
                problems.append(f"{file}: checksum differs from the manifest (altered)")
    return problems


def is_intact(problems: list[str]) -> bool:
    return all(p.startswith("unverified") for p in problems)


@contextlib.contextmanager
def local_copy(url: str, options: storage.S3Options | None = None) -> Iterator[Path]:
    """A checkpoint folder as a local path: itself when local, else downloaded to a temp folder."""
    if not storage.is_s3(url):
        yield storage.local_path(url)
        return
    with tempfile.TemporaryDirectory(prefix="gaga-ckpt-") as tmp:
        prefix = url.rstrip("/") + "/"
        for file_url in storage.list_files(url, recursive=False, options=options):
            (Path(tmp) / file_url[len(prefix):]).write_bytes(storage.read_bytes(file_url, options))
        yield Path(tmp)


def checkpoint_folders(run_url: str, options: storage.S3Options | None = None) -> list[tuple[int, str]]:
    """(step, URL) of every ``checkpoint_<step>`` folder of a run, newest first."""
    found = []
    for url in storage.list_dirs(run_url, options):
        match = CHECKPOINT_DIR.match(storage.basename(url))
        if match:
            found.append((int(match.group(1)), url))
    return sorted(found, reverse=True)


def newest_intact(run_url: str, options: storage.S3Options | None = None) -> tuple[str | None, list[str]]:
    """The newest checkpoint folder of a run that passes :func:`verify_checkpoint`, and one line per
    newer folder that was skipped (naming it and what is wrong)."""
    skipped = []
    for _, url in checkpoint_folders(run_url, options):
        with local_copy(url, options) as directory:
            problems = verify_checkpoint(directory)
        if is_intact(problems):
            return url, skipped
        skipped.append(f"{url}: {'; '.join(problems[:3])}")
    return None, skipped


# ----------------------------------------------------------------------------- what a path names


def _is_checkpoint_dir(path: str, options: storage.S3Options | None = None) -> bool:
    return storage.exists(storage.join(path, MODEL_FILE), options) and storage.exists(storage.join(path, CONFIG_FILE), options)


def resolve_checkpoint(path: str, options: storage.S3Options | None = None) -> tuple[str, str, str]:
    """What ``--checkpoint`` names → (the checkpoint to load, its kind "ours" | "official", how it
    was chosen): one of our
    checkpoint folders (checked against its manifests), a run folder (its newest intact
    checkpoint), or a file (the released GAGAvatar.pt). Anything else raises, saying what was found."""
    path = path.rstrip("/")
    if _is_checkpoint_dir(path, options):
        with local_copy(path, options) as directory:
            problems = verify_checkpoint(directory)
        if not is_intact(problems):
            raise CheckpointError(f"{path}: damaged checkpoint ({'; '.join(problems[:3])})")
        return path, "ours", f"checkpoint folder {path}"
    folders = checkpoint_folders(path, options)
    if folders:
        url, skipped = newest_intact(path, options)
        if url is None:
            raise CheckpointError(f"{path}: a run folder, but none of its {len(folders)} checkpoints is intact "
                                  f"({skipped[0]})")
        note = f" (newer, damaged: {'; '.join(skipped)})" if skipped else ""
        return url, "ours", f"the newest intact checkpoint of the run folder {path}: {storage.basename(url)}{note}"
    if storage.is_s3(path) or Path(path).is_file():
        if storage.exists(path, options):
            return path, "official", f"the released-format weights file {path}"
    raise FileNotFoundError(f"{path}: not a checkpoint folder ({MODEL_FILE} + {CONFIG_FILE}), not a run folder "
                            "(checkpoint_<step>/ inside) and not a weights file (the released GAGAvatar.pt)")


# ----------------------------------------------------------------------------- loading


def load_progress(directory: str | Path) -> TrainProgress:
    path = Path(directory) / STATE_FILE
    try:
        return TrainProgress.from_dict(json.loads(path.read_text()))
    except (OSError, ValueError, TypeError) as exc:
        raise CheckpointError(f"{path}: unreadable ({exc})") from exc


def load_weights(directory: str | Path, model: torch.nn.Module, map_location: str | torch.device = "cpu") -> torch.nn.Module:
    """Our checkpoint's ``model.pt`` into ``model`` (strict: the same architecture). The released
    ``GAGAvatar.pt`` has its own loader, ``model.official_checkpoint.load_official``."""
    model.load_state_dict(_load_tensor_file(Path(directory) / MODEL_FILE, map_location))
    return model


def load_checkpoint(directory: str | Path, rank: int, model: torch.nn.Module,
                    optimizer: torch.optim.Optimizer | None = None, scheduler: Any = None,
                    map_location: str | torch.device = "cpu") -> TrainProgress:
    """Restore model (+ optimizer, scheduler, this rank's RNG) and return the progress record.
    Files that cannot be read raise CheckpointError naming them."""
    directory = Path(directory)
    load_weights(directory, model, map_location)
    if optimizer is not None:
        optimizer.load_state_dict(_load_tensor_file(directory / OPTIMIZER_FILE, map_location))
    if scheduler is not None:
        scheduler.load_state_dict(_load_tensor_file(directory / SCHEDULER_FILE))
    rng_file = directory / f"rng_rank{rank}.pt"
    if rng_file.is_file():
        set_rng_state(_load_tensor_file(rng_file), str(rng_file))
    else:
        log.warning("%s: missing (a rank the run did not have before): this rank's random streams restart "
                    "from the seed", rng_file)
    return load_progress(directory)

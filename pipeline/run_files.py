"""A training run's folder in its storage (``<train.storage_path>/<run name>/``, local or
``s3://``): what lives there besides the checkpoints, and the checks made before a run (re)starts.

  config.yaml            the resolved config of the run (older ones kept as config.previous-*.yaml)
  metrics.jsonl          every logged scalar, one JSON object per line (appended; resumed runs go on)
  loss_curves.png        drawn from metrics.jsonl when the run ends
  images/*.png           training panels (source | target | coarse | refined)
  wandb/                 wandb's (offline) run files
  ABORTED.json           written when the run stopped on purpose (too much bad data, non-finite
                         training): the restarted workers see it and stop, the driver raises
  checkpoint_<step>/     pipeline.checkpoint folders (and Ray Train's checkpoint_manager_snapshot.json)

For remote storage, rank 0 writes these files to a local folder and uploads them at every
checkpoint and at the end (:class:`RunFiles`).
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from . import storage
from .config import ExperimentConfig
from .configtools import ConfigError, replace
from .run_names import trained_config

log = logging.getLogger("gaga.train")

CONFIG_FILE = "config.yaml"
ABORT_FILE = "ABORTED.json"
RAY_SNAPSHOT = "checkpoint_manager_snapshot.json"  # Ray Train's list of the run's checkpoints


class TrainingAborted(RuntimeError):
    """The run stopped itself (its reason says why and which file); restarting would not help."""


def absolute_storage(url: str) -> str:
    """A local path made absolute on the driver (Ray workers run in other folders); an s3:// URL
    or an empty (unset) path as it is."""
    return url if not url or storage.is_s3(url) else str(Path(url).expanduser().resolve())


# the config's paths that training workers open (empty = unused)
WORKER_PATHS = ("train.storage_path", "train.init_from", "data.train_shards", "data.val_shards", "data.test_self_shards")


def absolute_paths(cfg: ExperimentConfig) -> ExperimentConfig:
    """``cfg`` with every local path a training worker opens made absolute on the driver: a Ray
    worker does not run in the folder ``gaga-train`` was started from, so a relative
    ``data.train_shards=outputs/shards/train`` would name nothing there."""
    def value(dotted: str) -> str:
        section, key = dotted.split(".")
        return getattr(getattr(cfg, section), key)

    return replace(cfg, **{k: absolute_storage(value(k)) for k in WORKER_PATHS})


# ----------------------------------------------------------------------------- abort marker


def write_abort(run_url: str, message: str, step: int, options: storage.S3Options | None = None) -> None:
    log.error("stopping the run at step %d: %s", step, message)
    storage.write_text(storage.join(run_url, ABORT_FILE),
                       json.dumps({"message": message, "step": step, "time": time.strftime("%Y-%m-%d %H:%M:%S")}),
                       options)


def read_abort(run_url: str, options: storage.S3Options | None = None) -> dict[str, Any] | None:
    url = storage.join(run_url, ABORT_FILE)
    if not storage.exists(url, options):
        return None
    try:
        return json.loads(storage.read_text(url, options))
    except ValueError:
        return {"message": f"{url} is unreadable", "step": -1}


def clear_abort(run_url: str, options: storage.S3Options | None = None) -> None:
    storage.remove(storage.join(run_url, ABORT_FILE), options)


# ----------------------------------------------------------------------------- config changes


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(data, dict):
        return {prefix: data}
    out: dict[str, Any] = {}
    for key, value in data.items():
        out.update(_flatten(value, f"{prefix}.{key}" if prefix else key))
    return out


def config_changes(old: dict[str, Any], new: ExperimentConfig) -> list[str]:
    """``a.b: old → new`` for every key that changes what the run trains (run_names.trained_config)."""
    from .config import config_from_dict

    try:  # a run stored before its paths were made absolute (run from the same folder) is the same run
        before = _flatten(trained_config(absolute_paths(config_from_dict(old))))
    except ConfigError:  # a config of an older version of this project: compare what both know
        before = _flatten({k: v for k, v in old.items() if isinstance(v, dict)})
    after = _flatten(trained_config(new))
    keys = sorted(set(before) | set(after))
    return [f"{k}: {before.get(k, '(absent)')!r} → {after.get(k, '(absent)')!r}" for k in keys if before.get(k) != after.get(k)]


def check_config(run_url: str, cfg: ExperimentConfig, allow_change: bool, options: storage.S3Options | None = None) -> None:
    """Refuse to resume a run whose stored config.yaml trains something else, unless
    ``allow_change``; then the old file is kept as ``config.previous-<time>.yaml``."""
    import yaml

    url = storage.join(run_url, CONFIG_FILE)
    if not storage.exists(url, options):
        return
    old = yaml.safe_load(storage.read_text(url, options)) or {}
    changes = config_changes(old, cfg)
    if not changes:
        return
    listed = "; ".join(changes[:12]) + (f"; … {len(changes) - 12} more" if len(changes) > 12 else "")
    if not allow_change:
        raise ConfigError(f"run {storage.basename(run_url)!r} exists in {storage.parent(run_url)} with another "
                          f"config ({listed}). Resuming would mix two trainings: choose another train.run_name, "
                          "or pass --allow-config-change to continue it with the new values.")
    kept = storage.join(run_url, f"config.previous-{time.strftime('%Y%m%d-%H%M%S')}.yaml")
    storage.write_text(kept, storage.read_text(url, options), options)
    log.warning("run %s continues with a changed config (%s); the old one is kept as %s",
                storage.basename(run_url), listed, kept)


# ----------------------------------------------------------------------------- Ray's snapshot


def repair_ray_snapshot(run_url: str, options: storage.S3Options | None = None) -> str | None:
    """Ray Train refuses to resume a run whose snapshot names a checkpoint folder that was deleted
    (e.g. a corrupt one a user removed). Such a snapshot is moved aside — the workers pick the
    newest intact checkpoint themselves — and the new name returned."""
    url = storage.join(run_url, RAY_SNAPSHOT)
    if not storage.exists(url, options):
        return None
    text = storage.read_text(url, options)
    names = sorted(set(re.findall(r"checkpoint_\d+", text)))
    missing = [n for n in names if not storage.list_files(storage.join(run_url, n), recursive=False, options=options)]
    if not missing:
        return None
    aside = f"{url}.stale-{time.strftime('%Y%m%d-%H%M%S')}"
    storage.write_text(aside, text, options)
    storage.remove(url, options)
    log.warning("Ray's run snapshot names checkpoint folders that are gone (%s): moved it to %s; resuming from "
                "the newest intact checkpoint", ", ".join(missing), aside)
    return aside


# ----------------------------------------------------------------------------- run files


class RunFiles:
    """The folder rank 0 writes a run's files into: the run's storage folder itself when local,
    else a local staging folder whose files are uploaded by :meth:`sync` (metrics.jsonl is fetched
    first, so a resumed run keeps appending to its history)."""

    def __init__(self, run_url: str, options: storage.S3Options | None = None) -> None:
        self.run_url, self.options = run_url, options
        self.remote = storage.is_s3(run_url)
        self._uploaded: dict[str, tuple[int, float]] = {}
        if not self.remote:
            self.local = storage.local_path(run_url)
            self.local.mkdir(parents=True, exist_ok=True)
            return
        self.local = Path(tempfile.mkdtemp(prefix=f"gaga-run-{storage.basename(run_url)}-"))
        from .run_logging import METRICS_FILE

        remote_metrics = storage.join(run_url, METRICS_FILE)
        if storage.exists(remote_metrics, options):
            (self.local / METRICS_FILE).write_bytes(storage.read_bytes(remote_metrics, options))

    def sync(self) -> list[str]:
        """Upload files that are new or changed since the last sync (remote storage only);
        returns the URLs uploaded."""
        if not self.remote:
            return []
        done = []
        for path in sorted(p for p in self.local.rglob("*") if p.is_file()):
            rel = path.relative_to(self.local).as_posix()
            stat = path.stat()
            if self._uploaded.get(rel) == (stat.st_size, stat.st_mtime):
                continue
            url = storage.join(self.run_url, rel)
            storage.write_bytes(url, path.read_bytes(), self.options)
            self._uploaded[rel] = (stat.st_size, stat.st_mtime)
            done.append(url)
        return done

    def close(self) -> None:
        self.sync()
        if self.remote:
            shutil.rmtree(self.local, ignore_errors=True)


def list_run_files(run_url: str, options: storage.S3Options | None = None) -> list[str]:
    """The run's own files (not the checkpoints, not Ray's or wandb's internals), for the summary."""
    out = []
    for url in storage.list_files(run_url, recursive=False, options=options):
        if not storage.basename(url).startswith((RAY_SNAPSHOT, ".")):
            out.append(url)
    images = storage.list_files(storage.join(run_url, "images"), recursive=False, options=options)
    if images:
        out.append(f"{storage.join(run_url, 'images')}/ ({len(images)} PNG panels)")
    return out

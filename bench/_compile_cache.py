"""For bench.train only: how much of torch.compile's warm-up a portable compile cache saves.

Training does NOT restore compile caches from its storage: the file is generated code that torch
imports, so anyone who can write the run's storage could plant code that every worker would run
(docs/reliability.md). Training keeps inductor's cache on each node's local disk instead
(``pipeline.step.compile_regions``). The benchmark restores only a file it wrote itself, in its own
temporary folder, a minute earlier.

The file is PyTorch's portable "mega-cache" (``torch.compiler.save_cache_artifacts`` /
``load_cache_artifacts``): every FX-graph, AOTAutograd, Triton and autotuning entry this process
produced, which restoring writes into the local inductor caches (``TORCHINDUCTOR_CACHE_DIR``).
An entry whose torch/Triton/GPU/source key does not match is simply never hit: the compile then
happens as without a cache.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass

import torch

from pipeline import storage

log = logging.getLogger("gaga.compile_cache")

CACHE_FILE = "torch_compile_cache.bin"


def cache_key() -> str:
    """The software and device the entries were made for (recorded beside sizes in reports)."""
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = "none"
    return f"torch {torch.__version__}, triton {triton_version}, {device}"


@dataclass
class CacheEvent:
    """What a restore or a save did: bytes moved, seconds taken, entries by kind."""

    url: str
    nbytes: int = 0
    seconds: float = 0.0
    entries: dict[str, int] | None = None
    note: str = ""


def _entries(info) -> dict[str, int]:
    """CacheInfo → {artifact kind: count}."""
    counts = {}
    for name in dir(info):
        if name.endswith("_artifacts") and not name.startswith("_"):
            value = getattr(info, name)
            if isinstance(value, list) and value:
                counts[name.removesuffix("_artifacts")] = len(value)
    return counts


class CompileCache:
    """A run's compile cache at ``url`` (a local path or ``s3://``; :mod:`pipeline.storage`)."""

    def __init__(self, url: str, options: storage.S3Options | None = None) -> None:
        self.url, self.options = url, options
        self._saved_digest: str | None = None

    def restore(self) -> CacheEvent:
        """Load the cache file into this process's local inductor caches, if there is one.
        Call before the first compiled call; a missing or unreadable file only logs."""
        t0 = time.perf_counter()
        if not storage.exists(self.url, self.options):
            return CacheEvent(self.url, note="no cache yet: this run compiles and saves one")
        try:
            data = storage.read_bytes(self.url, self.options)
            info = torch.compiler.load_cache_artifacts(data)
        except Exception as exc:  # a cache is an optimisation: never a reason to fail a run
            log.warning("compile cache %s not loaded: %s: %s", self.url, type(exc).__name__, exc)
            return CacheEvent(self.url, note=f"not loaded: {type(exc).__name__}: {exc}")
        self._saved_digest = hashlib.sha256(data).hexdigest()  # the same bytes need no rewrite
        event = CacheEvent(self.url, len(data), time.perf_counter() - t0, _entries(info) if info else {})
        log.info("compile cache restored from %s: %d bytes, %s", self.url, event.nbytes, event.entries)
        return event

    def save_if_new(self) -> CacheEvent:
        """Write every artifact this process compiled or loaded so far (rank 0, after the first
        step; again later if more was compiled, e.g. the eval-mode graphs of validation)."""
        t0 = time.perf_counter()
        saved = torch.compiler.save_cache_artifacts()
        if saved is None:
            return CacheEvent(self.url, note="nothing compiled")
        data, info = saved
        digest = hashlib.sha256(data).hexdigest()
        if digest == self._saved_digest:
            return CacheEvent(self.url, note="unchanged")
        storage.write_bytes(self.url, data, self.options)
        self._saved_digest = digest
        event = CacheEvent(self.url, len(data), time.perf_counter() - t0, _entries(info))
        log.info("compile cache saved to %s: %d bytes, %s", self.url, event.nbytes, event.entries)
        return event

"""Training data: a deterministic, resumable stream of (source → target) pairs per rank.

Two sources feed the same step function:
- ``MockPairSource``: decoded pairs held in memory (unit tests);
- ``ShardPairSource``: WebDataset tars (local folder or ``s3://`` prefix, read by
  ``pipeline.shard_reader``). Each epoch shuffles the shard list with (seed, epoch); rank r takes
  every world-th shard (cycling when there are fewer shards than ranks, so every rank always has
  data); samples of ``group_shards`` shards are pooled and permuted with (seed, epoch, rank,
  group) — a bounded shuffle buffer of ``data.shuffle_shards`` shards. The stream is infinite, so
  every rank runs exactly ``train.steps`` steps (no end-of-epoch hang), and the sample at
  position i is a pure function of i: resuming at position p skips whole groups by their sample
  counts (counted by the same reader that reads them).

Decoding (JPEG → tensors) runs in a thread pool ahead of the step (PIL and numpy release the
GIL), in order. A sample that cannot be used is skipped and recorded (``pipeline.shard_reader``);
the loader's position counts raw samples, skipped ones included, so a resumed run continues with
exactly the data it would have seen.
"""

from __future__ import annotations

import concurrent.futures as cf
import itertools
import queue
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from . import storage
from .shard_reader import BadDataLog, DataError, decode_or_record, read_shard


@dataclass
class PairBatch:
    """A collated batch. Images float32 in [0,1]; params [B, 428] (model.frame_params)."""

    source_image: torch.Tensor  # [B,3,H,W]
    target_image: torch.Tensor  # [B,3,H,W]
    source_params: torch.Tensor  # [B,428]
    target_params: torch.Tensor  # [B,428]
    keys: list[str]

    def to(self, device: torch.device | str, non_blocking: bool = True) -> PairBatch:
        move = lambda t: t.to(device, non_blocking=non_blocking)
        return PairBatch(move(self.source_image), move(self.target_image), move(self.source_params),
                         move(self.target_params), self.keys)

    def __len__(self) -> int:
        return len(self.keys)


def _image_tensor(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(image, copy=True)).permute(2, 0, 1).float().div_(255.0)  # decoded arrays may be read-only


def collate_pairs(samples: list[dict[str, Any]]) -> PairBatch:
    """Decoded samples (preprocessing.sample_format.decode_pair) → PairBatch (pinned on CUDA hosts)."""
    batch = PairBatch(
        source_image=torch.stack([_image_tensor(s["source"]) for s in samples]),
        target_image=torch.stack([_image_tensor(s["target"]) for s in samples]),
        source_params=torch.from_numpy(np.stack([s["source_params"] for s in samples])),
        target_params=torch.from_numpy(np.stack([s["target_params"] for s in samples])),
        keys=[s["key"] for s in samples],
    )
    if torch.cuda.is_available():
        batch = PairBatch(*(t.pin_memory() for t in (batch.source_image, batch.target_image,
                                                     batch.source_params, batch.target_params)), batch.keys)
    return batch


# ----------------------------------------------------------------------------- raw sample streams


class ShardPairSource:
    """Deterministic infinite raw-sample stream of one rank over WebDataset tars."""

    def __init__(self, urls: list[str], rank: int = 0, world_size: int = 1, seed: int = 0,
                 group_shards: int = 4, options: storage.S3Options | None = None, bad: BadDataLog | None = None) -> None:
        if not urls:
            raise ValueError("no training shards given (data.train_shards is empty or holds no .tar files)")
        self.urls, self.rank, self.world_size, self.seed = sorted(urls), rank, world_size, seed
        self.group_shards = max(1, group_shards)
        self.bad = bad if bad is not None else BadDataLog()
        self._options = options
        self._sizes: dict[str, int] = {}

    def _rank_shards(self, epoch: int) -> list[str]:
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.urls))
        if len(order) < self.world_size:  # fewer shards than ranks: share them, nobody runs dry
            return [self.urls[order[self.rank % len(order)]]]
        return [self.urls[i] for i in order[self.rank::self.world_size]]

    def _groups(self, epoch: int) -> list[list[str]]:
        shards = self._rank_shards(epoch)
        return [shards[i:i + self.group_shards] for i in range(0, len(shards), self.group_shards)]

    def _read(self, url: str) -> list[dict[str, Any]]:
        samples = read_shard(url, self.bad, self._options)
        self._sizes[url] = len(samples)
        return samples

    def _size(self, url: str) -> int:
        """Samples of a shard as the reader yields them (read once, then remembered)."""
        if url not in self._sizes:
            self._read(url)
        return self._sizes[url]

    def iter_from(self, start: int = 0) -> Iterator[dict[str, Any]]:
        """Raw samples from stream position ``start`` on (whole groups before it are skipped by
        counting their samples, without decoding). An epoch of this rank's shards that yields no
        sample at all raises DataError instead of looping forever."""
        skip = start
        for epoch in itertools.count():
            yielded = 0
            groups = self._groups(epoch)
            for g, group in enumerate(groups):
                if skip > 0:
                    size = sum(self._size(u) for u in group)
                    if skip >= size:
                        skip -= size
                        yielded += size
                        continue
                samples = [s for url in group for s in self._read(url)]
                order = np.random.default_rng([self.seed, epoch, self.rank, g]).permutation(len(samples))
                for i in order[skip:]:
                    yielded += 1
                    yield samples[i]
                skip = 0
            if yielded == 0:
                shards = [u for grp in groups for u in grp]
                raise DataError(f"rank {self.rank}: its {len(shards)} shard(s) hold no readable sample "
                                f"(e.g. {shards[0]}); {'; '.join(self.bad.examples[:2])}")


class MockPairSource:
    """In-memory decoded pairs, cycled deterministically (same interface as ShardPairSource)."""

    def __init__(self, samples: list[dict[str, Any]], rank: int = 0, world_size: int = 1) -> None:
        if not samples:
            raise ValueError("MockPairSource needs at least one sample")
        self.samples = samples[rank::world_size] or samples

    def iter_from(self, start: int = 0) -> Iterator[dict[str, Any]]:
        n = len(self.samples)
        for i in itertools.count(start):
            yield self.samples[i % n]


# ----------------------------------------------------------------------------- batching + prefetch


def _is_decoded(sample: dict[str, Any]) -> bool:
    return "source" in sample and isinstance(sample["source"], np.ndarray)


class PrefetchingLoader:
    """Iterates PairBatches from ``source.iter_from(start)``, decoding in a thread pool and
    collating up to ``prefetch`` batches ahead. Order is exact. Unusable samples are skipped
    (recorded in ``bad``); ``position`` counts the raw samples behind the batches handed out.
    ``image_size``: the side every image must have (the data's first sample's), or None."""

    def __init__(self, source: MockPairSource | ShardPairSource, batch_size: int, start: int = 0,
                 threads: int = 4, prefetch: int = 4, image_size: int | None = None,
                 bad: BadDataLog | None = None) -> None:
        self.source, self.batch_size, self.image_size = source, batch_size, image_size
        self.bad = bad if bad is not None else getattr(source, "bad", None) or BadDataLog()
        self.position = start  # raw samples consumed by the batches handed out (this rank)
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, prefetch))
        self._stop = threading.Event()
        self._pool = cf.ThreadPoolExecutor(max_workers=max(1, threads), thread_name_prefix="decode")
        self._thread = threading.Thread(target=self._produce, daemon=True, name="batch-producer")
        self._thread.start()

    def _decode(self, sample: dict[str, Any]) -> dict[str, Any] | None:
        return sample if _is_decoded(sample) else decode_or_record(sample, self.bad, self.image_size)

    def _produce(self) -> None:
        try:
            decoded = self._ordered_decode(self.source.iter_from(self.position))
            while not self._stop.is_set():
                samples, consumed = [], 0
                while len(samples) < self.batch_size:
                    item = next(decoded)
                    consumed += 1
                    if item is not None:
                        samples.append(item)
                self._put((collate_pairs(samples), consumed))
        except BaseException as exc:  # hand errors to the consumer instead of dying silently
            self._put(exc)

    def _ordered_decode(self, raw: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any] | None]:
        # a bounded window of futures: Executor.map would consume the infinite stream eagerly
        window: list[cf.Future] = []
        depth = self.batch_size * 2
        for sample in raw:
            window.append(self._pool.submit(self._decode, sample))
            if len(window) >= depth:
                yield window.pop(0).result()
        for fut in window:  # pragma: no cover - the stream is infinite
            yield fut.result()

    def _put(self, item: Any) -> None:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def __iter__(self) -> PrefetchingLoader:
        return self

    def __next__(self) -> PairBatch:
        item = self._queue.get()
        if isinstance(item, BaseException):
            raise item
        batch, consumed = item
        self.position += consumed
        return batch

    def close(self) -> None:
        self._stop.set()
        self._pool.shutdown(wait=False, cancel_futures=True)

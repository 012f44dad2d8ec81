"""Training data: a deterministic, resumable stream of (source → target) pairs per rank.

Three sources feed the same step function:
- ``MockPairSource``: decoded pairs held in memory (unit tests);
- ``ShardPairSource``: WebDataset tars (local folder or ``s3://`` prefix). Each epoch shuffles
  the shard list with (seed, epoch); rank r takes every world-th shard (cycling when there are
  fewer shards than ranks, so every rank always has data); samples of ``group_shards`` shards
  are pooled and permuted with (seed, epoch, rank, group) — a bounded shuffle buffer. The stream
  is infinite, so every rank runs exactly ``train.steps`` steps (no end-of-epoch hang), and the
  sample at position i is a pure function of i: resuming at step s means starting at
  i = s·batch, which skips whole shards without reading them when their sizes are known.
- Ray Data (``pipeline.ray_data_source``) as an alternative for very large datasets.

Decoding (JPEG → tensors) runs in a thread pool ahead of the step (PIL and numpy release the
GIL), in order, so the data position stays exact.
"""

from __future__ import annotations

import concurrent.futures as cf
import io
import itertools
import queue
import tarfile
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from preprocessing.sample_format import decode_pair

from . import storage


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


def read_shard(url: str, options: storage.S3Options | None = None) -> list[dict[str, Any]]:
    """All samples of one tar as raw dicts ``{"__key__", "<member ext>": bytes}``, in file order."""
    samples: list[dict[str, Any]] = []
    current: dict[str, Any] | None = None
    with storage.open_binary(url, options) as fh, tarfile.open(fileobj=fh, mode="r|*") as tar:
        for member in tar:
            if not member.isfile():
                continue
            name = member.name.rsplit("/", 1)[-1]
            key, _, ext = name.partition(".")
            data = tar.extractfile(member).read()
            if current is None or current["__key__"] != key:
                current = {"__key__": key}
                samples.append(current)
            current[ext] = data
    return samples


def count_shard_samples(url: str, options: storage.S3Options | None = None) -> int:
    """Number of samples in a tar (headers only for local files)."""
    keys = set()
    with storage.open_binary(url, options) as fh, tarfile.open(fileobj=fh, mode="r|*") as tar:
        for member in tar:
            if member.isfile():
                keys.add(member.name.rsplit("/", 1)[-1].partition(".")[0])
    return len(keys)


class ShardPairSource:
    """Deterministic infinite raw-sample stream of one rank over WebDataset tars."""

    def __init__(self, urls: list[str], rank: int = 0, world_size: int = 1, seed: int = 0,
                 group_shards: int = 4, options: storage.S3Options | None = None) -> None:
        if not urls:
            raise ValueError("no training shards given (data.train_shards is empty or holds no .tar files)")
        self.urls, self.rank, self.world_size, self.seed = sorted(urls), rank, world_size, seed
        self.group_shards = max(1, group_shards)
        self._reader = lambda url: read_shard(url, options)
        self._counter = lambda url: count_shard_samples(url, options)
        self._sizes: dict[str, int] = {}

    def _rank_shards(self, epoch: int) -> list[str]:
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.urls))
        if len(order) < self.world_size:  # fewer shards than ranks: share them, nobody runs dry
            return [self.urls[order[self.rank % len(order)]]]
        return [self.urls[i] for i in order[self.rank::self.world_size]]

    def _groups(self, epoch: int) -> list[list[str]]:
        shards = self._rank_shards(epoch)
        return [shards[i:i + self.group_shards] for i in range(0, len(shards), self.group_shards)]

    def _size(self, url: str) -> int:
        if url not in self._sizes:
            self._sizes[url] = self._counter(url)
        return self._sizes[url]

    def iter_from(self, start: int = 0) -> Iterator[dict[str, Any]]:
        """Raw samples from stream position ``start`` on (whole groups before it are skipped by
        counting their samples, without decoding)."""
        skip = start
        for epoch in itertools.count():
            for g, group in enumerate(self._groups(epoch)):
                if skip > 0:
                    size = sum(self._size(u) for u in group)
                    if skip >= size:
                        skip -= size
                        continue
                samples = []
                for url in group:
                    shard = self._reader(url)
                    self._sizes[url] = len(shard)
                    samples.extend(shard)
                order = np.random.default_rng([self.seed, epoch, self.rank, g]).permutation(len(samples))
                for i in order[skip:]:
                    yield samples[i]
                skip = 0


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


def _decode_if_raw(sample: dict[str, Any]) -> dict[str, Any]:
    return sample if "source" in sample and isinstance(sample["source"], np.ndarray) else decode_pair(sample)


class PrefetchingLoader:
    """Iterates PairBatches from ``source.iter_from(start_batch·batch_size)``, decoding in a thread
    pool and collating up to ``prefetch`` batches ahead. Order is exact (``Executor.map``)."""

    def __init__(self, source: MockPairSource | ShardPairSource, batch_size: int, start_batch: int = 0,
                 threads: int = 4, prefetch: int = 4) -> None:
        self.source, self.batch_size = source, batch_size
        self.position = start_batch * batch_size  # samples handed out so far (this rank)
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, prefetch))
        self._stop = threading.Event()
        self._pool = cf.ThreadPoolExecutor(max_workers=max(1, threads), thread_name_prefix="decode")
        self._thread = threading.Thread(target=self._produce, daemon=True, name="batch-producer")
        self._thread.start()

    def _produce(self) -> None:
        try:
            raw = self.source.iter_from(self.position)
            decoded = self._ordered_decode(raw)
            while not self._stop.is_set():
                samples = list(itertools.islice(decoded, self.batch_size))
                self._put(collate_pairs(samples))
        except BaseException as exc:  # hand errors to the consumer instead of dying silently
            self._put(exc)

    def _ordered_decode(self, raw: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        # a bounded window of futures: Executor.map would consume the infinite stream eagerly
        window: list[cf.Future] = []
        depth = self.batch_size * 2
        for sample in raw:
            window.append(self._pool.submit(_decode_if_raw, sample))
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
        self.position += len(item)
        return item

    def close(self) -> None:
        self._stop.set()
        self._pool.shutdown(wait=False, cancel_futures=True)


def decode_samples(raw: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    return [_decode_if_raw(s) for s in raw]


def read_eval_pairs(prefix: str, limit: int = 0, options: storage.S3Options | None = None) -> list[dict[str, Any]]:
    """Every (or the first ``limit``) decoded pair under a shard prefix, in a fixed order."""
    out: list[dict[str, Any]] = []
    for url in storage.shard_urls(prefix, options):
        for sample in read_shard(url, options):
            out.append(decode_pair(sample))
            if limit and len(out) >= limit:
                return out
    return out


def image_to_uint8(image: torch.Tensor) -> np.ndarray:
    """[3,H,W] float → H×W×3 uint8 (for panels and videos)."""
    return (image.detach().float().clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy()


def encode_png(image: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()

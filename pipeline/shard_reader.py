"""Reading pair shards (local or ``s3://``) for training, validation, evaluation and reenactment,
with one policy for bad data.

Samples are what :func:`preprocessing.shards.iter_tar_samples` (WebDataset's grouping) yields;
a sample is usable when :func:`preprocessing.sample_format.decode_pair` accepts it.

Policy — the same in training and evaluation: a sample that cannot be used is **skipped and
recorded** (one log line naming the shard, the key and the problem; counted); a shard that cannot
be read to its end (missing, empty, truncated, not a tar) keeps the samples read before the
problem and is recorded once. A run stops with one clear error when the bad data passes
``data.max_bad_samples`` / ``data.max_bad_shards``, and a source with no usable sample at all fails
before anything starts (:func:`first_usable_sample`).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from preprocessing.sample_format import SampleError, decode_pair
from preprocessing.shards import ShardReadError, iter_tar_samples

from . import storage

log = logging.getLogger("gaga.data")


class DataError(RuntimeError):
    """The data cannot feed the run (no usable sample, or more bad data than allowed)."""


def shard_samples(url: str, options: storage.S3Options | None = None) -> Iterator[dict[str, Any]]:
    """Raw samples of one tar (streamed); any read problem raises ShardReadError naming the URL."""
    try:
        stream = storage.open_read(url, options)
    except storage.StorageError as exc:
        raise ShardReadError(url, f"cannot open ({exc})") from exc
    with contextlib.closing(stream):
        yield from iter_tar_samples(stream, url)


@dataclass
class BadDataLog:
    """What was skipped (thread-safe: decoding runs in a thread pool). Each distinct bad sample or
    shard is logged once and counted once."""

    samples: int = 0
    shards: int = 0
    examples: list[str] = field(default_factory=list)  # the first few lines, for the final error
    _seen: set[str] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _record(self, what: str, identity: str, line: str) -> bool:
        with self._lock:
            if identity in self._seen:
                return False
            self._seen.add(identity)
            if what == "sample":
                self.samples += 1
            else:
                self.shards += 1
            if len(self.examples) < 5:
                self.examples.append(line)
        log.warning("skipped %s: %s", what, line)
        return True

    def sample(self, error: SampleError) -> None:
        self._record("sample", f"{error.url}#{error.key}", str(error))

    def shard(self, error: ShardReadError) -> None:
        self._record("shard", error.url, str(error))


def read_shard(url: str, bad: BadDataLog, options: storage.S3Options | None = None) -> list[dict[str, Any]]:
    """Every raw sample of a tar that could be read; a read problem is recorded in ``bad``."""
    samples: list[dict[str, Any]] = []
    try:
        for sample in shard_samples(url, options):
            samples.append(sample)
    except ShardReadError as exc:
        bad.shard(exc)
    return samples


def decode_or_record(sample: dict[str, Any], bad: BadDataLog, image_size: int | None = None) -> dict[str, Any] | None:
    """decode_pair, or None (recorded in ``bad``) when the sample is unusable."""
    try:
        return decode_pair(sample, image_size)
    except SampleError as exc:
        bad.sample(exc)
        return None


def first_usable_sample(urls: list[str], options: storage.S3Options | None = None, where: str = "") -> dict[str, Any]:
    """The first usable sample of the sorted shards (what fixes the data's image size), or
    DataError naming the source when none of them holds one. Reads only as far as needed."""
    bad = BadDataLog()
    for url in sorted(urls):
        try:
            for sample in shard_samples(url, options):
                decoded = decode_or_record(sample, bad)
                if decoded is not None:
                    return decoded
        except ShardReadError as exc:
            bad.shard(exc)
    detail = f"; e.g. {bad.examples[0]}" if bad.examples else " (every shard is empty)"
    raise DataError(f"{where or 'the shards'}: no usable sample in {len(urls)} shard(s){detail}")


def read_pairs(prefix: str, limit: int = 0, options: storage.S3Options | None = None,
               image_size: int | None = None, bad: BadDataLog | None = None) -> list[dict[str, Any]]:
    """Every (or the first ``limit``) usable decoded pair under a shard prefix, in a fixed order;
    unusable ones are skipped and recorded."""
    bad = bad if bad is not None else BadDataLog()
    out: list[dict[str, Any]] = []
    for url in storage.shard_urls(prefix, options):
        for sample in read_shard(url, bad, options):
            decoded = decode_or_record(sample, bad, image_size)
            if decoded is not None:
                out.append(decoded)
                if limit and len(out) >= limit:
                    return out
    return out

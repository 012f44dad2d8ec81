"""Bad shards and bad samples: every defect is skipped with one line naming the shard and the key,
counted, and never reaches a batch; a source without a usable sample fails at once instead of
hanging; training and evaluation read samples by the same (WebDataset's) rule, so resume stays
exact even with a key repeated inside a shard."""

from __future__ import annotations

import io
import itertools
import logging
import tarfile

import numpy as np
import pytest
import webdataset as wds

from model.frame_params import FrameParams
from pipeline.data import PrefetchingLoader, ShardPairSource
from pipeline.eval.data import index_shard
from pipeline.shard_reader import BadDataLog, DataError, first_usable_sample, read_shard, shard_samples
from preprocessing.sample_format import SampleError, decode_pair, encode_pair, sample_key
from preprocessing.shards import ShardReadError, tar_bytes, write_tar


def _params(i: float) -> FrameParams:
    return FrameParams(np.full(300, i, np.float32), np.zeros(100), np.zeros(6), np.zeros(6), np.eye(3, 4),
                       np.array([0.2, 0.2, 0.8, 0.8]))


def _sample(clip: str, i: int, size: int = 8) -> dict:
    img = np.full((size, size, 3), i, np.uint8)
    return encode_pair(sample_key(clip, 0, i), img, img, _params(i), _params(i), {"i": i}, "png")


def _write(path, samples) -> str:
    with wds.TarWriter(str(path)) as sink:
        for s in samples:
            sink.write(s)
    return str(path)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """Five shards: good; good mixed with six kinds of bad sample; truncated; 0 bytes; no members."""
    root = tmp_path_factory.mktemp("bad_shards")
    good = [_sample("good", i) for i in range(5)]
    nan = _sample("mixed", 100)
    nan["target.params.npy"] = encode_pair("x", np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8, 3), np.uint8),
                                           _params(float("nan")), _params(0), {})["source.params.npy"]
    garbage = {**_sample("mixed", 101), "source.png": b"this is not a png"}
    bad_meta = {**_sample("mixed", 102), "meta.json": b"{not json"}
    other_size = _sample("mixed", 103, size=16)
    missing = {k: v for k, v in _sample("mixed", 104).items() if k != "target.params.npy"}
    mixed = [_sample("mixed", 1), nan, garbage, bad_meta, other_size, missing, _sample("mixed", 2)]
    urls = [_write(root / "train-0000.tar", good), _write(root / "train-0001.tar", mixed)]
    whole = tar_bytes([_sample("trunc", i) for i in range(4)])
    (root / "train-0002.tar").write_bytes(whole[: len(whole) * 5 // 8])  # cut inside the 3rd sample
    (root / "train-0003.tar").write_bytes(b"")
    with tarfile.open(root / "train-0004.tar", "w"):
        pass
    urls += [str(root / f"train-000{i}.tar") for i in (2, 3, 4)]
    return urls


def _key_index(key: str) -> int:
    return int(key.rsplit("_", 1)[1])


def test_the_loader_skips_every_bad_sample_and_shard_and_names_them(shards, caplog):
    caplog.set_level(logging.WARNING, logger="gaga.data")
    source = ShardPairSource(shards, seed=0, group_shards=2)
    loader = PrefetchingLoader(source, batch_size=3, threads=2, image_size=8)
    keys = [k for batch in itertools.islice(loader, 6) for k in batch.keys]
    loader.close()
    good = {f"good_000000_{i:06d}" for i in range(5)} | {"mixed_000000_000001", "mixed_000000_000002",
                                                        "trunc_000000_000000", "trunc_000000_000001"}
    assert set(keys) == good  # nothing else ever reaches a batch
    assert source.bad.samples == 5 and source.bad.shards == 2  # counted once each, over several epochs
    lines = [r.getMessage() for r in caplog.records]
    for key, problem in (("100", "non-finite"), ("101", "not a decodable image"), ("102", "not valid JSON"),
                         ("103", "16×16"), ("104", "no member target.params.npy")):
        assert any(f"train-0001.tar: sample 'mixed_000000_000{key}'" in line and problem in line for line in lines), key
    assert any("train-0002.tar" in line and "after sample 'trunc_000000_000001'" in line for line in lines)
    assert any("train-0003.tar" in line and "empty file" in line for line in lines)


def test_position_counts_skipped_samples_so_resume_is_exact(shards):
    def loader(start: int = 0) -> PrefetchingLoader:
        return PrefetchingLoader(ShardPairSource(shards, seed=1, group_shards=2), batch_size=2, threads=1,
                                 start=start, image_size=8)

    reference = loader()
    batches, positions = [], []
    for _ in range(8):
        positions.append(reference.position)
        batches.append(next(reference).keys)
    reference.close()
    assert positions[-1] > 2 * 7  # bad samples were consumed (skipped) along the way
    for k in (1, 3, 6):
        resumed = loader(positions[k])
        assert [next(resumed).keys for _ in range(8 - k)] == batches[k:]
        resumed.close()


def test_a_source_without_a_usable_sample_fails_at_start_and_never_hangs(shards, tmp_path):
    with pytest.raises(DataError, match="no usable sample in 2 shard"):
        first_usable_sample(shards[3:], where="data.train_shards=x")
    assert first_usable_sample(shards)["key"] == "good_000000_000000"
    only_bad = _write(tmp_path / "bad.tar", [{**_sample("b", i), "source.png": b"x"} for i in range(3)])
    with pytest.raises(DataError, match="no usable sample"):
        first_usable_sample([only_bad])
    empty = ShardPairSource(shards[3:], seed=0)  # the worker-side guard: an epoch with nothing to read
    with pytest.raises(DataError, match="hold no readable sample"):
        next(empty.iter_from(0))


def test_decode_rejects_non_finite_parameters_naming_shard_and_key():
    sample = {**_sample("c", 7), "__url__": "s3://bucket/train-000.tar"}
    sample["source.params.npy"] = encode_pair("x", np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8, 3), np.uint8),
                                              _params(float("inf")), _params(0), {})["source.params.npy"]
    with pytest.raises(SampleError, match=r"s3://bucket/train-000.tar: sample 'c_000000_000007': source.params.npy "
                                          r"holds 300 non-finite values"):
        decode_pair(sample)


def test_repeated_keys_follow_webdatasets_rule_in_counting_and_reading(tmp_path):
    """A key met again later in a shard is another sample, for the counter and the reader alike."""
    samples = [_sample("r", i) for i in range(6)]
    samples.insert(4, {**_sample("r", 1), "source.png": samples[2]["source.png"]})  # key r_..._000001 again
    url = _write(tmp_path / "rep-0.tar", samples)
    second = _write(tmp_path / "rep-1.tar", [_sample("s", i) for i in range(5)])
    assert len(read_shard(url, BadDataLog())) == 7
    full = [s["__key__"] for s in itertools.islice(ShardPairSource([url, second], seed=3).iter_from(0), 60)]
    for start in range(0, 30):
        fresh = ShardPairSource([url, second], seed=3)  # sizes unknown: counted by the reader itself
        assert [s["__key__"] for s in itertools.islice(fresh.iter_from(start), 60 - start)] == full[start:]


def test_the_writer_refuses_keys_that_would_not_read_back(tmp_path):
    for key in ("clip.v2_000001_000002", "a/b"):
        with pytest.raises(ValueError, match="would not read back"):
            write_tar(io.BytesIO(), [{"__key__": key, "png": b"x"}])
    with pytest.raises(ValueError, match="written twice"):
        write_tar(io.BytesIO(), [{"__key__": "k", "png": b"x"}, {"__key__": "k", "png": b"y"}])
    # a foreign shard with a dotted key: WebDataset cuts it at the first dot, the sample is named and skipped
    url = _write(tmp_path / "dots.tar", [{**_sample("d", 1), "__key__": "clip.v2_000000_000001"}])
    with pytest.raises(SampleError, match=r"sample 'clip': no member source"):
        decode_pair(read_shard(url, BadDataLog())[0])


def test_evaluation_indexes_bad_samples_as_errors_with_the_same_rule(shards):
    rows = index_shard({"url": shards[1], "split": "self"})
    errors = {r["key"]: r["error"] for r in rows if r["error"]}
    assert sorted(errors) == [f"mixed_000000_000{k}" for k in (100, 101, 102, 104)]  # 103 is only another size
    assert all(shards[1] in e and k in e for k, e in errors.items())
    truncated = index_shard({"url": shards[2], "split": "self"})
    assert [r["key"] for r in truncated] == ["trunc_000000_000000", "trunc_000000_000001", ""]
    assert "after sample 'trunc_000000_000001'" in truncated[-1]["error"]
    with pytest.raises(ShardReadError, match="train-0003.tar: ReadError: empty file"):
        list(shard_samples(shards[3]))

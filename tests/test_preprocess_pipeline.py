"""The Ray Data preprocessing job end to end on a local Ray cluster: generated clips plus broken
inputs → manifest + WebDataset shards, rerun/resume, the same against a local S3 server (moto),
and the GAGAvatar_track importer through the `gaga-preprocess` entry point."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
from conftest_ray import ray_cluster, s3_server  # noqa: F401
from preprocess_fixtures import write_gagatrack, write_video

from model.frame_params import PARAM_SIZE, FrameParams
from pipeline import storage
from pipeline.config import load_config
from pipeline.preprocess import MANIFEST, SHARD_INDEX, run_preprocess
from preprocessing.config import SyntheticDataConfig
from preprocessing.sample_format import decode_pair
from preprocessing.video_io import VideoSource

pytestmark = pytest.mark.slow

MEMBERS = {"source.jpg", "target.jpg", "source.params.npy", "target.params.npy", "meta.json"}
KEY = re.compile(r"^[A-Za-z0-9+\-=_]+_\d{6}_\d{6}$")
BAD = {
    "bad-empty": "empty file",
    "bad-truncated": "cannot open video",
    "bad-noface": "no face",
    "bad-short": "too short",
}
OVERRIDES = [
    "preprocess.detector=auto", "preprocess.landmarks=auto",  # ground truth where a clip has it, dlib elsewhere
    "preprocess.sampling.min_frames=8", "preprocess.sampling.samples_per_shard=16",
    "preprocess.crop.size=64", "preprocess.tracking.rigid_steps=30", "preprocess.tracking.steps=60",
    "preprocess.resources.progress_bars=false",
]


@pytest.fixture(scope="module")
def cfg():
    return load_config("smoke", OVERRIDES)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """8 generated clips (6 train, 2 test) of 10 frames at 128², one of them also as a folder of
    PNG frames (VFHQ's layout) with one corrupt frame, again as ``dup.mp4`` and ``dup.mkv`` (one
    name, two files), its first frame as a still, and four broken inputs."""
    from preprocessing.synthetic import ensure_dataset

    synth = SyntheticDataConfig(identities=4, clips_per_identity=2, frames_per_clip=10, resolution=128,
                                test_identities=1, workers=1)
    root = tmp_path_factory.mktemp("input") / "data"
    shutil.copytree(ensure_dataset(synth, tmp_path_factory.mktemp("synthetic")), root)
    videos = root / "videos"
    first = sorted(videos.glob("*.mp4"))[0]
    good = first.read_bytes()
    folder = videos / "folderclip"  # the first clip again, as frames
    folder.mkdir()
    for index, frame in VideoSource(good).frames():
        PIL.Image.fromarray(frame).save(folder / f"{index}.png")
    (folder / "4.png").write_bytes(b"\x89PNG not really")  # one corrupt frame: dropped, the clip kept
    PIL.Image.open(folder / "0.png").save(videos / "portrait.png")  # a still
    for name in ("folderclip", "portrait", "dup"):
        shutil.copy(root / "sidecars" / f"{first.stem}.npz", root / "sidecars" / f"{name}.npz")
    (videos / "dup.mp4").write_bytes(good)
    (videos / "dup.mkv").write_bytes(good)
    (videos / "bad-empty.mp4").write_bytes(b"")
    (videos / "bad-truncated.mp4").write_bytes(good[: len(good) // 2])
    write_video(videos / "bad-noface.mp4", np.full((10, 96, 96, 3), 128, np.uint8))
    write_video(videos / "bad-short.mp4", np.full((4, 96, 96, 3), 128, np.uint8))
    with (root / "train.txt").open("a") as fh:
        fh.write("".join(f"{name}\n" for name in [*BAD, "folderclip", "portrait", "dup"]))
    return root


def _read_split(url: str) -> list[dict]:
    import webdataset as wds

    storage.register_webdataset_s3()
    urls = storage.list_urls(url, ".tar")
    return list(wds.WebDataset(urls, shardshuffle=False, empty_check=False)) if urls else []


def _shard_hashes(out: Path) -> dict[str, str]:
    return {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(out.glob("*/*.tar")) if p.parent.name != "clips"}


def _check_samples(samples: list[dict], size: int) -> None:
    for sample in samples:
        assert KEY.match(sample["__key__"]), sample["__key__"]
        assert set(sample) - {"__key__", "__url__", "__local_path__"} == MEMBERS
        pair = decode_pair(sample)
        assert pair["source"].shape == (size, size, 3) and pair["target"].shape == (size, size, 3)
        assert pair["source_params"].shape == (PARAM_SIZE,)
        params = FrameParams.unpack(pair["target_params"])
        assert np.all(params.pose[:3] == 0) and abs(np.linalg.det(params.transform_matrix[:, :3]) - 1) < 1e-3
        assert pair["meta"]["focal"] == 12.0 and pair["meta"]["image_size"] == size


@pytest.fixture(scope="module")
def local_run(ray_cluster, cfg, dataset, tmp_path_factory):  # noqa: F811
    out = tmp_path_factory.mktemp("out") / "prep"
    summary = run_preprocess(cfg, str(dataset), str(out))
    return out, summary


def test_local_run_shards_good_clips_and_explains_bad_ones(local_run):
    out, summary = local_run
    assert summary["status"] == {"ok": 12, "skipped": 4, "failed": 0}, summary["reasons"]
    rows = {r["clip_id"]: r for r in map(json.loads, (out / MANIFEST).read_text().splitlines())}
    for clip, reason in BAD.items():
        assert rows[clip]["status"] == "skipped" and reason in rows[clip]["reason"], rows[clip]
        assert clip in rows[clip]["reason"]  # the message names the input
    ok = [r for r in rows.values() if r["status"] == "ok" and r["kind"] == "video"]
    assert all(r["frames_kept"] == 10 and r["residual_px"] is not None and r["truth"] for r in ok)
    # one corrupt frame of a folder: that frame is dropped and named, the clip kept
    folder = rows["folderclip"]
    assert folder["frames_kept"] == 9 and 4 not in folder["frame_ids"] and folder["frames_dropped_by"] == {"unreadable": 1}
    assert any("4.png" in n for n in folder["notes"])
    # dup.mp4 and dup.mkv: two clips with distinct ids, the collision noted
    dups = [r for c, r in rows.items() if c.startswith("dup-")]
    assert len(dups) == 2 and all(r["status"] == "ok" and "shares its name" in r["notes"][0] for r in dups)
    # the still: one tracked frame, a source only (no train pairs)
    assert rows["portrait"]["kind"] == "still" and rows["portrait"]["frame_ids"] == [0] and summary["stills"] == 1
    assert summary["samples"] == {"train": 89, "test_self": 18, "test_cross": 18}
    assert summary["truth"]["clips"] == 12 and summary["truth"]["rotation_error_deg"] < 5
    # the frame folder is the same clip as its video (less one frame): about the same tracking
    video_clip = sorted(c for c in rows if c.startswith("synth"))[0]
    assert rows["folderclip"]["residual_px"] == pytest.approx(rows[video_clip]["residual_px"], rel=0.15)
    for split, count in summary["samples"].items():
        samples = _read_split(str(out / split))
        assert len(samples) == count
        _check_samples(samples, 64)
    cross = _read_split(str(out / "test_cross"))[0]
    meta = decode_pair(cross)["meta"]
    assert meta["source_clip"] != meta["target_clip"] and meta["source_frame"] == 0
    index = json.loads((out / SHARD_INDEX).read_text())
    assert [e["name"] for e in index["train"]] == [f"train-{i:06d}.tar" for i in range(6)]  # 89 pairs, 16 a shard


def test_rerun_skips_done_clips_and_reproduces_identical_shards(local_run, cfg, dataset):
    out, _ = local_run
    before = _shard_hashes(out)
    again = run_preprocess(cfg, str(dataset), str(out))
    assert again["run"]["clips_processed"] == 0 and again["run"]["shards_written"] == 0
    assert _shard_hashes(out) == before
    # an interrupted run: one clip lost its done-marker, one shard is missing
    (out / "clips" / "synth000c00.json").unlink()
    (out / "train" / "train-000001.tar").unlink()
    resumed = run_preprocess(cfg, str(dataset), str(out))
    assert resumed["run"]["clips_processed"] == 1 and resumed["run"]["shards_written"] >= 1
    assert _shard_hashes(out) == before


def test_s3_input_and_output(ray_cluster, s3_server, cfg, dataset, local_run, monkeypatch):  # noqa: F811
    for key, value in {"AWS_ENDPOINT_URL": s3_server, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(key, value)
    client = storage.s3_client()
    for bucket in ("clips", "shards"):
        client.create_bucket(Bucket=bucket)
    for path in sorted(dataset.rglob("*")):
        if path.is_file() and not path.name.startswith("bad-"):
            client.upload_file(str(path), "clips", f"data/{path.relative_to(dataset).as_posix()}")
    # an archived object: listed, but GetObject answers InvalidObjectState
    client.put_object(Bucket="clips", Key="data/videos/archived.mp4", Body=b"x" * 100, StorageClass="GLACIER")
    train = storage.read_text("s3://clips/data/train.txt")
    lines = [line for line in train.splitlines() if not line.startswith("bad-")] + ["archived"]
    storage.write_text("s3://clips/data/train.txt", "\n".join(lines) + "\n")

    summary = run_preprocess(cfg, "s3://clips/data", "s3://shards/prep")
    assert summary["status"] == {"ok": 12, "skipped": 0, "failed": 1}, summary["reasons"]
    assert "InvalidObjectState" in summary["reasons"]["archived"] and "s3://clips/data/videos/archived.mp4" in summary["reasons"]["archived"]
    local_out, local_summary = local_run
    for split, count in local_summary["samples"].items():
        samples = _read_split(f"s3://shards/prep/{split}")
        assert len(samples) == count
        _check_samples(samples[:4], 64)
        assert sorted(s["__key__"] for s in samples) == sorted(s["__key__"] for s in _read_split(str(local_out / split)))
    # same clips, same config: the shards are byte-identical to the local run's
    remote = json.loads(storage.read_text("s3://shards/prep/" + SHARD_INDEX))
    local = json.loads((local_out / SHARD_INDEX).read_text())
    assert {s: [e["sha256"] for e in v] for s, v in remote.items()} == {s: [e["sha256"] for e in v] for s, v in local.items()}
    manifest = storage.read_text("s3://shards/prep/" + MANIFEST)
    assert len(manifest.splitlines()) == 13


def test_import_gagatrack_through_the_entry_point(ray_cluster, tmp_path, capsys):  # noqa: F811
    from jobs.preprocess import main

    src = tmp_path / "tracked"
    src.mkdir()
    write_gagatrack(src, {"100": 5, "101": 5, "102": 5}, size=48)
    (src / "test.txt").write_text("102\n")
    (src / "train.txt").write_text("100\n101\n")
    out = tmp_path / "shards"
    main(["--config", "smoke", "--import-gagatrack", str(src), "--output", str(out),
          "--set", "preprocess.sampling.min_frames=3", "--set", "preprocess.resources.progress_bars=false"])
    summary = json.loads(capsys.readouterr().out)
    assert summary["status"]["ok"] == 3 and summary["samples"] == {"train": 10, "test_self": 4, "test_cross": 0}
    samples = _read_split(str(out / "train"))
    _check_samples(samples, 48)
    pair = decode_pair(samples[0])
    assert FrameParams.unpack(pair["target_params"]).expression[0] == pair["meta"]["target_frame"]

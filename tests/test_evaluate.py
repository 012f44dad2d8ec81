"""`gaga-eval` end to end on CPU: generated test shards (frames and ground-truth parameters of the
generated mini-VFHQ, in the pair-sample format), a smoke checkpoint made by a few training steps,
the Ray Data job on the session's local cluster, and the result files."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest_ray import ray_cluster  # noqa: F401
from PIL import Image

from model.frame_params import FrameParams
from pipeline.config import load_config
from preprocessing.sampling import cross_pairs, self_pairs
from preprocessing.shards import pair_sample, write_tar

pytestmark = pytest.mark.slow

CLIPS = ("synth002c00", "synth003c00")  # the smoke dataset's two test identities
FRAMES = (0, 8, 16)


def _frame_params(truth, k: int, size: int) -> FrameParams:
    lmk = truth.landmarks[k, :68] * (size / truth.image_size[0])
    bbox = np.concatenate([lmk.min(0), lmk.max(0)]) / size
    return FrameParams(shape=truth.shape, expression=truth.expression[k], pose=truth.pose[k], eyes=truth.eyes[k],
                       transform_matrix=truth.transform_matrix[k], bbox=np.clip(bbox, 0, 1))


def write_test_shards(root: Path, dataset: Path, size: int) -> dict[str, str]:
    """test_self / test_cross tars of whole generated frames resized to size² (the generator's camera
    has the tracker's convention on the full frame, so its ground truth is the pair parameters)."""
    from preprocessing.sample_format import encode_image
    from preprocessing.sidecar import load_sidecar
    from preprocessing.synthetic import read_video

    frames, params = {}, {}
    for clip in CLIPS:
        video = read_video(dataset / "videos" / f"{clip}.mp4")
        truth = load_sidecar(dataset / "sidecars" / f"{clip}.npz")
        for k in FRAMES:
            img = np.asarray(Image.fromarray(video[k]).resize((size, size), Image.Resampling.BICUBIC))
            frames[clip, k] = ("png", encode_image(img, "png"))
            params[clip, k] = _frame_params(truth, k, size).pack()
    ids = {c: np.array(FRAMES) for c in CLIPS}
    splits = {"test_self": [p for c in CLIPS for p in self_pairs(c, ids[c])], "test_cross": cross_pairs(ids, "loader")}
    meta = {"format": "gaga-ray-pairs-v1", "focal": 12.0, "image_size": size, "flame": "generated stand-in head v1"}
    prefixes = {}
    for split, pairs in splits.items():
        (root / split).mkdir(parents=True)
        with open(root / split / f"{split}-000000.tar", "wb") as fh:
            write_tar(fh, (pair_sample(p, frames[p.source_clip, p.source_frame], frames[p.target_clip, p.target_frame],
                                       params[p.source_clip, p.source_frame], params[p.target_clip, p.target_frame], meta)
                           for p in pairs))
        prefixes[split] = str(root / split)
    return prefixes


def make_smoke_checkpoint(directory: Path, cfg, shard: str, steps: int = 3) -> Path:
    """A few train_steps of the smoke model on the shard's pairs, saved as our checkpoint."""
    from pipeline.checkpoint import TrainProgress, save_checkpoint
    from pipeline.data import collate_pairs
    from pipeline.shard_reader import read_pairs
    from pipeline.step import build_train_state, train_step

    torch.manual_seed(0)
    state = build_train_state(cfg, torch.device("cpu"))
    batch = collate_pairs(read_pairs(shard, limit=2))
    for _ in range(steps):
        losses, _ = train_step(state, batch)
    assert torch.isfinite(losses["total"])
    return save_checkpoint(directory, 0, TrainProgress(step=steps, run_name="smoke-eval"), state.network,
                           state.optimizer, state.scheduler, cfg)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from preprocessing.synthetic import ensure_dataset

    cfg = load_config("smoke", ["rasterizer.backend=torch"])
    dataset = ensure_dataset(cfg.synthetic)
    root = tmp_path_factory.mktemp("eval")
    prefixes = write_test_shards(root / "shards", dataset, cfg.camera.image_size)
    checkpoint = make_smoke_checkpoint(root / "checkpoint", cfg, prefixes["test_self"])
    return cfg, prefixes, checkpoint


def test_gaga_eval_on_generated_shards(setup, ray_cluster, capsys):  # noqa: F811
    from jobs.evaluate import main

    cfg, prefixes, checkpoint = setup
    main(["--config", "smoke", "--checkpoint", str(checkpoint),
          "--shards", f"{prefixes['test_self']},{prefixes['test_cross']}",
          "--set", "rasterizer.backend=torch", "--set", "eval.max_pairs_per_clip=1",
          "--set", "eval.cpus_per_metric_actor=0.5", "--set", "eval.grid_pairs=2", "--set", "eval.batch_size=2",
          "--set", "preprocess.tracking.rigid_steps=20", "--set", "preprocess.tracking.steps=30"])
    printed = json.loads(capsys.readouterr().out)
    out = checkpoint / "eval"
    for name in ("results.json", "results.csv", "results.md", "per_clip.csv", "per_frame.csv", "grid.png"):
        assert (out / name).is_file(), name
    report = json.loads((out / "results.json").read_text())
    # two test clips: self pairs clip→clip, cross pairs clip i+1 → clip i; one driving frame each
    assert report["aggregates"]["self"]["pairs"] == 2 and report["aggregates"]["cross"]["pairs"] == 2
    for m in ("psnr", "ssim", "lpips"):  # pixel metrics: always scored
        assert report["self"][m] is not None and np.isfinite(report["self"][m]), m
    # face metrics: a mean over the frames where dlib found faces (a 3-step model renders none), and the count
    for split, metrics in (("self", ("csim", "aed", "apd", "akd")), ("cross", ("csim", "aed", "apd"))):
        agg = report["aggregates"][split]
        assert set(agg["scored"]) == set(metrics)
        for m in metrics:
            n = agg["scored"][m]
            assert 0 <= n <= agg["pairs"] and agg["scored_rate"][m] == n / agg["pairs"]
            assert (report[split][m] is None) == (n == 0), (split, m, n)
            if n < agg["pairs"]:
                assert any(w.startswith(f"{split}: face metrics scored on fewer than all") and f"{m.upper()} {n}" in w
                           for w in report["warnings"])
    assert printed["self"] == report["self"]
    text = " ".join(report["warnings"])
    for needle in ("RANDOM AlexNet", "generated stand-in head", "RANDOM weights", "smoke model", "dlib's face descriptor",
                   "FLAME landmark tracker"):
        assert needle in text, needle
    md = (out / "results.md").read_text()
    assert "NOT comparable" in md and "| **ours (ours, step 3)** |" in md and "| GAGAvatar | 21.83 |" in md
    assert "- self: 2 frames (pairs)" in md and "frames scored: CSIM" in md
    with open(out / "results.csv") as fh:
        table = list(csv.DictReader(fh))
    assert table[0]["method"].startswith("ours") and table[-1]["method"] == "GAGAvatar"
    assert float(table[-1]["self_psnr"]) == 21.83 and float(table[-1]["cross_apd"]) == 0.247
    assert table[0]["note"].startswith("NOT comparable") and "RANDOM AlexNet" in table[0]["note"]
    assert table[0]["self_frames"] == "2" and table[0]["cross_frames"] == "2" and table[0]["self_akd_scored"] != ""
    with open(out / "per_frame.csv") as fh:
        frames = list(csv.DictReader(fh))
    assert len(frames) == 4 and {f["split"] for f in frames} == {"self", "cross"}
    grid = np.asarray(Image.open(out / "grid.png"))
    assert grid.shape[1] == 3 * 256 and grid.shape[0] >= 2 * 256  # two panels of source | driver | result


def test_pools_never_ask_for_more_cpus_than_the_cluster_has():
    """Each actor holds its CPUs: a reader that cannot get one would stall the job for good."""
    from pipeline.config import load_config
    from pipeline.eval.run import eval_pools

    cfg = load_config("smoke")
    for cpus, gpus, pairs in ((1, 0, 5), (2, 0, 48), (3, 0, 2), (16, 2, 480)):
        p = eval_pools(cfg, {"CPU": float(cpus), "GPU": float(gpus)}, pairs)
        assert p.render_actors * p.render_cpus + p.metric_actors * p.metric_cpus + p.reader_cpus <= cpus + 1e-9
        assert p.render_actors >= 1 and p.metric_actors >= 1 and p.reader_cpus > 0

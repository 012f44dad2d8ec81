"""bench.reenact_fps on the CPU (``--smoke``: eager variants only): the weights and the source it
measures — random or a checkpoint of ours, noise or a tracked shard prefix — and the Gaussians'
screen-space statistics that explain the splatting's cost (gsplat's tile binning rule)."""

from __future__ import annotations

import json

import pytest
import torch
from train_fixtures import truth_pairs, write_shards

from bench.reenact_fps import main, tile_spans
from pipeline.checkpoint import TrainProgress, save_checkpoint
from pipeline.config import load_config
from pipeline.step import build_train_state


def _spans(mean_xy, var, opacity, size=64, tile=16) -> int:
    means = torch.tensor([mean_xy], dtype=torch.float32)
    cov = torch.tensor([[var, 0.0, var]])
    return int(tile_spans(means, cov, torch.tensor([opacity]), size, tile)[0])


def test_tile_spans_follow_gsplats_opacity_aware_box():
    # σ = 2 px at opacity 0.5: extend √(2 ln 127.5) = 3.11 → radius ceil(6.22) = 7 px; centred at
    # (24, 24) the box [17, 31] lies inside tile 1 on each axis: one tile
    assert _spans((24.0, 24.0), 4.0, 0.5) == 1
    # the same Gaussian on a tile corner (32, 32): [25, 39] spans tiles 1–2 on each axis
    assert _spans((32.0, 32.0), 4.0, 0.5) == 4
    # nearly opaque: extend √(2 ln 252.5) = 3.32 → radius ceil(33.2) = 34 at σ 10
    assert _spans((32.0, 32.0), 100.0, 0.99) == 16  # [−2, 66] clamped to the 4×4 tiles of 64²
    # fainter → smaller box: at opacity 0.01 extend √(2 ln 2.55) = 1.37 → radius ceil(13.7) = 14 at σ 10
    assert _spans((24.0, 24.0), 100.0, 0.01) == 9  # [10, 38] → tiles 0–2
    assert _spans((24.0, 24.0), 100.0, 0.003) == 0  # below 1/255: never drawn
    assert _spans((-50.0, 24.0), 4.0, 0.5) == 0  # off screen


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    """Tracked pair shards of two generated clips and a smoke checkpoint (its weights as built)."""
    root = tmp_path_factory.mktemp("bench_reenact")
    cfg = load_config("smoke")
    write_shards(truth_pairs(cfg, clips=1, pairs_per_clip=2), root / "shards")
    torch.manual_seed(3)
    state = build_train_state(cfg, torch.device("cpu"))
    C = cfg.model.gaussian_channels
    with torch.no_grad():  # both planes' Gaussians smaller than the random init's, as training makes them
        for plane in (state.network.gs_generator_l0, state.network.gs_generator_l1):
            plane.gaussian_conv[-1].bias[C + 1:C + 4] = -4.0
    checkpoint = save_checkpoint(root / "run" / "checkpoint_000007", 0, TrainProgress(step=7, run_name="bench"),
                                 state.network, state.optimizer, state.scheduler, cfg)
    return root, checkpoint


def _bench(tmp_path, *args: str) -> dict:
    out = tmp_path / "out.json"
    main(["--smoke", "--out", str(out), *args])
    return json.loads(out.read_text())


def test_random_weights_and_a_checkpoint_with_a_tracked_source(smoke_run, tmp_path):
    root, checkpoint = smoke_run
    random_ = _bench(tmp_path, "--windows", "1")
    assert random_["weights"]["kind"] == "random" and random_["source"] == {"kind": "noise", "seed": 1}
    trained = _bench(tmp_path, "--checkpoint", str(root / "run"), "--source", str(root / "shards"), "--windows", "1")
    assert trained["weights"]["kind"] == "ours" and trained["weights"]["step"] == 7
    assert trained["weights"]["chosen"] == "checkpoint_000007"  # the run folder's newest intact checkpoint
    assert trained["source"]["kind"] == "shards" and trained["source"]["name"].startswith("synth")
    assert "CHECKPOINT" in trained["command"] and str(root) not in trained["command"]  # no machine paths
    assert trained["model"]["renderer_noise"] == "stored"
    for report in (random_, trained):
        assert report["variants"]["eager_fp32"]["fps"] > 0
        stats = report["gaussians_on_screen"]
        assert stats["drawn"] > 0.9 * stats["of"] and stats["tile_intersections"] >= stats["drawn"]
    # the planes' scales pushed down: its Gaussians are smaller on screen and cover fewer tiles
    small, large = trained["gaussians_on_screen"], random_["gaussians_on_screen"]
    assert small["sigma_px_p10_p50_p90"][0] < large["sigma_px_p10_p50_p90"][0]
    assert small["tile_intersections"] < large["tile_intersections"]


def test_pair_shards_hold_the_training_identities_and_a_held_out_source(tmp_path):
    from bench._pair_shards import main as make_pair_shards
    from pipeline.shard_reader import read_pairs

    make_pair_shards(["--out", str(tmp_path), "--size", "32", "--identities", "2", "--frames", "4", "--pairs", "3",
                      "--processes", "1"])
    train, source = read_pairs(str(tmp_path / "train")), read_pairs(str(tmp_path / "source"))
    clip = lambda pair: pair["key"].split("_")[0]  # noqa: E731
    assert len(train) == 6 and sorted({clip(p) for p in train}) == ["synth000c00", "synth001c00"]
    assert len(source) == 2 and {clip(p) for p in source} == {"synth002c00"}  # never trained on
    assert train[0]["source"].shape == (32, 32, 3) and train[0]["source_params"].shape == (428,)

"""Rank-0 run logging: the scalar history survives a restart and is drawn as loss curves."""

from __future__ import annotations

import json

from pipeline.run_logging import RunLogger, read_history, write_curves


def test_history_appends_across_a_restart_and_keeps_the_last_value_of_a_repeated_step(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    first = RunLogger(True, tmp_path, "run", "proj", {}, 40, 0)
    for step, loss in ((10, 1.0), (20, 0.5)):
        first.log(step, {"loss/total": loss, "loss/image": loss / 2, "lr": 1e-4})
    # the worker dies after step 20 but before its checkpoint: the restart redoes step 20
    second = RunLogger(True, tmp_path, "run", "proj", {}, 40, 10)
    for step, loss in ((20, 0.4), (30, 0.25), (40, 0.2)):
        second.log(step, {"loss/total": loss, "loss/image": loss / 2, "lr": 1e-4, "val/psnr": 20.0 + step / 10})
    second.close()
    history = read_history(tmp_path / "metrics.jsonl")
    assert history["loss/total"] == [(10, 1.0), (20, 0.4), (30, 0.25), (40, 0.2)]
    assert history["val/psnr"] == [(20, 22.0), (30, 23.0), (40, 24.0)]
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 5
    assert (tmp_path / "loss_curves.png").read_bytes()[:4] == b"\x89PNG"


def test_other_ranks_write_nothing(tmp_path):
    logger = RunLogger(False, tmp_path / "run", "run", "proj", {}, 10, 0)
    logger.log(5, {"loss/total": 1.0})
    logger.close()
    assert not (tmp_path / "run").exists()


def test_curves_without_validation_draw_the_losses_only(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"step": s, "loss/total": 1.0 / s, "loss/ssim": 0.0}) + "\n" for s in (1, 2, 3)))
    png = write_curves(path, tmp_path / "c.png")
    assert png.stat().st_size > 1000

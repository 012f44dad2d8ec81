import dataclasses
from pathlib import Path

import pytest

from pipeline.config import ExperimentConfig, load_config, save_config
from pipeline.configtools import ConfigError, parse_override


@pytest.mark.parametrize("preset", ["paper", "debug", "smoke"])
def test_presets_load(preset):
    cfg = load_config(preset)
    assert isinstance(cfg, ExperimentConfig)
    assert cfg.name == preset


def test_paper_numbers_are_the_released_recipe():
    cfg = load_config("paper")
    assert (cfg.camera.image_size, cfg.camera.focal, cfg.flame.scale) == (512, 12.0, 5.0)
    assert (cfg.model.backbone.input_size, cfg.model.plane_size) == (518, 296)
    assert cfg.optim.betas == (0.0, 0.99) and (cfg.optim.lr, cfg.optim.style_lr) == (1e-4, 1e-5)
    assert (cfg.train.steps, cfg.data.batch_size) == (200_000, 8)
    assert cfg.loss.lifting_weight == 10.0 and cfg.loss.perceptual_weight == 0.01


def test_unknown_key_names_it_and_the_valid_ones():
    with pytest.raises(ConfigError) as err:
        load_config("smoke", ["train.stepz=3"])
    msg = str(err.value)
    assert "train.stepz" in msg and "steps" in msg and "checkpoint_every" in msg


def test_overrides_parse_yaml_values_and_coerce_types():
    cfg = load_config("smoke", ["train.steps=7", "optim.lr=1", "model.lifting=one_plane", "flame.path=null"])
    assert cfg.train.steps == 7
    assert cfg.optim.lr == 1.0 and isinstance(cfg.optim.lr, float)
    assert cfg.model.lifting == "one_plane"
    with pytest.raises(ConfigError, match="one of"):
        load_config("smoke", ["model.lifting=three_planes"])
    with pytest.raises(ConfigError, match="integer"):
        load_config("smoke", ["train.steps=many"])
    assert parse_override("a.b.c=[1, 2]") == {"a": {"b": {"c": [1, 2]}}}


def test_exponent_numbers_without_a_dot_are_numbers_and_words_or_nan_are_not():
    """YAML 1.1 reads 5e-4 as a string; a user writing --set optim.lr=5e-4 means the number."""
    cfg = load_config("smoke", ["optim.lr=5e-4", "optim.style_lr=1E-5"])
    assert (cfg.optim.lr, cfg.optim.style_lr) == (5e-4, 1e-5)
    with pytest.raises(ConfigError, match="optim.lr: expected a number, got 'fast'"):
        load_config("smoke", ["optim.lr=fast"])
    with pytest.raises(ConfigError, match="finite"):
        load_config("smoke", ["optim.lr=nan"])


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config("smoke", ["train.steps=11"])
    path = save_config(cfg, tmp_path / "config.yaml")
    assert load_config(path) == cfg
    assert dataclasses.is_dataclass(cfg) and cfg.__dataclass_params__.frozen


def test_missing_preset_lists_presets():
    with pytest.raises(ConfigError, match="smoke"):
        load_config("no_such_preset")


@pytest.mark.parametrize("override, message", [
    ("train.steps=0", "train.steps=0: must be > 0"),
    ("train.checkpoint_every=0", "train.checkpoint_every=0: must be > 0"),
    ("train.log_every=0", "train.log_every=0: must be > 0"),
    ("data.batch_size=-2", "data.batch_size=-2: must be > 0"),
    ("train.cpus_per_worker=0", "train.cpus_per_worker=0: must be > 0"),
    ("train.num_workers=0", "train.num_workers=0: must be > 0"),
    ("optim.lr=-0.001", "optim.lr=-0.001: must be ≥ 0"),
    ("optim.betas=[0.9, 1.5]", r"optim.betas=\(0.9, 1.5\): must lie in \[0, 1\]"),
    ("loss.image_weight=.nan", "loss.image_weight=nan: must be a finite number"),
    ("train.num_workers=3", "not divisible by train.num_workers=3"),
])
def test_numbers_out_of_range_fail_at_load_time_with_one_line(override, message):
    with pytest.raises(ConfigError, match=message) as err:
        load_config("smoke", [override])
    assert "\n" not in str(err.value)


def test_broken_yaml_and_inherit_loops_are_one_line_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  steps: [1, 2\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: not valid YAML \(line \d+, column \d+") as err:
        load_config(bad)
    assert "\n" not in str(err.value)
    (tmp_path / "a.yaml").write_text("inherit: b.yaml\nname: a\n")
    (tmp_path / "b.yaml").write_text("inherit: a.yaml\nname: b\n")
    with pytest.raises(ConfigError, match=r"inherit loop \(a.yaml → b.yaml → a.yaml\)"):
        load_config(tmp_path / "a.yaml")
    with pytest.raises(ConfigError, match=r"--set 'train.steps=\[1': the value is not valid YAML"):
        load_config("smoke", ["train.steps=[1"])
    (tmp_path / "child.yaml").write_text("inherit: smoke\ntrain: {steps: 3}\n")
    assert load_config(tmp_path / "child.yaml").train.steps == 3


def test_the_command_line_prints_one_line_for_a_bad_config(tmp_path):
    import subprocess
    import sys

    bad = tmp_path / "bad.yaml"
    bad.write_text("train: {steps: 0}\n")
    proc = subprocess.run([sys.executable, "-m", "jobs.train", "--config", str(bad)], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parent.parent)
    assert proc.returncode != 0
    assert proc.stderr.strip() == "config error: train.steps=0: must be > 0"

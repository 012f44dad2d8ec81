import dataclasses

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


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config("smoke", ["train.steps=11"])
    path = save_config(cfg, tmp_path / "config.yaml")
    assert load_config(path) == cfg
    assert dataclasses.is_dataclass(cfg) and cfg.__dataclass_params__.frozen


def test_missing_preset_lists_presets():
    with pytest.raises(ConfigError, match="smoke"):
        load_config("no_such_preset")

"""What every entry point shares: ``--config PRESET`` and ``--set a.b=c`` overrides."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from pipeline.config import ExperimentConfig, load_config
from pipeline.configtools import ConfigError


def config_parser(description: str, default_preset: str = "paper") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", default=default_preset,
                        help="preset name (paper, debug, smoke, demo: pipeline/presets/) or a YAML path")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set train.steps=100 (repeatable)")
    return parser


def resolve_config(args: argparse.Namespace, extra: Sequence[str] = ()) -> ExperimentConfig:
    try:
        return load_config(args.config, [*args.overrides, *extra])
    except ConfigError as exc:
        sys.exit(f"config error: {exc}")


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

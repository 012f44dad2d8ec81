"""`gaga-train`: distributed training on Ray Train.

    gaga-train --config smoke --set data.train_shards=outputs/shards/train
    ray job submit --working-dir . -- gaga-train --config paper --set train.num_workers=8 \\
        --set data.train_shards=s3://bucket/vfhq/train --set train.storage_path=s3://bucket/runs

Resubmitting the same config (same run name) resumes from its newest intact checkpoint; a changed
config under the same name is refused unless --allow-config-change is given.
"""

from __future__ import annotations

import json
import sys

from jobs.common import config_parser, resolve_config, setup_logging


def main() -> None:
    setup_logging()
    parser = config_parser(__doc__.splitlines()[0])
    parser.add_argument("--init-from", default=None, help="weights to start from: our checkpoint dir/model.pt or the official GAGAvatar.pt")
    parser.add_argument("--name", default=None, help="run name (default: derived from the config)")
    parser.add_argument("--allow-config-change", action="store_true",
                        help="resume a run of this name even though its stored config differs (the old one is kept)")
    args = parser.parse_args()
    extra = [f"train.init_from={args.init_from}"] if args.init_from else []
    extra += [f"train.run_name={args.name}"] if args.name else []
    cfg = resolve_config(args, extra)
    from pipeline.configtools import ConfigError
    from pipeline.ray_cluster import ensure_ray
    from pipeline.run_files import TrainingAborted
    from pipeline.shard_reader import DataError
    from pipeline.storage import StorageError
    from pipeline.train import run_training

    ensure_ray()
    try:
        result = run_training(cfg, allow_config_change=args.allow_config_change)
    except (ConfigError, DataError, StorageError, TrainingAborted) as exc:
        sys.exit(f"gaga-train: {exc}")
    print(json.dumps({"run_name": result.run_name, "checkpoint": result.checkpoint_path,
                      "run_dir": result.run_dir, "files": result.files, "metrics": result.metrics},
                     indent=1, default=str))


if __name__ == "__main__":
    main()

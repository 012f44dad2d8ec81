"""`gaga-preprocess`: clips (local folder or s3://) → tracked WebDataset pair shards, on Ray.

    gaga-preprocess --input data/videos_root --output data/shards             # local Ray
    gaga-preprocess --config smoke --synthetic --output outputs/shards            # the generated mini-VFHQ
    gaga-preprocess --input s3://bucket/vfhq --output s3://bucket/shards       # AWS_* from the environment
    gaga-preprocess --import-gagatrack outputs/vfhq_tracked --output data/shards
    ray job submit --working-dir . -- gaga-preprocess --input s3://... --output s3://...   # any cluster

Everything else is config: ``--set preprocess.detector=sidecar``, ``--set preprocess.crop.size=256``,
``--set preprocess.landmarks=mediapipe``. Single images directly in the input folder are stills
(single-frame sources). Prints the summary JSON (also written to ``<output>/summary.json``) and,
on stderr, a note per clip where several faces were seen (which one was kept: docs/preprocessing.md).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence

from jobs.common import config_parser, resolve_config, setup_logging


def main(argv: Sequence[str] | None = None) -> None:
    parser = config_parser(__doc__.splitlines()[0])
    parser.add_argument("--input", help="folder or s3://bucket/prefix of videos or frame folders (preprocess.input)")
    parser.add_argument("--output", help="folder or s3://bucket/prefix for shards and manifest (preprocess.output)")
    parser.add_argument("--train-list", help="train.txt of clip ids (default: next to the videos)")
    parser.add_argument("--test-list", help="test.txt of clip ids (default: next to the videos)")
    parser.add_argument("--synthetic", action="store_true",
                        help="preprocess the generated mini-VFHQ of the config's `synthetic` section")
    parser.add_argument("--import-gagatrack", metavar="DIR",
                        help="shard GAGAvatar_track output (img_lmdb + optim.pkl/smoothed.pkl) instead of tracking")
    args = parser.parse_args(argv)
    extra = [f"preprocess.{key}={value}" for key, value in (
        ("input", args.input), ("output", args.output), ("train_list", args.train_list), ("test_list", args.test_list),
    ) if value]
    cfg = resolve_config(args, extra)
    setup_logging()

    from pipeline.preprocess import run_preprocess
    from pipeline.preprocess_import import run_import_gagatrack
    from pipeline.ray_cluster import ensure_ray
    from preprocessing.face_tools import FaceToolsMissing

    ensure_ray()
    try:
        if args.import_gagatrack:
            summary = run_import_gagatrack(cfg, args.import_gagatrack)
        elif args.synthetic:
            from preprocessing.synthetic import ensure_dataset

            summary = run_preprocess(cfg, input_url=str(ensure_dataset(cfg.synthetic)))
        else:
            summary = run_preprocess(cfg)
    except FaceToolsMissing as exc:
        sys.exit(f"gaga-preprocess: {exc}")
    json.dump(summary, sys.stdout, indent=1, sort_keys=True)
    print()
    for clip, note in sorted(summary.get("several_faces", {}).items()):
        print(f"note: {clip}: {note}", file=sys.stderr)


if __name__ == "__main__":
    main()

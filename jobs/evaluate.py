"""`gaga-eval`: the paper's Table 1 protocol on test shards, as a Ray Data job.

    gaga-eval --checkpoint outputs/runs/<run>/checkpoint_0200000 \\
        --shards data/shards/test_self,data/shards/test_cross
    gaga-eval --checkpoint assets/GAGAvatar.pt --shards s3://bucket/shards/test_self,s3://bucket/shards/test_cross \\
        --set eval.arcface_onnx=/models/w600k_r50.onnx --set eval.alexnet_weights=/models/alexnet-owt-7be5be79.pth
    ray job submit --working-dir . -- gaga-eval --checkpoint s3://bucket/runs/<run>/checkpoint_0200000 --shards ...

Writes results.json/.csv/.md, per_clip.csv, per_frame.csv and grid.png next to the checkpoint
(``<checkpoint>/eval``, or ``--out`` / ``eval.output_dir``) and a wandb run (offline by default);
prints the aggregates and the file list as JSON. Metric definitions: docs/evaluation.md.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence

from jobs.common import config_parser, resolve_config, setup_logging


def main(argv: Sequence[str] | None = None) -> None:
    parser = config_parser(__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", help="a run folder (its newest intact checkpoint), one checkpoint folder, "
                                             "or the released GAGAvatar.pt (eval.checkpoint)")
    parser.add_argument("--shards", help="<test_self prefix>,<test_cross prefix> (either may be empty; default: "
                                         "data.test_self_shards, data.test_cross_shards)")
    parser.add_argument("--out", help="output folder or s3:// prefix (eval.output_dir; default: <checkpoint>/eval)")
    args = parser.parse_args(argv)
    extra = []
    if args.checkpoint:
        extra.append(f"eval.checkpoint={args.checkpoint}")
    if args.out:
        extra.append(f"eval.output_dir={args.out}")
    if args.shards is not None:
        parts = [p.strip() for p in args.shards.split(",")]
        if len(parts) > 2:
            sys.exit(f"--shards takes at most two prefixes (self,cross), got {len(parts)}")
        parts += [""] * (2 - len(parts))
        extra += [f"data.test_self_shards={parts[0]}", f"data.test_cross_shards={parts[1]}"]
    cfg = resolve_config(args, extra)
    setup_logging()

    from pipeline.checkpoint import CheckpointError
    from pipeline.eval.run import require_eval_tools, run_evaluation
    from pipeline.ray_cluster import ensure_ray
    from pipeline.storage import StorageError
    from preprocessing.face_tools import FaceToolsMissing

    try:
        require_eval_tools()  # before Ray starts: a missing extra is one line at once
        ensure_ray()
        report = run_evaluation(cfg)
    except (CheckpointError, FileNotFoundError, StorageError, FaceToolsMissing) as exc:
        sys.exit(f"gaga-eval: {exc}")
    print(json.dumps({"self": report["self"], "cross": report["cross"], "warnings": report["warnings"],
                      "files": report["files"]}, indent=1, default=str))


if __name__ == "__main__":
    main()

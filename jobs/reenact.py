"""`gaga-reenact`: drive one source photo with a video, an image or tracked shards.

    gaga-reenact --checkpoint assets/GAGAvatar.pt --source face.jpg --driver clip.mp4 --out out.mp4
    gaga-reenact --checkpoint outputs/runs/<run>/checkpoint_0200000 --source face.jpg \\
        --driver data/shards/test_self --driver-clip 015252 --out out.mp4 --no-side-by-side

The source is cropped and tracked like a single image in preprocessing, a driver video like a
clip (every frame); shards are used as tracked. On CUDA the real-time path renders the frames
(``eval.optimized``; ``--set eval.compile=true`` adds torch.compile, ``eval.compile_mode`` picks
its inductor mode). Writes the mp4 (H.264) and
the frames as PNGs (``<out>_frames/`` or ``--frames``); prints a summary as JSON.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence

from jobs.common import config_parser, resolve_config, setup_logging


def main(argv: Sequence[str] | None = None) -> None:
    parser = config_parser(__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=False, help="a run folder (its newest intact checkpoint), one "
                                                             "checkpoint folder, or the released GAGAvatar.pt")
    parser.add_argument("--source", required=True, help="source image (any photo with one face), or a tracked shard prefix")
    parser.add_argument("--source-clip", default=None, help="with a shard prefix as source: the clip id (default: the first)")
    parser.add_argument("--driver", required=True, help="driver: a video (.mp4, …), an image, or a tracked shard prefix")
    parser.add_argument("--driver-clip", default=None, help="with a shard prefix: the clip id (default: the first)")
    parser.add_argument("--out", required=True, help="output video (.mp4)")
    parser.add_argument("--frames", default=None, help="folder for the PNG frames (default: <out>_frames)")
    parser.add_argument("--no-side-by-side", action="store_true", help="only the result, not driver | result")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    args = parser.parse_args(argv)
    cfg = resolve_config(args, [f"eval.checkpoint={args.checkpoint}"] if args.checkpoint else [])
    setup_logging()

    from pipeline.checkpoint import CheckpointError
    from pipeline.reenact import run_reenact
    from pipeline.storage import StorageError
    from preprocessing.face_tools import FaceToolsMissing

    try:
        summary = run_reenact(cfg, cfg.eval.checkpoint, args.source, args.driver, args.out, frames_dir=args.frames,
                              clip=args.driver_clip, side_by_side=False if args.no_side_by_side else None,
                              device=args.device, source_clip=args.source_clip)
    except (CheckpointError, FileNotFoundError, StorageError, ValueError, FaceToolsMissing) as exc:
        sys.exit(f"gaga-reenact: {exc}")
    print(json.dumps(summary, indent=1, default=str))


if __name__ == "__main__":
    main()

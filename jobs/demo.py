"""`gaga-demo`: the main job end to end on the embedded default (local Ray, generated data, the
GPU when there is one): generate → preprocess (Ray Data) → train (Ray Train, for a time budget) →
evaluate → reenactment videos (source | driver | result) of a held-out identity.

    gaga-demo                                   # demo preset, 360 s of training, outputs under outputs/demo/
    gaga-demo --train-seconds 60 --out outputs/demo_short
    gaga-demo --config smoke --train-seconds 30   # the tiny test model (a pipeline check only)
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence

from jobs.common import config_parser, resolve_config, setup_logging


def _fmt(value, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def print_summary(summary: dict) -> None:
    """Where everything is, the headline numbers (with the frames each face metric scored) and
    the seconds per stage."""
    print("\nDemo finished. Where everything is:")
    for key in ("dataset", "shards", "manifest", "run_dir", "checkpoint", "loss_curves", "reenactment_video",
                "cross_reenactment_video"):
        print(f"  {key:24s} {summary[key]}")
    for name, path in summary["results"].items():
        print(f"  {name:24s} {path}")
    for path in summary["reenactment_sheets"]:
        print(f"  {'video frames (PNG)':24s} {path}")
    tr = summary["train"]
    print(f"\nTrained {tr['steps']} steps on {tr['device']} ({tr['step_s_timed']:.3f} s/step timed, "
          f"{tr['budget_s']:.0f} s budget).")
    print("Held-out identities (results.md has the table beside the paper's):")
    for split in ("self", "cross"):
        h = summary["headline"][split]
        if not h.get("frames"):
            continue
        cells = []
        for m, v in h.items():
            if m in ("frames", "scored"):
                continue
            digits = 2 if m in ("psnr", "akd") else 3
            scored = h["scored"].get(m)
            cells.append(f"{m.upper()} {_fmt(v, digits)}" + (f" ({scored}/{h['frames']} scored)" if scored is not None else ""))
        print(f"  {split:5s} ({h['frames']} frames): " + ", ".join(cells))
    print(f"\nSeconds per stage: {json.dumps(summary['seconds'])}")
    print(f"Load average (1, 5, 15 min) at start / end: {summary['load_avg_1_5_15']['start']} / "
          f"{summary['load_avg_1_5_15']['end']}")
    print(f"Note: {summary['note']}")


def main(argv: Sequence[str] | None = None) -> None:
    setup_logging()
    from pipeline.demo import DEFAULT_TRAIN_SECONDS

    parser = config_parser(__doc__.splitlines()[0], default_preset="demo")
    parser.add_argument("--out", default="outputs/demo", help="output folder")
    parser.add_argument("--train-seconds", type=float, default=DEFAULT_TRAIN_SECONDS,
                        help="training budget: the steps that fit in it are run (timed on this machine first)")
    args = parser.parse_args(argv)
    cfg = resolve_config(args)
    from pipeline.demo import run_demo
    from pipeline.ray_cluster import ensure_ray
    from preprocessing.face_tools import FaceToolsMissing

    try:
        ensure_ray()
        summary = run_demo(cfg, args.out, train_seconds=args.train_seconds)
    except FaceToolsMissing as exc:
        sys.exit(f"gaga-demo: {exc}")
    print_summary(summary)


if __name__ == "__main__":
    main()

"""`gaga-demo`: the main job end to end on the embedded default (local Ray, generated data, CPU):
generate → preprocess (Ray Data) → train (Ray Train) → evaluate → reenactment video.

    gaga-demo                      # smoke preset, outputs under outputs/demo/
    gaga-demo --set train.steps=50 --out outputs/demo_short
"""

from __future__ import annotations

import json

from jobs.common import config_parser, resolve_config, setup_logging


def main() -> None:
    setup_logging()
    parser = config_parser(__doc__.splitlines()[0], default_preset="smoke")
    parser.add_argument("--out", default="outputs/demo", help="output folder")
    args = parser.parse_args()
    cfg = resolve_config(args)
    from pipeline.demo import run_demo

    summary = run_demo(cfg, args.out)
    print("\nDemo finished. Where everything is:")
    for key in ("dataset", "shards", "manifest", "run_dir", "checkpoint", "loss_curves", "reenactment_video"):
        print(f"  {key:18s} {summary[key]}")
    for name, path in summary["results"].items():
        print(f"  {name:18s} {path}")
    print(f"  {'seconds':18s} {json.dumps(summary['seconds'])}")
    print(f"  note: {summary['note']}")


if __name__ == "__main__":
    main()

"""`gaga-sweep`: ablation sweeps (paper Table 3) on Ray Tune.

    gaga-sweep --spec table3 --dry-run
    gaga-sweep --spec table3 --preset smoke --set train.steps=20 --set data.train_shards=...

Rerunning the same sweep skips finished cells and resumes interrupted ones.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace

from jobs.common import setup_logging
from pipeline.configtools import ConfigError


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", required=True, help="sweep spec: a name (table3) or a YAML path")
    parser.add_argument("--preset", default=None, help="replace the spec's preset (e.g. smoke for a quick run)")
    parser.add_argument("--storage", default=None, help="replace the spec's storage_path (local or s3://)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override applied to every cell (repeatable)")
    parser.add_argument("--dry-run", action="store_true", help="print the cells and their resolved overrides")
    args = parser.parse_args()
    setup_logging()
    from pipeline.sweep import dry_run, load_spec, run_sweep

    try:
        spec = load_spec(args.spec)
        spec = replace(spec, **{k: v for k, v in (("preset", args.preset), ("storage_path", args.storage)) if v})
        if args.dry_run:
            print(dry_run(spec, args.overrides))
            return
        from pipeline.ray_cluster import ensure_ray

        ensure_ray()
        result = run_sweep(spec, args.overrides)
    except ConfigError as exc:
        sys.exit(f"sweep config error: {exc}")
    print(json.dumps({"files": result["files"], "rows": result["rows"]}, indent=1, default=str))
    failed = [f"{r['cell']} ({r['status']}: {r.get('error', '')})" for r in result["rows"] if r["status"] != "ok"]
    if failed:  # the table is written; the job still fails so that a cluster run shows it
        sys.exit(f"{len(failed)} of {len(result['rows'])} cells did not finish: " + "; ".join(failed))


if __name__ == "__main__":
    main()

"""`gaga-generate`: write the generated mini-VFHQ (talking stand-in heads + ground truth).

    gaga-generate --config smoke                       # into the cache (reused if present)
    gaga-generate --set synthetic.identities=8 --out outputs/synthetic --contact-sheet sheet.png
    gaga-generate --config paper --set synthetic.resolution=512 --out data/synth512

Prints the dataset folder and its key as JSON. See docs/synthetic.md.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

from jobs.common import config_parser, resolve_config, setup_logging


def main() -> None:
    setup_logging()
    parser = config_parser(__doc__.splitlines()[0])
    parser.add_argument("--out", default=None,
                        help="dataset folder (default: the cache, <cache>/synthetic/<key>, reused when present)")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it holds something else")
    parser.add_argument("--contact-sheet", default=None, metavar="PATH", help="also write a PNG grid of the dataset")
    parser.add_argument("--sheet-identities", type=int, default=4)
    parser.add_argument("--sheet-frames", type=int, default=5)
    args = parser.parse_args()
    cfg = resolve_config(args).synthetic

    from preprocessing.synthetic import (
        dataset_key,
        ensure_dataset,
        generate_dataset,
        is_generated,
        make_contact_sheet,
    )

    start = time.perf_counter()
    if args.out is None:
        out = ensure_dataset(cfg)
    else:
        out = Path(args.out)
        if out.exists() and not is_generated(out, cfg):
            if not args.overwrite:
                sys.exit(f"{out} exists and holds something else; pass --overwrite to replace it")
            shutil.rmtree(out)
        out = generate_dataset(cfg, out)
    seconds = time.perf_counter() - start
    result = {"dataset": str(out), "key": dataset_key(cfg), "seconds": round(seconds, 2)}
    if args.contact_sheet:
        result["contact_sheet"] = str(make_contact_sheet(out, args.contact_sheet, args.sheet_identities,
                                                         args.sheet_frames))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()

"""`gaga-bench <name> [args]`: run the benchmark ``bench/<name>.py`` (its ``main(argv)``).

    gaga-bench reenact_fps --out bench/results/reenact_fps_h100.json
    gaga-bench rasterizer --help
    gaga-bench --list

Benchmarks write JSON into ``bench/results/``; each one's ``--help`` says what it measures.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import sys
from collections.abc import Sequence

import bench


def available() -> list[str]:
    return sorted(m.name for m in pkgutil.iter_modules(bench.__path__) if not m.name.startswith("_"))


def main(argv: Sequence[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    names = available()
    if not args or args[0] in ("-h", "--help", "--list"):
        print(__doc__.strip() + "\n\nbenchmarks: " + ", ".join(names))
        return
    name, rest = args[0].replace("-", "_"), args[1:]
    if name not in names:
        sys.exit(f"gaga-bench: no benchmark {args[0]!r}; available: {', '.join(names)}")
    module = importlib.import_module(f"bench.{name}")
    entry = getattr(module, "main", None)
    if entry is None:
        sys.exit(f"gaga-bench: bench/{name}.py has no main()")
    sys.argv = [f"gaga-bench {name}", *rest]  # for benchmarks that read sys.argv or print their command
    if inspect.signature(entry).parameters:
        entry(rest)
    else:
        entry()


if __name__ == "__main__":
    main()

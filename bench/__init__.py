"""Benchmark scripts: `python -m bench.<name> --out bench/results/<name>_<gpu>.json`."""

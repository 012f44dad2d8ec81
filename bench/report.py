"""What every benchmark does last: print its JSON report and write it where ``--out`` says."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def write_report(report: dict[str, Any], out: str | Path | None, echo: bool = True) -> str:
    """``echo=False``: only (re)write the file (a benchmark saving what it has so far)."""
    text = json.dumps(report, indent=1, default=float)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text + "\n")
    if echo:
        print(text)
    return text

"""What every benchmark does last: print its JSON report and write it where ``--out`` says; and the
pieces the timing benchmarks share: the spread over repeated windows and the GPU's state."""

from __future__ import annotations

import json
import shlex
import shutil
import statistics
import subprocess
from pathlib import Path
from typing import Any

# nvidia-smi fields recorded before and after a measurement: a clock or power cap that moved
# between variants shows here, not as a mysterious speed difference
GPU_FIELDS = ("clocks.sm", "clocks.mem", "clocks.max.sm", "temperature.gpu", "power.draw", "power.limit",
              "clocks_event_reasons.active", "memory.used")


def command_line(module: str, argv: list[str], named: dict[str, str] | None = None) -> str:
    """``python -m module argv`` as a JSON records it: the value of each option in ``named`` replaced
    by what it names (a machine's paths mean nothing elsewhere), ``--device-command`` left out
    (recorded in a field of its own), the rest shell-quoted."""
    named = {**(named or {}), "--device-command": ""}
    out, pending = ["python", "-m", module], None
    for arg in argv:
        option, eq, _ = arg.partition("=")
        if pending is not None:
            out += [named[pending]] if named[pending] else []
            pending = None
        elif option in named and eq:
            out += [f"{option}={named[option]}"] if named[option] else []
        elif arg in named:
            pending = arg
            if named[arg]:
                out.append(arg)
        else:
            out.append(shlex.quote(arg))
    return " ".join(out)


def write_report(report: dict[str, Any], out: str | Path | None, echo: bool = True) -> str:
    """``echo=False``: only (re)write the file (a benchmark saving what it has so far)."""
    text = json.dumps(report, indent=1, default=float)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text + "\n")
    if echo:
        print(text)
    return text


def spread(values: list[float], digits: int = 2) -> dict[str, Any]:
    """Median and min–max of repeated windows (each window one measurement), and the values."""
    if not values:
        return {"n": 0}
    return {"median": round(statistics.median(values), digits), "min": round(min(values), digits),
            "max": round(max(values), digits), "n": len(values), "values": [round(v, digits) for v in values]}


def gpu_state(index: int = 0) -> dict[str, str] | None:
    """The GPU's clocks (MHz), temperature (°C), power (W), throttle reasons and memory now, as
    nvidia-smi reports them; None without nvidia-smi. Read only: nothing is set."""
    if shutil.which("nvidia-smi") is None:
        return None
    fields = list(GPU_FIELDS)
    for _ in range(2):  # an older driver lacks clocks_event_reasons: retry with the older name
        try:
            out = subprocess.run(["nvidia-smi", f"--id={index}", f"--query-gpu={','.join(fields)}",
                                  "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=20)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return {"error": f"{type(exc).__name__}: {exc}"}
        if out.returncode == 0:
            return dict(zip(fields, (v.strip() for v in out.stdout.strip().split(","))))
        fields = [f.replace("clocks_event_reasons", "clocks_throttle_reasons") for f in fields]
    return {"error": out.stderr.strip()[:200]}


def cuda_ms(fn, reps: int = 20, warmup: int = 3) -> float:
    """Median milliseconds of ``fn`` between CUDA events, after ``warmup`` calls."""
    import torch

    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return round(statistics.median(times), 3)

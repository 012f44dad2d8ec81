"""Where a profiled window's GPU stood idle, and what the host was doing meanwhile.

A step whose kernels add up to far less than its wall time is limited by the host: the GPU waits
for the next launch. Operator tables (:mod:`pipeline.profiling`) only list what ran; this reads
the window's Chrome trace (``torch.profiler``'s ``export_chrome_trace``) and reports
- ``gpu_busy_ms_per_step``: the union of kernel/memcpy/memset intervals (overlaps counted once);
- ``gpu_idle_ms_per_step`` and the idle gaps by cause: each gap is charged to the innermost
  operator the launching thread was inside at the gap's middle (``python`` when it was in none:
  interpreter time between operators), together with that operator's outermost enclosing one
  and, when the trace holds Python frames (``with_stack=True``), the innermost frame of our own
  code or gsplat's (``code``);
- ``host_sync_ms_per_step``: the host blocked on the GPU (stream/device/event synchronisation,
  blocking copies), per enclosing operator: while the host waits, nothing new is queued.
"""

from __future__ import annotations

import bisect
import json
from collections import defaultdict
from pathlib import Path

DEVICE_CATEGORIES = {"kernel", "gpu_memcpy", "gpu_memset"}
OWN_CODE = ("model/", "pipeline/", "bench/", "gsplat/")
SYNC_CALLS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize", "cudaMemcpy")


def _union(intervals: list[tuple[float, float]]) -> list[tuple[float, float]]:
    merged: list[list[float]] = []
    for start, end in sorted(intervals):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return [(s, e) for s, e in merged]


class _ThreadOps:
    """The CPU operators of one thread as a nesting (a profiler's operators nest per thread),
    queried by time."""

    def __init__(self, ops: list[dict]) -> None:
        self.ops = sorted(ops, key=lambda e: (e["ts"], -e["dur"]))
        self.starts = [e["ts"] for e in self.ops]
        self.parent: list[int] = []
        open_ops: list[int] = []
        for i, e in enumerate(self.ops):
            while open_ops and self._end(open_ops[-1]) < e["ts"]:
                open_ops.pop()
            self.parent.append(open_ops[-1] if open_ops else -1)
            open_ops.append(i)

    def _end(self, i: int) -> float:
        return self.ops[i]["ts"] + self.ops[i]["dur"]

    def stack_at(self, t: float) -> list[str]:
        """Names of the operators (and Python frames) containing time ``t``, outermost first."""
        i = bisect.bisect_right(self.starts, t) - 1
        while i >= 0 and self._end(i) < t:  # the last op to start before t ended: go up to one that holds t
            i = self.parent[i]
        stack = []
        while i >= 0:
            stack.append(self.ops[i]["name"])
            i = self.parent[i]
        return stack[::-1]


def idle_report(trace_path: str | Path, steps: int, top: int = 15, min_gap_us: float = 20.0) -> dict:
    """GPU busy/idle ms per step over the trace's device events, idle gaps ≥ ``min_gap_us`` by
    cause and host synchronisation by enclosing operator (ms per step, ``top`` rows each)."""
    events = json.loads(Path(trace_path).read_text())["traceEvents"]
    complete = [e for e in events if e.get("ph") == "X" and "dur" in e]
    device = [e for e in complete if e.get("cat") in DEVICE_CATEGORIES]
    if not device:
        return {"error": "no GPU events in the trace"}
    busy = _union([(e["ts"], e["ts"] + e["dur"]) for e in device])
    runtime = [e for e in complete if e.get("cat") == "cuda_runtime"]
    launch_by_corr = {e["args"]["correlation"]: e for e in runtime if "correlation" in e.get("args", {})}
    ops_by_thread: dict = defaultdict(list)
    for e in complete:
        if e.get("cat") in ("cpu_op", "python_function"):
            ops_by_thread[e["tid"]].append(e)
    threads = {tid: _ThreadOps(ops) for tid, ops in ops_by_thread.items()}
    first_device_at = sorted(device, key=lambda e: e["ts"])

    gaps: dict = defaultdict(float)
    idle_total = 0.0
    starts = [e["ts"] for e in first_device_at]
    for (_, end), (nxt, _) in zip(busy, busy[1:]):
        gap = nxt - end
        idle_total += gap
        if gap < min_gap_us:  # counted as idle, too short to be worth a cause
            continue
        kernel = first_device_at[bisect.bisect_left(starts, nxt)]
        launch = launch_by_corr.get(kernel.get("args", {}).get("correlation"))
        stack = threads[launch["tid"]].stack_at((end + nxt) / 2) if launch and launch["tid"] in threads else []
        own = [name for name in stack if "torch/" not in name and any(tag in name for tag in OWN_CODE)]
        cause = (stack[-1] if stack else "python (between operators)", stack[0] if stack else "", own[-1] if own else "")
        gaps[cause] += gap

    syncs: dict = defaultdict(float)
    for e in runtime:
        if e["name"].startswith(SYNC_CALLS) and e["tid"] in threads:
            stack = threads[e["tid"]].stack_at(e["ts"] + e["dur"] / 2)
            syncs[(e["name"], stack[-1] if stack else "python", stack[0] if stack else "")] += e["dur"]

    span = busy[-1][1] - busy[0][0]
    per_step = lambda us: round(us / 1000 / steps, 3)  # noqa: E731
    return {
        "window_ms_per_step": per_step(span),
        "gpu_busy_ms_per_step": per_step(sum(e - s for s, e in busy)),
        "gpu_idle_ms_per_step": per_step(idle_total),
        "idle_gaps_by_cause": [{"op": op[:120], "outermost": outer[:120], "code": code[:160],
                                "idle_ms_per_step": per_step(us)}
                               for (op, outer, code), us in sorted(gaps.items(), key=lambda kv: -kv[1])[:top]],
        "host_sync_ms_per_step": per_step(sum(syncs.values())),
        "host_sync_by_op": [{"call": call, "op": op[:120], "outermost": outer[:120], "ms_per_step": per_step(us)}
                            for (call, op, outer), us in sorted(syncs.items(), key=lambda kv: -kv[1])[:top]],
    }

"""The private local cluster of an entry point (pipeline.ray_cluster.ensure_ray): its worker
processes run the setup hook that silences Ray Train's placement-group watchdog, which without a
dashboard can only repeat a warning every second, and nothing else."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

PROBE = """
import json, logging, ray
from pipeline.ray_cluster import PLACEMENT_GROUP_CLEANER_LOGGER, ensure_ray

ensure_ray(num_cpus=1)

@ray.remote(num_cpus=0)
def levels():
    return {"cleaner": logging.getLogger(PLACEMENT_GROUP_CLEANER_LOGGER).getEffectiveLevel(),
            "train": logging.getLogger("ray.train").getEffectiveLevel()}

print("LEVELS", json.dumps(ray.get(levels.remote())))
ray.shutdown()
"""


def test_private_cluster_workers_silence_only_the_placement_group_watchdog(tmp_path):
    env = {**os.environ, "RAY_ADDRESS": "", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    line = next(li for li in out.stdout.splitlines() if li.startswith("LEVELS "))
    levels = json.loads(line.split(" ", 1)[1])
    assert levels["cleaner"] == 40  # logging.ERROR: its once-a-second warning is gone
    assert levels["train"] <= 30  # the rest of Ray Train still warns


def test_setup_hook_module_is_found_by_workers_of_an_uninstalled_checkout(tmp_path):
    """Ray runs the hook before a worker gets the driver's import path: the runtime env's
    PYTHONPATH alone must find it (an interpreter without site-packages, started elsewhere)."""
    from pipeline.ray_cluster import private_runtime_env

    env_vars = private_runtime_env()["env_vars"]
    hook = private_runtime_env()["worker_process_setup_hook"]
    probe = [sys.executable, "-S", "-c", f"import importlib; importlib.import_module({hook.rsplit('.', 1)[0]!r})"]
    bare = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    assert subprocess.run(probe, cwd=tmp_path, env=bare, capture_output=True).returncode != 0  # the failure it prevents
    found = subprocess.run(probe, cwd=tmp_path, env={**bare, **env_vars}, capture_output=True, text=True)
    assert found.returncode == 0, found.stderr

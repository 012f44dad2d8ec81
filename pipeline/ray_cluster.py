"""Connecting an entry point to Ray, explicitly (libraries never call this; they assume a cluster).

- ``RAY_ADDRESS`` set (``ray job submit`` sets it for the job's driver; a user may set it to join
  a cluster on purpose): join that cluster.
- otherwise: start a **private** local cluster (``address="local"``) bound to 127.0.0.1, even when
  another Ray (e.g. a ``ray start --head`` for ``ray job submit``) runs on the same machine. Tests
  always take this path.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger("gaga.ray")

# Ray Train's watchdog that removes a run's placement group if its controller dies asks the state
# API, i.e. the dashboard, every second; the private cluster runs without a dashboard, so it could
# never work there and only repeats "Failed to query Ray Train Controller actor state" (hundreds of
# lines in a demo). The placement groups of a private cluster end with it anyway.
PLACEMENT_GROUP_CLEANER_LOGGER = "ray.train.v2._internal.execution.controller.placement_group_cleaner"


def quiet_placement_group_cleaner() -> None:
    """Worker-process setup hook of the private cluster (see above)."""
    logging.getLogger(PLACEMENT_GROUP_CLEANER_LOGGER).setLevel(logging.ERROR)


def private_runtime_env() -> dict:
    """The private cluster's runtime env: the setup hook above, and this package's directory on
    the workers' PYTHONPATH. Ray runs the hook before it gives a worker the driver's import path,
    so from a source checkout that is not installed the hook's module must be found this way
    (without it every worker died at start: "No module named 'pipeline'")."""
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    path = os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH", "")) if p)
    return {"worker_process_setup_hook": f"{__name__}.quiet_placement_group_cleaner", "env_vars": {"PYTHONPATH": path}}


def ensure_ray(num_cpus: int | None = None, num_gpus: int | None = None) -> str:
    """``ray.init`` once, as described above; logs and returns what it did."""
    import ray

    if ray.is_initialized():
        return "already connected"
    address = os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True)
        what = f"joined the Ray cluster at {address}"
    else:
        # read when Ray starts its processes: without it they bind to the machine's network interface
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        ray.init(address="local", num_cpus=num_cpus, num_gpus=num_gpus, include_dashboard=False, log_to_driver=True,
                 runtime_env=private_runtime_env())
        what = "started a private local Ray cluster on 127.0.0.1"
    log.info(what)
    return what

"""Connecting to Ray: the cluster a job was submitted to, or a local one bound to 127.0.0.1."""

from __future__ import annotations

import os


def ensure_ray(num_cpus: int | None = None, num_gpus: int | None = None) -> None:
    """``ray.init`` once. Under ``ray job submit`` (RAY_ADDRESS set) this joins that cluster;
    otherwise it starts a local one that listens on loopback only."""
    import ray

    if ray.is_initialized():
        return
    if os.environ.get("RAY_ADDRESS"):
        ray.init(log_to_driver=True)
        return
    # without this Ray binds to the machine's network interface even on one machine
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    ray.init(num_cpus=num_cpus, num_gpus=num_gpus, include_dashboard=False, _node_ip_address="127.0.0.1",
             log_to_driver=True)

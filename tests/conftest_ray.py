"""One local Ray cluster per test session, on 127.0.0.1 only. Import the fixture into a test module
with ``from conftest_ray import ray_cluster  # noqa: F401``."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session")
def ray_cluster():
    """``ray.init(num_cpus=2)`` bound to loopback; shut down at the end of the session (unless
    someone else started Ray in this process first)."""
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # before Ray starts: bind to 127.0.0.1 only
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    if ray.is_initialized():
        yield ray
        return
    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False,
             configure_logging=False)
    try:
        yield ray
    finally:
        ray.shutdown()

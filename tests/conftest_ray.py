"""Shared integration fixtures: one local Ray cluster per test session (127.0.0.1 only) and a real
S3 HTTP server (moto) on loopback. Import them into a test module with
``from conftest_ray import ray_cluster, s3_server  # noqa: F401``."""

from __future__ import annotations

import os
import socket

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
    # a private cluster, never one that happens to run on this machine (e.g. a `ray start --head`)
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        yield ray
    finally:
        ray.shutdown()


@pytest.fixture(scope="session")
def s3_server():
    """A moto S3 endpoint on 127.0.0.1 (a real HTTP server: boto3, pyarrow and Ray talk to it)."""
    from moto.server import ThreadedMotoServer

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


def s3_env(endpoint: str) -> dict[str, str]:
    """The environment that points boto3/pyarrow at ``endpoint``."""
    return {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1"}

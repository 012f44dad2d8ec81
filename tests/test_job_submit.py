"""Our users' submission path, end to end: a Ray head started the way the README says (127.0.0.1,
free ports for every service, token auth), ``ray job submit --working-dir .`` of ``gaga-train``,
the job SUCCEEDED and its checkpoint reached storage; then that cluster — and only that one — is
stopped (the test session's own private cluster keeps running)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from train_fixtures import truth_pairs, write_shards

from pipeline.config import load_config

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent  # ray, gaga-* of this environment


def _free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


@pytest.fixture()
def ray_head(tmp_path):
    """``ray start --head --block`` with its own ports, temp dir and HOME (where it writes the auth
    token); yields (dashboard URL, environment for the CLI); SIGTERM stops exactly this cluster."""
    gcs, dashboard, agent, agent_grpc, client, metrics, runtime_env = _free_ports(7)
    env = {**os.environ, "HOME": str(tmp_path / "home"), "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
           "RAY_USAGE_STATS_ENABLED": "0", "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "WANDB_MODE": "offline",
           "RAY_AUTH_MODE": "token"}
    env.pop("RAY_ADDRESS", None)
    Path(env["HOME"]).mkdir()
    # token auth, as the README sets it up: a token in ~/.ray/auth_token, then the head
    subprocess.run([str(BIN / "ray"), "get-auth-token", "--generate"], env=env, check=True, capture_output=True)
    temp_dir = tempfile.mkdtemp(prefix="ray-")  # short: Ray's socket paths must stay under 107 bytes
    head = subprocess.Popen(
        [str(BIN / "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={gcs}",
         "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}", f"--dashboard-agent-listen-port={agent}",
         f"--dashboard-agent-grpc-port={agent_grpc}", f"--ray-client-server-port={client}",
         f"--metrics-export-port={metrics}", f"--runtime-env-agent-port={runtime_env}", "--num-cpus=2",
         f"--temp-dir={temp_dir}"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{dashboard}"
    cli_env = {**env, "RAY_ADDRESS": url}
    try:
        _wait_for_job_api(head, cli_env, url)
        yield url, cli_env
    finally:
        os.killpg(head.pid, signal.SIGTERM)  # `ray stop` would stop every Ray on the machine
        try:
            head.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        # the GCS server and the autoscaler monitor take ~30 s to exit after SIGTERM; nothing of
        # this throw-away cluster needs a graceful end
        with contextlib.suppress(ProcessLookupError):
            os.killpg(head.pid, signal.SIGKILL)
        head.wait(timeout=60)
        shutil.rmtree(temp_dir, ignore_errors=True)


def _wait_for_job_api(head: subprocess.Popen, env: dict[str, str], url: str) -> None:
    deadline = time.time() + 120
    while time.time() < deadline:
        probe = subprocess.run([str(BIN / "ray"), "job", "list"], env=env, capture_output=True, text=True)
        if probe.returncode == 0:
            return
        if head.poll() is not None:
            pytest.fail(f"ray start failed: {head.stdout.read().decode()[-2000:]}")
        time.sleep(2)
    pytest.fail(f"the job API at {url} did not answer: {probe.stderr[-1000:]}")


def test_ray_job_submit_of_gaga_train_succeeds_and_stores_its_checkpoint(ray_head, tmp_path):
    url, env = ray_head
    refused = subprocess.run([str(BIN / "ray"), "job", "list"], env={**env, "HOME": str(tmp_path)},
                             capture_output=True, text=True)
    assert refused.returncode != 0 and "token" in refused.stderr.lower()  # no token, no access
    cfg = load_config("smoke", ["camera.image_size=32"])
    shards = write_shards(truth_pairs(cfg, clips=1, pairs_per_clip=4), tmp_path / "shards", per_shard=4)
    runs = tmp_path / "runs"
    sets = [f"data.train_shards={Path(shards[0]).parent}", f"train.storage_path={runs}", "train.steps=2",
            "train.checkpoint_every=2", "train.log_every=1", "train.image_every=0", "train.val_every=0",
            "data.batch_size=2", "camera.image_size=32", "loss.box_size=32", "train.run_name=submitted"]
    command = [str(BIN / "ray"), "job", "submit", "--submission-id", "gaga-smoke", "--working-dir", str(ROOT),
               "--", "gaga-train", "--config", "smoke", *[a for s in sets for a in ("--set", s)]]
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    status = subprocess.run([str(BIN / "ray"), "job", "status", "gaga-smoke"], env=env, capture_output=True, text=True)
    assert "Job 'gaga-smoke' succeeded" in status.stdout, proc.stdout[-3000:] + proc.stderr[-2000:]  # = SUCCEEDED
    assert (runs / "submitted" / "checkpoint_0000002" / "model.pt").is_file()
    state = json.loads((runs / "submitted" / "checkpoint_0000002" / "state.json").read_text())
    assert state["step"] == 2
    assert "joined the Ray cluster at" in proc.stdout + proc.stderr  # the head's cluster, not a private one

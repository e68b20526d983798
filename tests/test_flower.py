"""The Flower dashboard (``-A workers.dashboard``, 127.0.0.1, basic auth) over real workers: tasks named by kind,
hospital and round, released metrics only, /metrics off, and a read-only aggregator."""

from __future__ import annotations

import ast
import base64
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from federation_support import small_simulation

from coordinator.loop import Coordinator
from coordinator.run import create_run
from coordinator.simulation import default_model, simulation_config
from coordinator.transport import CeleryTransport
from medheaven.federated.release import RELEASE_DECIMALS
from medheaven.settings import Settings
from workers.app import create_app
from workers.cluster import ProcessCluster

pytestmark = pytest.mark.slow

USER, PASSWORD = "operator", "s3cret-for-tests"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _get(url: str, *, auth: bool = True, method: str = "GET") -> tuple[int, Any]:
    request = urllib.request.Request(url, method=method)  # noqa: S310 - the test builds http://127.0.0.1 URLs only
    if auth:
        token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - 127.0.0.1 only
            body = response.read()
            is_json = response.headers.get_content_type() == "application/json"
            return response.status, json.loads(body) if is_json else body.decode()
    except urllib.error.HTTPError as exc:
        return exc.code, None


def test_flower_lists_workers_and_round_tasks_with_basic_auth(tmp_path: Path, redis_url: str) -> None:
    simulation = small_simulation(tmp_path, hospitals=2, rows=1500)
    port = _free_port()
    env = {**os.environ, "MEDHEAVEN_BROKER_URL": redis_url, "MEDHEAVEN_HOSPITALS": ",".join(simulation.hospitals)}
    command = [
        sys.executable, "-m", "celery", "-A", "workers.dashboard", "flower",
        "--address=127.0.0.1", f"--port={port}", f"--basic-auth={USER}:{PASSWORD}",
    ]  # fmt: skip
    log = (tmp_path / "flower.log").open("wb")
    flower = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                if _get(f"{base}/healthcheck", auth=False)[0] == 200:
                    break
            except (urllib.error.URLError, ConnectionError):
                pass
            time.sleep(0.2)
        app = create_app(
            Settings(broker_url=redis_url, store=simulation.store_url()), hospitals=list(simulation.hospitals)
        )
        config = simulation_config(simulation, run="flower", rounds=1, round_timeout=240, score_test=False)
        store = simulation.store()
        create_run(store, config, model=default_model(simulation), layout=simulation.layout)
        with ProcessCluster(base_env={}, log_dir=tmp_path / "logs") as cluster:
            cluster.start_aggregator(simulation.aggregator_env(broker_url=redis_url))
            for hospital in simulation.hospitals:
                cluster.start_hospital(hospital, simulation.hospital_env(hospital, broker_url=redis_url))
            cluster.wait_ready(app, timeout=180)
            Coordinator(store, CeleryTransport(app), config, poll_interval=0.1).run()

            assert _get(f"{base}/api/workers", auth=False)[0] == 401
            assert _get(f"{base}/api/tasks", auth=False)[0] == 401
            status, workers = _get(f"{base}/api/workers?refresh=1")
            assert status == 200
            names = {name.split("@", 1)[0] for name in workers}
            assert {"aggregator", *(f"{h}-0" for h in simulation.hospitals)} <= names
            tasks: dict[str, Any] = {}
            wanted = {f"train · {h} · round 1 · flower" for h in simulation.hospitals} | {
                f"fold · {h} · round 1 · flower" for h in simulation.hospitals
            }
            for _ in range(50):
                status, tasks = _get(f"{base}/api/tasks")
                if wanted | {"finalise · aggregator · round 1 · flower"} <= {t.get("name") for t in tasks.values()}:
                    break
                time.sleep(0.2)
            assert status == 200
            names = {t.get("name") for t in tasks.values()}
            assert wanted | {"finalise · aggregator · round 1 · flower"} <= names, sorted(map(str, names))
            for task in tasks.values():
                if str(task.get("name", "")).startswith(("train ·", "validate ·")) and task.get("result"):
                    result = ast.literal_eval(task["result"])
                    metrics = result["metrics"]
                    assert metrics and "examples" not in metrics
                    assert all(v == round(v, RELEASE_DECIMALS[k]) for k, v in metrics.items()), metrics
            assert "examples" not in json.dumps(tasks)

            # /metrics is off by default and behind the login; /healthcheck says only OK
            assert _get(f"{base}/metrics", auth=False)[0] == 401
            assert _get(f"{base}/metrics")[0] == 404
            assert _get(f"{base}/healthcheck", auth=False) == (200, "OK")

            # the aggregator refuses to grow its pool: still one process afterwards
            aggregator = next(name for name in workers if name.startswith("aggregator@"))
            grown = _get(f"{base}/api/worker/pool/grow/{aggregator}?n=2", method="POST")
            assert grown[0] != 200
            replies = app.control.inspect(destination=[aggregator], timeout=5).stats() or {}
            assert len(replies[aggregator]["pool"]["processes"]) == 1
            assert replies[aggregator]["pool"]["max-concurrency"] == 1
            refusal = app.control.pool_grow(2, reply=True, destination=[aggregator], timeout=5)
            assert "refuses remote-control command 'pool_grow'" in refusal[0][aggregator]["error"]
    finally:
        flower.terminate()
        flower.wait(timeout=20)

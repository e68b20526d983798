"""End-to-end on real Redis with real worker processes started exactly as the runbook starts them."""

from __future__ import annotations

import os
import time
from pathlib import Path

import psutil
import pytest
from federation_support import assert_store_is_public_only, small_simulation

from coordinator.loop import Coordinator
from coordinator.run import create_run
from coordinator.simulation import Simulation, default_model, simulation_config
from coordinator.transport import CeleryTransport
from medheaven.crypto.codec import load_secret_keys
from medheaven.crypto.signing import load_signing_key
from medheaven.federated.hospital import HospitalNode
from medheaven.federated.nodes import schema_reader
from medheaven.federated.paths import RunPaths
from medheaven.federated.verify import verify_round
from medheaven.settings import Settings
from workers.app import create_app
from workers.cluster import ProcessCluster

pytestmark = pytest.mark.slow


def _app(simulation: Simulation, redis_url: str):  # type: ignore[no-untyped-def]
    return create_app(
        Settings(broker_url=redis_url, store=simulation.store_url()), hospitals=list(simulation.hospitals)
    )


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode().split("=", 1) for item in raw if b"=" in item)


def test_redis_three_hospitals_end_to_end(tmp_path: Path, redis_url: str) -> None:
    simulation = small_simulation(tmp_path)
    app = _app(simulation, redis_url)
    config = simulation_config(simulation, run="e2e", rounds=2, round_timeout=240)
    store = simulation.store()
    create_run(store, config, model=default_model(simulation), layout=simulation.layout)
    with ProcessCluster(base_env={}, log_dir=tmp_path / "logs") as cluster:
        aggregator = cluster.start_aggregator(simulation.aggregator_env(broker_url=redis_url))
        for hospital in simulation.hospitals:
            cluster.start_hospital(hospital, simulation.hospital_env(hospital, broker_url=redis_url))
        cluster.wait_ready(app, timeout=180)
        history = Coordinator(store, CeleryTransport(app), config, poll_interval=0.1).run()
        # the aggregator and every pool child it forked were never given the secret context
        family = [psutil.Process(aggregator.process.pid), *psutil.Process(aggregator.process.pid).children()]
        for proc in family:
            environment = _environ(proc.pid)
            assert "MEDHEAVEN_SECRET_CONTEXT" not in environment
            assert str(simulation.keys.secret) not in " ".join(proc.cmdline())
            assert all(str(simulation.keys.secret) != f.path for f in proc.open_files())
    assert [r["round"] for r in history] == [1, 2]
    assert all(sorted(r["participants"]) == list(simulation.hospitals) for r in history)
    paths = RunPaths("e2e")
    secret = load_secret_keys(simulation.keys.secret)
    for round_number in (1, 2):
        assert store.exists(paths.manifest("update", round_number))
        report = verify_round(store, secret, "e2e", round_number)
        assert report["max_abs_error"] <= 1e-6, report
        assert report["total_samples_match"]
    weights = _key_holder(simulation).global_weights("e2e", 2)
    assert assert_store_is_public_only(simulation.store_dir, simulation.keys.secret, weights) > 10
    assert store.exists(paths.test_scores())


def _key_holder(simulation: Simulation) -> HospitalNode:
    hospital = simulation.hospitals[0]
    return HospitalNode(
        hospital_id=hospital,
        store=simulation.store(),
        data_path=simulation.data_files[hospital],
        reader=schema_reader("prepared", None),
        secret=load_secret_keys(simulation.keys.secret),
        signing_key=load_signing_key(simulation.identities[hospital].signing_key, hospital_id=hospital),
    )


def test_redis_two_workers_share_one_hospital_queue(tmp_path: Path, redis_url: str) -> None:
    simulation = small_simulation(tmp_path, hospitals=2, rows=2000)
    app = _app(simulation, redis_url)
    config = simulation_config(simulation, run="scale", rounds=1, round_timeout=240, score_test=True)
    store = simulation.store()
    create_run(store, config, model=default_model(simulation), layout=simulation.layout)
    h1, h2 = simulation.hospitals
    with ProcessCluster(base_env={}, log_dir=tmp_path / "logs") as cluster:
        cluster.start_aggregator(simulation.aggregator_env(broker_url=redis_url))
        cluster.start_hospital(h1, simulation.hospital_env(h1, broker_url=redis_url))
        cluster.start_hospital(h1, simulation.hospital_env(h1, broker_url=redis_url))
        cluster.start_hospital(h2, simulation.hospital_env(h2, broker_url=redis_url))
        cluster.wait_ready(app, timeout=180)
        history = Coordinator(store, CeleryTransport(app), config, poll_interval=0.1).run()
        assert history[0]["participants"] and sorted(history[0]["participants"]) == [h1, h2]
        # six identical scoring tasks on h1's queue: with prefetch 1 both processes take some
        results = [
            app.send_task(
                "medheaven.hospital.evaluate_test",
                args=("scale", 1, h1),
                queue=f"hospital.{h1}",
            )
            for _ in range(6)
        ]
        outputs = [r.get(timeout=180) for r in results]
        workers = {r.worker.split("@", 1)[0] for r in results}
    assert workers == {f"{h1}-0", f"{h1}-1"}
    assert all(o["metrics"] == outputs[0]["metrics"] for o in outputs)


def test_aggregator_process_refuses_a_secret_context(tmp_path: Path, redis_url: str) -> None:
    simulation = small_simulation(tmp_path, hospitals=1, rows=500)
    env = {**simulation.aggregator_env(broker_url=redis_url), "MEDHEAVEN_SECRET_CONTEXT": str(simulation.keys.secret)}
    with ProcessCluster(base_env={}, log_dir=tmp_path / "logs") as cluster:
        worker = cluster.start_aggregator(env)
        code = worker.process.wait(timeout=120)
    assert code != 0
    assert "must not have access to the secret context" in worker.log_path.read_text()


def test_hospital_process_refuses_a_world_readable_secret_key(tmp_path: Path, redis_url: str) -> None:
    simulation = small_simulation(tmp_path, hospitals=1, rows=500)
    os.chmod(simulation.keys.secret, 0o644)
    hospital = simulation.hospitals[0]
    with ProcessCluster(base_env={}, log_dir=tmp_path / "logs") as cluster:
        worker = cluster.start_hospital(hospital, simulation.hospital_env(hospital, broker_url=redis_url))
        code = worker.process.wait(timeout=120)
    assert code != 0
    log = worker.log_path.read_text()
    assert "accessible by group or others" in log and "chmod 600" in log
    time.sleep(0)

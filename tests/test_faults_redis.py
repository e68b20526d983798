"""Broker faults: the Redis server (append-only file on) is SIGKILLed mid-round and restarted on the same port and
directory; workers and the coordinator reconnect and the run completes with every round equal to plaintext FedAvg."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from fault_support import BackgroundRun, CommitWatcher, assert_run_sound, federation, redis_server, wait_for
from federation_support import small_simulation

pytestmark = pytest.mark.slow

OUTAGE_SECONDS = 6.0


def test_fault_redis_restarted_mid_round_run_completes(tmp_path: Path) -> None:
    simulation = small_simulation(tmp_path / "sim", hospitals=2, rows=2000)
    h1, h2 = simulation.hospitals
    with redis_server(tmp_path / "redis") as redis, federation(simulation, redis.url(), tmp_path / "logs") as fed:
        config = fed.config("redis-restart", rounds=2, round_timeout=120)
        watcher = CommitWatcher(simulation.store_dir, config.run)
        run = BackgroundRun(fed.coordinator(config))
        wait_for(
            lambda: all(fed.train_state(config.run, 1, h)[0] == "STARTED" for h in (h1, h2)),
            timeout=120,
            what="both hospitals training round 1",
            interval=0.02,
        )
        redis.kill()  # SIGKILL: no shutdown save; the append-only file (fsync always) holds every acknowledged write
        time.sleep(OUTAGE_SECONDS)  # the outage itself: workers and coordinator see connection errors meanwhile
        assert run.thread.is_alive(), f"the coordinator gave up during the outage: {run.error!r}"
        redis.start()
        history = run.result(timeout=300)
    assert [r["round"] for r in history] == [1, 2]
    assert_run_sound(simulation, config.run, rounds=2, watcher=watcher, expected={1: {h1, h2}, 2: {h1, h2}})

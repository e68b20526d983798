"""Liveness leases on real Redis (workers.lease) and the coordinator's use of them (coordinator.loop): a worker that
stops renewing, or is replaced under its name, is lost; a clean stop or a worker without a lease is never taken for
lost; a lost worker's task is given back to its hospital's queue and the dead task ends with the reason."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import redis
from transport_support import RecordingTransport

from coordinator.loop import LIVENESS_EVERY, NO_WORKER_FOR, Coordinator, HospitalState, HospitalStatus, RoundProgress
from coordinator.messaging import TaskState
from coordinator.run import RunConfig
from medheaven.federated.ledger import Ledger
from medheaven.federated.round_policy import Dropout
from medheaven.federated.wire import RoundSpec
from medheaven.store.local import LocalStore
from workers.lease import REGISTRY_KEY, LeaseRenewer, LeaseState, lease_key, lease_state


def test_lease_live_while_renewed_expired_when_not_unknown_after_a_clean_stop(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    renewer = LeaseRenewer(client, "h1-0@host", ttl=1, every=0.2)
    renewer.start()
    time.sleep(1.5)  # past the ttl: only renewals keep it alive
    assert lease_state(client, "h1-0@host") is LeaseState.LIVE
    holder = int(client.get(lease_key("h1-0@host")))
    assert lease_state(client, "h1-0@host", holder) is LeaseState.LIVE
    # the same name renewed by another main process: the worker that announced ``holder + 1`` is gone
    assert lease_state(client, "h1-0@host", holder + 1) is LeaseState.EXPIRED
    renewer._stop.set()  # a death: renewals stop, nothing deregisters
    renewer._thread.join()
    time.sleep(1.3)
    assert lease_state(client, "h1-0@host") is LeaseState.EXPIRED
    renewer.stop()  # a clean stop deregisters
    assert lease_state(client, "h1-0@host") is LeaseState.UNKNOWN
    assert not client.sismember(REGISTRY_KEY, "h1-0@host")
    assert lease_state(client, "never-leased@host") is LeaseState.UNKNOWN


class _LostWorkerTransport(RecordingTransport):
    """h2's task is STARTED on a worker that the lease says is lost."""

    def __init__(self) -> None:
        super().__init__()
        self.marked: list[tuple[str, str]] = []

    def send_aggregate_task(self, name: str, args: tuple[Any, ...]) -> str:
        raise AssertionError("not used here")

    def state(self, task_id: str) -> TaskState:
        return TaskState("STARTED")

    def lost_worker(self, task_id: str) -> str | None:
        return "h2-0@host" if task_id == "old-h2" else None

    def mark_lost(self, task_id: str, reason: str) -> None:
        self.marked.append((task_id, reason))


def test_coordinator_gives_a_lost_workers_task_back_to_its_hospital_queue(tmp_path: Path) -> None:
    transport = _LostWorkerTransport()
    config = RunConfig(run="lost", hospitals=("h1", "h2"), rounds=1, min_hospitals=2, round_timeout=60)
    coordinator = Coordinator(LocalStore(tmp_path / "store"), transport, config, poll_interval=0.001)
    spec = RoundSpec("lost", 1, 1, "update", ("h1", "h2"), 2, time.time() + 60, "ab" * 32)
    dispatch: dict[str, Any] = {"h1": {"task": "old-h1", "fold": "f1"}, "h2": {"task": "old-h2", "fold": "f2"}}
    progress = RoundProgress(spec, {h: HospitalStatus(h, HospitalState.TRAINING) for h in ("h1", "h2")})
    coordinator._give_back_lost_tasks(spec, dispatch, progress)
    assert transport.sent == [("train", (spec.to_dict(), "h2"))]
    assert dispatch["h2"] == {"task": "task-1", "fold": "fold-1", "lost": ["old-h2"]}
    assert dispatch["h1"] == {"task": "old-h1", "fold": "f1"}
    stored = coordinator.store.get_json(coordinator.paths.dispatch("update", 1, 1))
    assert stored == dispatch  # the given-back task is what a resumed coordinator watches
    [(task_id, reason)] = transport.marked
    assert task_id == "old-h2"
    assert reason == (
        "its liveness lease expired; the coordinator gave h2's train task for update round 1 back to h2's queue as "
        "task task-1"
    )
    assert progress.statuses["h2"].state is HospitalState.QUEUED
    assert progress.statuses["h1"].state is HospitalState.TRAINING


class _DeadHospitalTransport(_LostWorkerTransport):
    """h2's task was given back after its worker died; the task waits in h2's queue and h2 has ``consumers`` live
    workers by their answer to inspect."""

    def __init__(self, consumers: int | None) -> None:
        super().__init__()
        self.consumers = consumers
        self.asked = 0

    def state(self, task_id: str) -> TaskState:
        return TaskState("PENDING" if task_id == "new-h2" else "STARTED")

    def live_consumers(self, hospital: str) -> int | None:
        self.asked += 1
        return self.consumers if hospital == "h2" else 1


@pytest.mark.parametrize(("consumers", "lost"), [(0, True), (1, False), (None, False)])
def test_hospital_whose_given_back_task_no_live_worker_can_take_counts_as_lost(
    tmp_path: Path, consumers: int | None, lost: bool
) -> None:
    """The given-back task can only be trained by another live worker of h2; with none for NO_WORKER_FOR seconds h2
    is lost for the round policy (a masked attempt is then abandoned, not held to its deadline). A live worker, or
    no way to know (in-process), keeps h2 queued."""
    now = [1000.0]
    transport = _DeadHospitalTransport(consumers)
    config = RunConfig(run="lost", hospitals=("h1", "h2"), rounds=1, min_hospitals=2, round_timeout=60)
    coordinator = Coordinator(
        LocalStore(tmp_path / "store"), transport, config, poll_interval=0.001, clock=lambda: now[0]
    )
    spec = RoundSpec("lost", 1, 1, "update", ("h1", "h2"), 2, now[0] + 60, "ab" * 32, cohort=("h1", "h2"))
    dispatch: dict[str, Any] = {"h1": {"task": "old-h1", "fold": "f1"}, "h2": {"task": "new-h2", "lost": ["old-h2"]}}
    ledger = Ledger.empty("lost", "update", 1, 1)
    states = []
    for _ in range(4):  # one question per LIVENESS_EVERY, whatever the number of polls in between
        states.append(coordinator._statuses(spec, dispatch, ledger).statuses["h2"].state)
        states.append(coordinator._statuses(spec, dispatch, ledger).statuses["h2"].state)
        now[0] += LIVENESS_EVERY
    assert transport.asked == 4
    assert all(s is HospitalState.QUEUED for s in states[: 2 * int(NO_WORKER_FOR / LIVENESS_EVERY)])
    progress = coordinator._statuses(spec, dispatch, ledger)
    assert (progress.statuses["h2"].state is HospitalState.LOST) is lost
    assert progress.gone() == ({"h2": Dropout.LOST} if lost else {})

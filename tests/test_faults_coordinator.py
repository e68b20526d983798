"""Coordinator faults on real Redis with real worker processes: a round that cannot reach its quorum, and the
coordinator process SIGKILLed mid-round and between rounds, then resumed (in-process and through the CLI)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
from fault_support import (
    CommitWatcher,
    assert_run_sound,
    environment_without_medheaven,
    federation,
    freeze,
    queued,
    redis_server,
    sha256_file,
    task_names,
    thaw,
    wait_for,
)
from federation_support import small_simulation
from transport_support import RecordingTransport

from coordinator.loop import Coordinator, require_run_config
from coordinator.messaging import TaskState, Transport
from coordinator.run import RunConfig
from medheaven.crypto.planning import plan_ckks_parameters
from medheaven.errors import QuorumNotReachedError
from medheaven.feature_layout import FeatureLayout
from medheaven.federated.paths import RunPaths
from medheaven.federated.wire import PLAINTEXT_FINGERPRINT, Manifest, RoundSpec, RunDescription
from medheaven.model import ModelSpec
from medheaven.store.local import LocalStore

pytestmark = pytest.mark.slow


def test_fault_quorum_not_reached_leaves_previous_model_and_resumes(tmp_path: Path) -> None:
    """With one of two required hospitals unreachable, round 2 fails at its deadline with QuorumNotReachedError,
    round 1's global model is untouched (bytes and digest), and once the hospital is back the run resumes with a
    fresh attempt that finishes; the stale attempt's update is never folded."""
    simulation = small_simulation(tmp_path / "sim", hospitals=2, rows=2000)
    h1, h2 = simulation.hospitals
    with redis_server(tmp_path / "redis") as redis, federation(simulation, redis.url(), tmp_path / "logs") as fed:
        config = fed.config("quorum", rounds=2, round_timeout=25)
        watcher, run = fed.start_run(config)
        wait_for(lambda: h2 in fed.folded(config.run, 1), timeout=120, what="h2 folded into round 1", interval=0.02)
        unreachable = freeze(fed.worker(f"{h2}-0"))  # idle: round 2's task waits for it
        paths = RunPaths(config.run)
        round1 = simulation.store_dir / paths.global_model(1)
        first = wait_for(lambda: fed.manifest(config.run, 1), timeout=60, what="round 1 to commit")
        before = round1.read_bytes()
        with pytest.raises(QuorumNotReachedError) as failure:
            run.result(timeout=120)
        message = str(failure.value)
        assert "update round 2" in message and "1 of 2 hospitals folded" in message and "quorum 2" in message
        assert "previous global model is untouched" in message
        assert f"medheaven-coordinator resume --run-id {config.run}" in message
        assert round1.read_bytes() == before and sha256_file(round1) == first.result_sha256
        assert fed.manifest(config.run, 2) is None
        assert fed.store.exists(paths.failure("update", 2, 1))
        assert not (simulation.store_dir / paths.global_model(2)).exists()
        # the failed round's finalise is a FAILURE in Celery (what Flower shows), with the aggregator's reason
        backend = fed.app.backend
        metas = [
            backend.get_task_meta(key.decode().removeprefix("celery-task-meta-"))
            for key in backend.client.scan_iter("celery-task-meta-*")
        ]
        finals = [m for m in metas if m.get("name") == "medheaven.aggregate.finalise" and list(m["args"])[2] == 2]
        assert finals and all(m["status"] == "FAILURE" for m in finals), finals
        assert isinstance(finals[0]["result"], QuorumNotReachedError)
        assert "folded 1 of 2 hospitals, quorum is 2" in str(finals[0]["result"])

        thaw(unreachable)  # the hospital is back; its stale attempt-1 task is acknowledged and dropped untrained
        stale_task = fed.dispatch(config.run, 2)[h2]["task"]
        stale = wait_for(
            lambda: fed.app.AsyncResult(stale_task).state if fed.app.AsyncResult(stale_task).ready() else None,
            timeout=120,
            what="h2's stale attempt-1 train task to be dropped",
        )
        stale_error = str(fed.app.AsyncResult(stale_task).result)
        history = fed.coordinator(require_run_config(fed.store, config.run)).run()
    assert stale == "FAILURE" and "dropped without training" in stale_error, stale_error
    assert "attempt 1" in stale_error and "has failed" in stale_error, stale_error
    assert not fed.store.exists(paths.update("update", 2, 1, h2)), "the stale attempt was trained and uploaded"
    assert [r["round"] for r in history] == [1, 2]
    assert history[1]["attempt"] == 2
    assert round1.read_bytes() == before
    assert_run_sound(simulation, config.run, rounds=2, watcher=watcher, expected={1: {h1, h2}, 2: {h1, h2}})


def _coordinator(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    handle = log.open("ab")
    return subprocess.Popen(
        [sys.executable, "-m", "coordinator", *args],
        env={**environment_without_medheaven(), **env},
        stdout=handle,
        stderr=subprocess.STDOUT,
    )


def _sigkill(process: subprocess.Popen[bytes]) -> None:
    process.kill()
    process.wait(timeout=30)


def test_fault_coordinator_sigkilled_mid_round_and_between_rounds_resumes(tmp_path: Path) -> None:
    """The coordinator CLI is SIGKILLed while round 1 trains and again right after round 2 committed (before it
    opened round 3); each `medheaven-coordinator resume` continues from the last committed round: it re-attaches to
    round 1's in-flight attempt instead of training it again, and opens round 3 without repeating round 2."""
    simulation = small_simulation(tmp_path / "sim", hospitals=2, rows=2000)
    h1, h2 = simulation.hospitals
    run_id = "coordinator-kill"
    paths = RunPaths(run_id)
    log = tmp_path / "coordinator.log"
    with redis_server(tmp_path / "redis") as redis, federation(simulation, redis.url(), tmp_path / "logs") as fed:
        env = {**fed.coordinator_env(), "MEDHEAVEN_POLL_INTERVAL": "0.2"}
        watcher = CommitWatcher(simulation.store_dir, run_id)
        first = _coordinator(
            [
                "run", "--run-id", run_id, "--hospitals", f"{h1},{h2}", "--rounds", "3", "--round-timeout", "90",
                "--hidden", "16", "--layout", str(simulation.root / "data" / "layout.json"), "--quiet",
            ],
            env,
            log,
        )  # fmt: skip
        # 1. mid-round: SIGKILL while round 1 trains
        wait_for(lambda: fed.train_state(run_id, 1, h1)[0] in {"STARTED", "SUCCESS"}, timeout=120,
                 what="round 1 to be training", interval=0.02)  # fmt: skip
        _sigkill(first)
        wait_for(lambda: sorted(fed.folded(run_id, 1)) == [h1, h2], timeout=120, what="round 1's updates folded")
        assert fed.manifest(run_id, 1) is None, "nobody finalised round 1: the coordinator was dead"
        round1_tasks = fed.dispatch(run_id, 1)

        # 2. between rounds: SIGKILL once round 2 is committed and before round 3 is opened
        second = _coordinator(["resume", "--run-id", run_id, "--quiet"], env, log)
        wait_for(lambda: fed.store.exists(paths.dispatch("update", 2, 1)), timeout=120, what="round 2 to open")
        coordinator = psutil.Process(second.pid)
        coordinator.suspend()
        wait_for(lambda: sorted(fed.folded(run_id, 2)) == [h1, h2], timeout=120, what="round 2's updates folded")
        aggregator = freeze(fed.worker("aggregator"))
        time.sleep(3)  # kombu's BRPOP times out after 1 s: a frozen consumer then has no pop pending
        coordinator.resume()
        client = redis.client()
        wait_for(lambda: "medheaven.aggregate.finalise" in task_names(queued(client, "aggregate")), timeout=60,
                 what="the coordinator to send round 2's finalise")  # fmt: skip
        coordinator.suspend()
        thaw(aggregator)
        wait_for(lambda: fed.manifest(run_id, 2), timeout=60, what="round 2 to commit")
        _sigkill(second)
        assert not fed.store.exists(paths.spec("update", 3)), "the coordinator opened round 3 before the kill"

        third = _coordinator(["resume", "--run-id", run_id, "--quiet"], env, log)
        code = third.wait(timeout=240)
    assert code == 0, log.read_text()[-3000:]
    assert fed.dispatch(run_id, 1) == round1_tasks, "round 1 was dispatched again instead of re-attached"
    assert require_run_config(simulation.store(), run_id).rounds == 3
    for round_number in (1, 2, 3):
        manifest = fed.manifest(run_id, round_number)
        assert manifest is not None and manifest.attempt == 1
    assert_run_sound(simulation, run_id, rounds=3, watcher=watcher, expected={r: {h1, h2} for r in (1, 2, 3)})


class _WatchingStartedError(Exception):
    pass


class _RecordingTransport(RecordingTransport):
    """Tells each aggregate task sent to ``on_send``; a hospital task's state ends the watch (see below)."""

    def __init__(self, on_send: Any = None) -> None:
        super().__init__()
        self.on_send = on_send

    def send_aggregate_task(self, name: str, args: tuple[Any, ...]) -> str:
        task_id = super().send_aggregate_task(name, args)
        if self.on_send is not None:
            self.on_send(name, len(self.sent))
        return task_id

    def state(self, task_id: str) -> TaskState:
        if task_id.startswith("task-"):
            raise _WatchingStartedError  # the round was opened and is being watched: that is all these tests need to see
        return TaskState("PENDING")


def _bare_coordinator(tmp_path: Path, transport: Transport, **kwargs: Any) -> Coordinator:
    config = RunConfig(run="bare", hospitals=("h1", "h2"), rounds=1, min_hospitals=2, round_timeout=60)
    store = LocalStore(tmp_path / "store")
    # a plaintext run: the coordinator reads the run's scheme (masked runs choose retry cohorts under the cohort rule)
    description = RunDescription(
        run="bare", model=ModelSpec(n_features=3), params=plan_ckks_parameters(), fingerprint=PLAINTEXT_FINGERPRINT,
        layout=FeatureLayout(numeric=("a", "b", "c"), categorical=()), plaintext=True,
    )  # fmt: skip
    store.put_json(RunPaths("bare").model, description.to_dict())
    return Coordinator(store, transport, config, poll_interval=0.001, **kwargs)


def test_fault_coordinator_killed_between_spec_and_dispatch_opens_a_new_attempt(tmp_path: Path) -> None:
    """A coordinator killed after writing round 1's spec but before recording its tasks leaves an attempt nobody can
    watch; resume opens attempt 2 (whose updates live under a2/) instead of failing on the missing record."""
    transport = _RecordingTransport()
    coordinator = _bare_coordinator(tmp_path, transport)
    orphan = RoundSpec("bare", 1, 1, "update", ("h1", "h2"), 2, time.time() + 60, "ab" * 32)
    coordinator.store.put_json(coordinator.paths.spec("update", 1), orphan.to_dict())
    with pytest.raises(_WatchingStartedError):
        coordinator._phase("update", 1, base="ab" * 32)
    reopened = RoundSpec.from_dict(coordinator.store.get_json(coordinator.paths.spec("update", 1)))
    assert reopened.attempt == 2
    assert coordinator.store.exists(coordinator.paths.dispatch("update", 1, 2))
    assert [name for name, _ in transport.sent] == ["train", "train"]


def test_fault_lost_finalise_is_sent_again(tmp_path: Path) -> None:
    """A finalise message that dies with an aggregator is sent again after `resend_after` seconds without an answer
    (the clock is simulated); the round is taken as committed once the manifest appears."""
    now = [1000.0]
    spec = RoundSpec("bare", 1, 1, "update", ("h1", "h2"), 2, now[0] + 60, "ab" * 32)

    def commit_on_second_send(name: str, count: int) -> None:
        if name == "finalise" and count == 2:
            manifest = Manifest("bare", 1, 1, "update", "ab" * 32, "bare/rounds/1/global.ckks", "cd" * 32, 1,
                                ("h1", "h2"), (), (), 2, 0.0, 0.0, 0.0)  # fmt: skip
            coordinator.store.create_json(coordinator.paths.manifest("update", 1), manifest.to_dict())

    transport = _RecordingTransport(on_send=commit_on_second_send)

    def clock() -> float:
        now[0] += 1.0  # every poll of the simulated clock is one second
        return now[0]

    coordinator = _bare_coordinator(tmp_path, transport, clock=clock, resend_after=10.0)
    manifest = coordinator._finalise(spec)
    assert manifest.round == 1
    assert [name for name, _ in transport.sent] == ["finalise", "finalise"]

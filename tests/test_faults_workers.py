"""Worker faults on real Redis with real worker processes: killed hospitals, a killed aggregator, duplicate
deliveries, stragglers and hospital tasks that raise. After every fault the committed global models equal plaintext
FedAvg of exactly the updates their manifests list, and nothing committed was ever rewritten."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pandas as pd
import psutil
import pytest
from fault_support import (
    BackgroundRun,
    CommitWatcher,
    assert_run_sound,
    federation,
    freeze,
    kill_family,
    log_text,
    pool_children,
    redis_server,
    signal_processes,
    task_names,
    thaw,
    unacked,
    wait_for,
)
from federation_support import small_simulation

from coordinator.loop import LogObserver
from coordinator.transport import CeleryTransport
from medheaven.crypto.planning import plan_ckks_parameters
from medheaven.federated.protocol import sha256_hex

pytestmark = pytest.mark.slow


class _TimedObserver(LogObserver):
    """The coordinator's messages with the time each was shown."""

    def __init__(self) -> None:
        self.messages: list[tuple[float, str]] = []

    def message(self, text: str) -> None:
        self.messages.append((time.time(), text))
        super().message(text)


def test_fault_hospital_worker_sigkilled_during_training_task_is_redelivered(tmp_path: Path) -> None:
    """Round 1: SIGKILL the pool process training a hospital's update: the task goes back to the queue (late ack +
    reject on worker lost), a process of the same hospital trains it again, and the round commits with every hospital.

    Round 2 (issue 19, defect 4): SIGKILL the *main* process of the worker training that hospital's update (its pool
    process dies with it, so nothing gives the message back and Redis would hold it unacknowledged until the
    visibility timeout). Its liveness lease expires, the coordinator gives the task back to the hospital's queue, the
    hospital's other worker trains it in the same round, and the dead task ends FAILURE with the reason."""
    simulation = small_simulation(tmp_path / "sim", hospitals=2, rows=2000)
    h1, h2 = simulation.hospitals
    with (
        redis_server(tmp_path / "redis") as redis,
        federation(simulation, redis.url(), tmp_path / "logs", hospitals=(h1,)) as fed,
    ):
        # two processes serve h2's queue; either may pick the redelivered task up
        fed.start_hospital(h2)
        fed.start_hospital(h2)
        fed.wait_ready()
        config = fed.config("kill-hospital", rounds=2, round_timeout=240)
        watcher = CommitWatcher(simulation.store_dir, config.run)
        observer = _TimedObserver()
        run = BackgroundRun(fed.coordinator(config, observer=observer))

        def started(round_number: int) -> dict[str, object] | None:
            state, info = fed.train_state(config.run, round_number, h2)
            return info if state == "STARTED" and isinstance(info, dict) else None

        # round 1: freeze the process that runs h2's training the moment it starts, check it is mid-task, SIGKILL it
        info = wait_for(lambda: started(1), timeout=120, what="h2's round-1 training to start", interval=0.02)
        victim = psutil.Process(int(info["pid"]))
        victim.send_signal(signal.SIGSTOP)
        assert fed.train_state(config.run, 1, h2)[0] == "STARTED", "training finished before the kill"
        task_id = fed.dispatch(config.run, 1)[h2]["task"]
        victim.send_signal(signal.SIGKILL)
        victim.wait(timeout=30)

        # round 2: SIGKILL the main process of the worker training h2's update
        info = wait_for(lambda: started(2), timeout=180, what="h2's round-2 training to start", interval=0.02)
        lost_id = fed.dispatch(config.run, 2)[h2]["task"]
        dead = next(w for w in fed.cluster.workers if str(info["hostname"]).startswith(f"{w.name}@"))
        survivor = next(w for w in fed.cluster.workers if w.name.startswith(f"{h2}-") and w is not dead)
        pool = pool_children(dead)
        assert [p.pid for p in pool] == [int(info["pid"])]
        assert fed.train_state(config.run, 2, h2)[0] == "STARTED", "training finished before the kill"
        psutil.Process(dead.process.pid).send_signal(signal.SIGKILL)  # the main process only
        killed_at = time.time()
        dead.process.wait(timeout=30)
        psutil.wait_procs(pool, timeout=30)  # the pool process dies with its parent (PR_SET_PDEATHSIG)

        history = run.result(timeout=300)
        served_by = fed.app.AsyncResult(task_id).result["hospital"]
        deliveries = int(redis.client().get(f"medheaven:deliveries:{task_id}") or 0)
        second = fed.manifest(config.run, 2)
        dispatch = fed.dispatch(config.run, 2)
        lost_state, lost_info = fed.task_state(lost_id)
        given_back_state, _ = fed.task_state(dispatch[h2]["task"])
        stranded = [m["headers"]["id"] for m in unacked(redis.client(), f"hospital.{h2}")]
        survivor_log = log_text(survivor)
        # the same training task delivered once more after the commit (as a broker redelivery would): the hospital
        # acknowledges and drops it without training (issue 19), so the folded update is untouched and no fold runs
        update = simulation.store_dir / f"{config.run}/updates/1/a1/{h2}.ckks"
        folded_bytes = update.read_bytes()
        spec = fed.store.get_json(f"{config.run}/rounds/1/spec.json")
        again = CeleryTransport(fed.app).send_hospital_task("train", (spec, h2), h2, fold=True)
        dropped = wait_for(
            lambda: fed.task_state(again["task"]) if fed.task_state(again["task"])[0] == "FAILURE" else None,
            timeout=120,
            what="the post-commit train task to be dropped",
        )
        fold_state = fed.task_state(again["fold"])[0]
        logs = "".join(log_text(w) for w in fed.cluster.workers if w.name.startswith(h2))
    assert second is not None
    given_back_at = next(at for at, text in observer.messages if "was lost while running" in text)
    print(
        f"\nhospital main process SIGKILLed mid-training (round 2): lost worker noticed and task given back "
        f"{given_back_at - killed_at:.1f}s after the kill; round committed {second.finalised_at - killed_at:.1f}s "
        "after the kill"
    )
    assert update.read_bytes() == folded_bytes, "a redelivered training task overwrote a folded update"
    assert "dropped without training" in str(dropped[1]) and "already committed" in str(dropped[1]), dropped
    assert fold_state == "PENDING", "a dropped train task still ran its fold"
    assert "dropped the train task of" in logs
    assert served_by == h2
    assert deliveries == 2, "the killed task was not delivered a second time"
    # round 2: the task of the dead worker was given back and ended FAILURE with the reason
    assert dispatch[h2]["lost"] == [lost_id] and dispatch[h2]["task"] != lost_id
    assert lost_state == "FAILURE" and type(lost_info).__name__ == "WorkerLostError", (lost_state, lost_info)
    assert str(lost_info).startswith(f"worker lost: {dead.name}@"), lost_info
    assert "liveness lease expired" in str(lost_info) and dispatch[h2]["task"] in str(lost_info)
    assert given_back_state == "SUCCESS"
    assert dispatch[h2]["task"] in survivor_log, "the given-back task was not trained by h2's other worker"
    assert stranded == [lost_id], "the dead worker's message should still sit unacknowledged (visibility timeout)"
    assert second.finalised_at < second.deadline, "round 2 committed only at its deadline"
    assert [sorted(r["participants"]) for r in history] == [[h1, h2], [h1, h2]]
    assert_run_sound(simulation, config.run, rounds=2, watcher=watcher, expected={1: {h1, h2}, 2: {h1, h2}})


def test_fault_aggregator_sigkilled_mid_round_rebuilds_and_folds_each_update_once(tmp_path: Path) -> None:
    """SIGKILL the aggregator after it folded one hospital and while it holds a second hospital's receipt: the
    restarted aggregator rebuilds the running sum from the ledger, the receipt it died holding is sent again by the
    coordinator, and the round commits with every hospital folded exactly once."""
    simulation = small_simulation(tmp_path / "sim", hospitals=3, rows=2400)
    h1, h2, h3 = simulation.hospitals
    with redis_server(tmp_path / "redis") as redis, federation(simulation, redis.url(), tmp_path / "logs") as fed:
        config = fed.config("kill-aggregator", rounds=1, round_timeout=180)
        watcher, run = fed.start_run(config, resend_after=10.0)
        wait_for(lambda: fed.manifest(config.run, 0, kind="stats"), timeout=120, what="the stats phase to commit")
        late = {h: freeze(fed.worker(f"{h}-0")) for h in (h2, h3)}  # idle now; their round-1 tasks wait
        wait_for(lambda: fed.folded(config.run, 1) == [h1], timeout=120, what="h1 folded into round 1")
        wait_for(lambda: fed.task_state(fed.dispatch(config.run, 1)[h1]["fold"])[0] == "SUCCESS", timeout=30,
                 what="h1's fold to finish")  # fmt: skip
        aggregator = fed.worker("aggregator")
        frozen_pool = pool_children(aggregator)
        signal_processes(frozen_pool, signal.SIGSTOP)
        thaw(late[h2])
        # the aggregator's main process takes h2's receipt off the queue and hands it to its frozen pool process
        wait_for(lambda: "medheaven.aggregate.fold" in task_names(unacked(redis.client(), "aggregate")),
                 timeout=120, what="h2's receipt to be held by the aggregator")  # fmt: skip
        lost_fold = fed.dispatch(config.run, 1)[h2]["fold"]
        kill_family(aggregator)
        thaw(late[h3])
        wait_for(lambda: fed.train_state(config.run, 1, h3)[0] == "SUCCESS", timeout=120, what="h3's update")
        assert fed.folded(config.run, 1) == [h1]
        fed.start_aggregator(name="aggregator-2")
        history = run.result(timeout=240)
        lost_state = fed.task_state(lost_fold)[0]
        resent_fold = fed.dispatch(config.run, 1)[h2]["fold"]
    # the receipt the killed aggregator held never ran; the coordinator sent it again under a new task id
    assert lost_state == "PENDING" and resent_fold != lost_fold
    assert sorted(history[0]["participants"]) == [h1, h2, h3]
    assert_run_sound(simulation, config.run, rounds=1, watcher=watcher, expected={1: {h1, h2, h3}})
    log = (tmp_path / "logs" / "aggregator-2.log").read_text()
    assert "rebuilt update round 1 of kill-aggregator from its ledger (1 folded)" in log


def _announced(state: tuple[str, object]) -> bool:
    """A task past its guard: STARTED, with the worker's main pid that ``workers.lease.announce`` adds."""
    status, info = state
    return status == "STARTED" and isinstance(info, dict) and "worker_pid" in info


def test_fault_straggler_excluded_and_duplicate_receipts_folded_once(tmp_path: Path) -> None:
    """A hospital frozen mid-training stops renewing its worker's lease: once it has had no live worker for 10 s it
    counts as lost, the round commits with the quorum without waiting for the deadline, and its late update, sent when
    it thaws, is rejected and never reaches the next round. While the round is open, the same receipt delivered twice
    more is a no-op; after the commit it is rejected as closed. Every hospital appears at most once in every manifest.

    On the older ``ckks`` scheme, whose rounds commit with the quorum; under the masked default a lost hospital ends
    the attempt instead (test_faults_dropout.py)."""
    simulation = small_simulation(tmp_path / "sim", hospitals=3, rows=2400, params=plan_ckks_parameters())
    h1, h2, h3 = simulation.hospitals
    with redis_server(tmp_path / "redis") as redis, federation(simulation, redis.url(), tmp_path / "logs") as fed:
        config = fed.config("straggler", rounds=2, min_hospitals=2, round_timeout=35)
        watcher, run = fed.start_run(config)
        # frozen inside its training, not before the task's own checks: Celery records STARTED before the task body
        # runs, the body's guard then adds the worker's main pid to the STARTED meta, and right after it the task
        # looks for a closed round. Frozen before that look, the thawed task would find round 1 committed and drop
        # itself untrained (correctly), and no late update would reach the aggregator. The task then imports
        # TensorFlow and trains (seconds), so a short pause after the guard lands the freeze inside the training.
        wait_for(lambda: _announced(fed.train_state(config.run, 1, h3)), timeout=120,
                 what="h3's round-1 training to start", interval=0.02)  # fmt: skip
        time.sleep(0.3)
        straggler = freeze(fed.worker(f"{h3}-0"))
        assert fed.train_state(config.run, 1, h3)[0] == "STARTED", "h3's training finished before the freeze"
        # read now: once the frozen worker's lease expires (10 s) the coordinator gives h3's task back to its queue
        # under new ids (issue 19); the straggler's own fold is the one that reaches the aggregator late
        late_task, late_fold = fed.dispatch(config.run, 1)[h3]["task"], fed.dispatch(config.run, 1)[h3]["fold"]
        wait_for(lambda: sorted(fed.folded(config.run, 1)) == [h1, h2], timeout=60, what="h1 and h2 folded")
        assert fed.manifest(config.run, 1) is None, "the round closed before the duplicates could be sent"
        receipt = fed.app.AsyncResult(fed.dispatch(config.run, 1)[h1]["task"]).result
        duplicates = [fed.app.send_task("medheaven.aggregate.fold", args=(receipt,), queue="aggregate") for _ in "ab"]
        assert [d.get(timeout=60)["status"] for d in duplicates] == ["duplicate", "duplicate"]
        assert fed.manifest(config.run, 1) is None
        first = wait_for(lambda: fed.manifest(config.run, 1), timeout=90, what="round 1 to commit without h3")
        after_commit = fed.app.send_task("medheaven.aggregate.fold", args=(receipt,), queue="aggregate")
        closed = after_commit.get(timeout=60)
        thaw(straggler)
        late = wait_for(lambda: fed.app.AsyncResult(late_fold).result if fed.app.AsyncResult(late_fold).ready() else None,
                        timeout=120, what="h3's late update to reach the aggregator")  # fmt: skip
        history = run.result(timeout=240)
        given_back = fed.dispatch(config.run, 1)[h3]
        given_back_state = wait_for(
            lambda: fed.task_state(given_back["task"]) if fed.task_state(given_back["task"])[0] == "FAILURE" else None,
            timeout=120,
            what="the given-back copy of h3's round-1 task to be dropped",
        )
    assert given_back["lost"] == [late_task], "the frozen straggler's task was not given back to its queue"
    assert "dropped without training" in str(given_back_state[1]), given_back_state
    assert sorted(first.participants) == [h1, h2]
    assert (closed["status"], closed["reason"]) == ("closed", "closed")
    assert (late["status"], late["reason"], late["hospital"]) == ("closed", "closed", h3)
    assert "already committed" in late["message"]
    assert [r["statuses"][h3] for r in history] == ["worker lost", "folded"]
    reports = assert_run_sound(
        simulation, config.run, rounds=2, watcher=watcher, expected={1: {h1, h2}, 2: {h1, h2, h3}}
    )
    assert reports[1]["hospitals"].count(h1) == 1
    # the round-2 update of h3 is its round-2 envelope, not the late round-1 one
    store = simulation.store()
    late_key = f"{config.run}/updates/1/a1/{h3}.ckks"
    second = fed.manifest(config.run, 2)
    assert second is not None
    entry = next(e for e in second.folded if e.hospital == h3)
    assert entry.key == f"{config.run}/updates/2/a1/{h3}.ckks"
    assert store.exists(late_key) and entry.sha256 != sha256_hex(store.get(late_key))


def test_fault_hospital_task_raises_round_proceeds_with_quorum(tmp_path: Path) -> None:
    """One hospital's data file lacks a column (its task raises), another signs with a key that is not the one
    registered for it (its messages are unverifiable noise, never its answer, so the round waits for it until the
    deadline): the stats phase and the round commit with the two healthy ones.

    On the older ``ckks`` scheme (quorum at the deadline); the masked default's answer to a failing member is a
    fresh attempt among the others (test_faults_dropout.py, test_round_policy.py)."""
    simulation = small_simulation(tmp_path / "sim", hospitals=4, rows=3200, params=plan_ckks_parameters())
    h1, h2, broken, impostor = simulation.hospitals
    with (
        redis_server(tmp_path / "redis") as redis,
        federation(simulation, redis.url(), tmp_path / "logs", hospitals=(h1, h2)) as fed,
    ):
        fed.start_hospital(broken)
        fed.start_hospital(impostor, {"MEDHEAVEN_SIGNING_KEY": str(simulation.identities[h1].signing_key)})
        fed.wait_ready()
        # the file loses a column after the worker checked it at start-up (a worker refuses to start on such a
        # file), so the worker is up and its first task raises
        frame = pd.read_csv(simulation.data_files[broken])
        frame.drop(columns=["num_medications"]).to_csv(simulation.data_files[broken], index=False)
        config = fed.config("raises", rounds=1, min_hospitals=2, round_timeout=60)
        watcher = CommitWatcher(simulation.store_dir, config.run)
        history = fed.coordinator(config).run()
        failed_state, failed_info = fed.train_state(config.run, 1, broken)
        impostor_fold = fed.task_state(fed.dispatch(config.run, 1)[impostor]["fold"])
    assert failed_state == "FAILURE"
    assert "lacks column(s) num_medications" in str(failed_info)
    stats = fed.manifest(config.run, 0, kind="stats")
    assert stats is not None and sorted(stats.participants) == [h1, h2]
    record = history[0]
    assert sorted(record["participants"]) == [h1, h2]
    assert record["statuses"][broken] == "failed"
    assert "lacks column(s) num_medications" in record["reasons"][broken]  # the reason reaches the history
    assert record["statuses"][impostor] == "late"
    assert record["rejected"] == []
    assert impostor_fold[0] == "SUCCESS" and impostor_fold[1]["status"] == "noise"
    assert impostor_fold[1]["reason"] == "signature"
    assert_run_sound(simulation, config.run, rounds=1, watcher=watcher, expected={1: {h1, h2}})


def test_fault_aggregator_frozen_past_the_deadline_on_time_updates_folded(tmp_path: Path) -> None:
    """Issue 19, defect 2: the aggregator is SIGSTOPped the moment round 1 opens and thawed only after the deadline.
    Every hospital completed its update before the deadline, so lateness (judged on the signed completion time, not on
    when the aggregator gets to the fold) refuses none of them: the coordinator waits for the backlog and the round
    commits with all three."""
    simulation = small_simulation(tmp_path / "sim", hospitals=3, rows=1500)
    with redis_server(tmp_path / "redis") as redis, federation(simulation, redis.url(), tmp_path / "logs") as fed:
        config = fed.config("frozen-aggregator", rounds=1, round_timeout=40)
        watcher, run = fed.start_run(config)
        wait_for(lambda: fed.dispatch(config.run, 1), timeout=240, what="round 1 to open", interval=0.02)
        frozen = freeze(fed.worker("aggregator"))
        spec = fed.store.get_json(f"{config.run}/rounds/1/spec.json")
        wait_for(
            lambda: all(fed.train_state(config.run, 1, h)[0] == "SUCCESS" for h in simulation.hospitals),
            timeout=60,
            what="every hospital's round-1 update",
        )
        completed = [fed.train_state(config.run, 1, h)[1]["completed_at"] for h in simulation.hospitals]
        assert max(completed) < spec["deadline"], "an update was not complete before the deadline"
        assert fed.folded(config.run, 1) == []
        wait_for(lambda: time.time() > spec["deadline"] + 5, timeout=60, what="the deadline to pass")
        assert fed.manifest(config.run, 1) is None, "the round closed while the aggregator was frozen"
        thaw(frozen)
        history = run.result(timeout=300)
    assert sorted(history[0]["participants"]) == sorted(simulation.hospitals)
    assert history[0]["rejected"] == []
    assert_run_sound(simulation, config.run, rounds=1, watcher=watcher, expected={1: set(simulation.hospitals)})

"""A seeded chaos run (issue 19): random faults at random moments against a real federation, checked for soundness.

Real Redis (append-only file on), three hospitals served by 2, 1 and 2 worker processes, the aggregator and the
coordinator CLI (``python -m coordinator run``), quorum 2 of 3, 20 rounds. Once round 1 has committed, faults are
drawn from a ``random.Random(seed)`` one after another, 1-3 s apart (at most ``MAX_FAULTS``): SIGKILL of a
hospital worker's main process (restarted under the same name a moment later, as a service manager with
``Restart=always`` would), SIGKILL of a pool process, SIGKILL of the aggregator (restarted), SIGKILL of the
coordinator (then ``resume``), SIGSTOP of any of these for 5-20 s, and exactly one Redis restart on the same port
and directory; every kind comes once (in a seeded order) before the weighted draws. Faults stop once every kind has
come and the last round has committed, or after ``MAX_FAULTS``; the run must then finish and pass
``assert_run_sound``. Fault counts and the time from each fault to the next commit are printed.
``MEDHEAVEN_CHAOS_SEED`` replays another sequence.
"""

from __future__ import annotations

import json
import os
import random
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fault_support import (
    CommitWatcher,
    Federation,
    RedisServer,
    assert_run_sound,
    environment_without_medheaven,
    family,
    federation,
    freeze,
    kill_family,
    pool_children,
    redis_server,
    signal_processes,
    thaw,
    wait_for,
)
from federation_support import small_simulation

from workers.cluster import WorkerProcess

pytestmark = pytest.mark.slow

SEED = int(os.environ.get("MEDHEAVEN_CHAOS_SEED", "19"))
#: enough rounds for the whole seeded plan (every kind once and a Redis restart) to land inside the run on an idle
#: machine: there a round without faults takes about a second and the plan, with its SIGSTOP and Redis downtime,
#: up to ~45 s (with 4 or 12 rounds the run ended before the plan did); a loaded machine has slower rounds anyway
ROUNDS = 20
#: generous: a round closes as soon as every hospital has answered, and the shared CI machine is often loaded
ROUND_TIMEOUT = 90
#: hospital -> number of worker processes
WORKERS = {0: 2, 1: 1, 2: 2}
#: the whole run (start-up excluded) must finish within this many seconds
RUN_LIMIT = 240.0
#: faults injected at most (the issue's own chaos run: 33 over 8 rounds); bounds the test's wall time
MAX_FAULTS = 12
KINDS = ("kill hospital main", "kill pool process", "kill aggregator", "kill coordinator", "SIGSTOP")
WEIGHTS = (3, 2, 1, 1, 3)


@dataclass
class Fault:
    kind: str
    target: str
    at: float
    detail: str = ""


class CoordinatorCli:
    """The coordinator CLI as a subprocess: started with ``run``, replaced by ``resume`` after it is killed or fails."""

    def __init__(self, fed: Federation, run_id: str, log: Path, layout: Path) -> None:
        self.fed, self.run_id, self.log, self.layout = fed, run_id, log, layout
        self.resumes = 0
        self.exits: list[int] = []
        self.done = False
        self.process = self._start(
            ["run", "--run-id", run_id, "--hospitals", ",".join(fed.simulation.hospitals), "--rounds", str(ROUNDS),
             "--min-hospitals", "2", "--round-timeout", str(ROUND_TIMEOUT), "--hidden", "16",
             "--layout", str(layout)]
        )  # fmt: skip

    def _start(self, args: list[str]) -> subprocess.Popen[bytes]:
        env = {**environment_without_medheaven(), **self.fed.coordinator_env(), "MEDHEAVEN_POLL_INTERVAL": "0.2"}
        with self.log.open("ab") as handle:
            return subprocess.Popen(
                [sys.executable, "-m", "coordinator", *args, "--quiet"],
                env=env,
                stdout=handle,
                stderr=subprocess.STDOUT,
            )

    def resume(self) -> None:
        self.resumes += 1
        self.process = self._start(["resume", "--run-id", self.run_id])

    def finished(self) -> bool:
        """True once a coordinator exited 0; one that exited otherwise (killed, a failed round) is resumed."""
        if self.done:
            return True
        code = self.process.poll()
        if code is None:
            return False
        self.exits.append(code)
        if code == 0:
            self.done = True
            return True
        self.resume()
        return False

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.process.poll() is None:
            self.process.send_signal(sig)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)
            self.process.kill()
            self.process.wait(timeout=30)


class Chaos:
    def __init__(self, fed: Federation, redis: RedisServer, coordinator: CoordinatorCli, rng: random.Random) -> None:
        self.fed, self.redis, self.coordinator, self.rng = fed, redis, coordinator, rng
        self.faults: list[Fault] = []

    def hospital_workers(self) -> list[WorkerProcess]:
        return [w for w in self.fed.cluster.workers if w.name[0] == "h" and w.process.poll() is None]

    def _restart_hospital(self, worker: WorkerProcess) -> None:
        hospital = worker.name.rsplit("-", 1)[0]
        self.fed.cluster.start_hospital(hospital, self.fed.hospital_env(hospital), name=worker.name)

    def inject(self, kind: str) -> None:
        count = len(self.faults)
        self._inject(kind)
        for fault in self.faults[count:]:
            print(f"chaos: {time.strftime('%H:%M:%S', time.localtime(fault.at))} {fault.kind} {fault.target} "
                  f"{fault.detail}", flush=True)  # fmt: skip

    def _inject(self, kind: str) -> None:
        rng, now = self.rng, time.time()
        if kind == "kill hospital main":
            worker = rng.choice(self.hospital_workers())
            pool = pool_children(worker)
            os.kill(worker.process.pid, signal.SIGKILL)  # the pool dies with it (PR_SET_PDEATHSIG)
            worker.process.wait(timeout=30)
            self.faults.append(Fault(kind, worker.name, now))
            time.sleep(rng.uniform(1.0, 3.0))
            for process in pool:
                process.wait(timeout=30)
            self._restart_hospital(worker)
        elif kind == "kill pool process":
            worker = rng.choice(self.hospital_workers())
            children = pool_children(worker)
            signal_processes(children[:1], signal.SIGKILL)
            self.faults.append(Fault(kind, worker.name, now))
        elif kind == "kill aggregator":
            kill_family(self.fed.worker("aggregator"))
            self.faults.append(Fault(kind, "aggregator", now))
            time.sleep(rng.uniform(1.0, 3.0))
            self.fed.start_aggregator()
        elif kind == "kill coordinator":
            self.coordinator.kill()
            self.faults.append(Fault(kind, "coordinator", now))
            time.sleep(rng.uniform(1.0, 3.0))
            self.coordinator.finished()  # sees the SIGKILL exit and resumes
        elif kind == "SIGSTOP":
            seconds = rng.uniform(5.0, 20.0)
            targets: list[tuple[str, Callable[[], list[Any]]]] = [
                *((w.name, lambda w=w: freeze(w)) for w in self.hospital_workers()),
                ("aggregator", lambda: freeze(self.fed.worker("aggregator"))),
                ("coordinator", self._freeze_coordinator),
            ]
            name, stop = rng.choice(targets)
            frozen = stop()
            self.faults.append(Fault(kind, name, now, f"{seconds:.0f}s"))
            time.sleep(seconds)
            thaw(frozen)
        elif kind == "restart redis":
            seconds = rng.uniform(3.0, 8.0)
            self.redis.kill()
            self.faults.append(Fault(kind, "redis", now, f"down {seconds:.0f}s"))
            time.sleep(seconds)
            self.redis.start()

    def _freeze_coordinator(self) -> list[Any]:
        import psutil

        if self.coordinator.process.poll() is not None:
            return []
        processes = [psutil.Process(self.coordinator.process.pid)]
        signal_processes(processes, signal.SIGSTOP)
        return processes


def _commit_times(fed: Federation, run_id: str) -> list[float]:
    times = []
    for round_number in range(1, ROUNDS + 1):
        manifest = fed.manifest(run_id, round_number)
        if manifest is not None:
            times.append(manifest.finalised_at)
    return times


def _given_back(fed: Federation, run_id: str) -> int:
    """Tasks the coordinator gave back to a hospital's queue after their worker was lost (every attempt's dispatch
    record lists them under ``lost``)."""
    root = fed.simulation.store_dir / run_id
    records = [*root.glob("updates/*/a*/dispatch.json"), *root.glob("stats/updates/a*/dispatch.json")]
    return sum(len(entry.get("lost", [])) for path in records for entry in json.loads(path.read_text()).values())


def test_chaos_random_kills_stops_and_a_redis_restart_leave_the_run_sound(tmp_path: Path) -> None:
    rng = random.Random(SEED)
    simulation = small_simulation(tmp_path / "sim", hospitals=3, rows=2400)
    hospitals = simulation.hospitals
    run_id = f"chaos-{SEED}"
    with (
        redis_server(tmp_path / "redis") as redis,
        federation(simulation, redis.url(), tmp_path / "logs", hospitals=()) as fed,
    ):
        for index, count in WORKERS.items():
            for _ in range(count):
                fed.start_hospital(hospitals[index])
        fed.wait_ready()
        watcher = CommitWatcher(simulation.store_dir, run_id)
        coordinator = CoordinatorCli(
            fed, run_id, tmp_path / "coordinator.log", simulation.root / "data" / "layout.json"
        )
        chaos = Chaos(fed, redis, coordinator, rng)
        try:
            # faults start once round 1 has committed: every worker has loaded TensorFlow by then, so the rounds
            # the faults fall in are short and the test's time goes to recovering, not to start-up
            wait_for(lambda: fed.manifest(run_id, 1) or coordinator.process.poll() is not None, timeout=300,
                     what="round 1 to commit", interval=0.05)  # fmt: skip
            started = time.time()
            # every kind once in a seeded order (the one Redis restart among them), then weighted draws
            plan = [*KINDS, "restart redis"]
            rng.shuffle(plan)
            # the plan is finished even if the last round has committed meanwhile (a fast machine): the coordinator
            # is then validating the final model with every hospital, which must survive faults as well
            while (
                (plan or fed.manifest(run_id, ROUNDS) is None)
                and time.time() - started < RUN_LIMIT
                and len(chaos.faults) < MAX_FAULTS
            ):
                time.sleep(rng.uniform(1.0, 3.0))
                if coordinator.finished():
                    break
                chaos.inject(plan.pop(0) if plan else rng.choices(KINDS, WEIGHTS)[0])
            if not any(f.kind == "restart redis" for f in chaos.faults):
                chaos.inject("restart redis")  # the run outpaced the schedule: still one Redis restart
            wait_for(coordinator.finished, timeout=max(60.0, RUN_LIMIT - (time.time() - started)),
                     what="the coordinator to finish the run", interval=0.2)  # fmt: skip
            ended = time.time()
        finally:
            for worker in fed.cluster.workers:
                thaw(family(worker))
            coordinator.stop()
        commits = _commit_times(fed, run_id)
        given_back = _given_back(fed, run_id)
    output = (tmp_path / "coordinator.log").read_text(errors="replace")
    recovery: dict[str, list[float]] = {}
    for fault in chaos.faults:
        later = [t for t in commits if t > fault.at]
        if later:
            recovery.setdefault(fault.kind, []).append(min(later) - fault.at)
    print(f"\nchaos seed {SEED}: {len(chaos.faults)} faults in {ended - started:.0f}s, {ROUNDS} rounds committed")
    for fault in chaos.faults:
        print(f"  +{fault.at - started:6.1f}s  {fault.kind:<20} {fault.target:<12} {fault.detail}")
    for kind, seconds in sorted(recovery.items()):
        print(f"  {kind:<20} x{len(seconds)}  fault to next commit: median {statistics.median(seconds):.1f}s, "
              f"max {max(seconds):.1f}s")  # fmt: skip
    print(f"  coordinator exits {coordinator.exits}, resumes {coordinator.resumes}; tasks given back after a lost "
          f"worker: {given_back}")  # fmt: skip
    assert "Traceback" not in output, output[-3000:]
    assert len(chaos.faults) >= 5, "too few faults were injected for a chaos run"
    assert sum(f.kind == "restart redis" for f in chaos.faults) == 1
    assert_run_sound(simulation, run_id, rounds=ROUNDS, watcher=watcher)

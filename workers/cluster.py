"""Starting a federation's workers: threads in this process (the embedded demo), or real worker processes.

``ThreadCluster`` runs one Celery worker with a thread pool inside the current process (Celery's ``memory://``
transport and ``cache+memory://`` backend; prefork cannot run in-process). ``ProcessCluster`` starts the exact
commands of the runbook (``celery -A workers.hospital worker -Q hospital.<id>`` and ``celery -A workers.aggregator
worker -Q aggregate``) as child processes, each with its own MEDHEAVEN_* environment.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from celery import Celery

from medheaven.errors import ConfigurationError
from workers.config import AGGREGATE_QUEUE, hospital_queue

if TYPE_CHECKING:
    from medheaven.federated.aggregator import AggregatorNode
    from medheaven.federated.hospital import HospitalNode


class ThreadCluster:
    def __init__(
        self,
        app: Celery,
        *,
        hospitals: list[str],
        node_factory: Callable[[str], HospitalNode],
        aggregator: AggregatorNode,
        concurrency: int = 2,
    ) -> None:
        self.app = app
        self.hospitals = hospitals
        self.node_factory = node_factory
        self.aggregator = aggregator
        self.concurrency = concurrency
        self._context: Any = None

    def __enter__(self) -> ThreadCluster:
        from celery.contrib.testing import tasks as _celery_test_tasks  # noqa: F401 (registers celery.ping)
        from celery.contrib.testing.worker import start_worker

        from workers import aggregator as aggregator_tasks
        from workers import hospital as hospital_tasks

        hospital_tasks.use_node_factory(self.node_factory)
        aggregator_tasks.use_node(self.aggregator)
        queues = [AGGREGATE_QUEUE, *(hospital_queue(h) for h in self.hospitals)]
        # Celery's embedded worker: a WorkController on a thread pool in this process, set up the way Celery's own
        # test suite runs one (current app, logging, clean shutdown)
        self._context = start_worker(
            self.app,
            pool="threads",
            concurrency=self.concurrency + 1,
            queues=queues,
            perform_ping_check=False,
            loglevel="WARNING",
            shutdown_timeout=30.0,
        )
        self._context.__enter__()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        from workers import aggregator as aggregator_tasks
        from workers import hospital as hospital_tasks

        try:
            if self._context is not None:
                self._wake_for_shutdown()
                self._context.__exit__(exc_type, exc, tb)
        finally:
            hospital_tasks.use_node_factory(None)
            aggregator_tasks.use_node(None)

    def _wake_for_shutdown(self) -> None:
        """Ask the worker to stop and wake its event loop, so that it stops now.

        The embedded worker runs Celery's blocking loop (``memory://`` has no async support), which waits up to 2 s
        in ``drain_events`` before it looks at the shutdown flag again: the demo spent that, and more under load,
        idle after its last task. Celery's own test ``ping`` task (it returns "pong") on the aggregator's queue is a
        message the loop receives at once. Two of them: the loop sees the flag after one drain, and then drains
        once more (``synloop`` runs its cycle in a ``finally``) before it ends.
        """
        from celery.worker import state

        state.should_terminate = 0  # what Celery's start_worker sets on exit, set before the wake-ups
        for _ in range(2):
            self.app.send_task("celery.ping", queue=AGGREGATE_QUEUE)


@dataclass
class WorkerProcess:
    name: str
    process: subprocess.Popen[bytes]
    log_path: Path


@dataclass
class ProcessCluster:
    """Real worker processes on this machine, started exactly as the runbook starts them."""

    base_env: dict[str, str]
    log_dir: Path
    workers: list[WorkerProcess] = field(default_factory=list)

    def _start(self, name: str, app_module: str, queue: str, env: dict[str, str]) -> WorkerProcess:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"{name}.log"
        # the runbook's command, exec'd by workers.parent_death so that it dies with this process (a killed
        # benchmark or test would otherwise leave its workers taking the next run's tasks)
        command = [
            sys.executable, "-m", "workers.parent_death", str(os.getpid()),
            sys.executable, "-m", "celery", "-A", app_module, "worker",
            "-Q", queue, "-c", "1", "-P", "prefork", "-E", "-l", "INFO",
            "--hostname", f"{name}@%h", "--without-mingle", "--without-gossip",
        ]  # fmt: skip
        full_env = {**os.environ, **self.base_env, **env}
        handle = log_path.open("ab")
        process = subprocess.Popen(command, env=full_env, stdout=handle, stderr=subprocess.STDOUT)
        worker = WorkerProcess(name, process, log_path)
        self.workers.append(worker)
        return worker

    def start_aggregator(self, env: dict[str, str] | None = None, *, name: str = "aggregator") -> WorkerProcess:
        return self._start(name, "workers.aggregator", AGGREGATE_QUEUE, env or {})

    def start_hospital(self, hospital: str, env: dict[str, str], *, name: str | None = None) -> WorkerProcess:
        index = sum(1 for w in self.workers if w.name.startswith(f"{hospital}-"))
        return self._start(name or f"{hospital}-{index}", "workers.hospital", hospital_queue(hospital), env)

    def wait_ready(self, app: Celery, *, timeout: float = 120.0) -> None:
        """Block until every started worker answers a ping (or one of them has exited)."""
        expected = {w.name for w in self.workers if w.process.poll() is None}
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for worker in self.workers:
                if worker.process.poll() is not None and worker.name in expected:
                    raise ConfigurationError(
                        f"worker {worker.name} exited with code {worker.process.returncode}; see {worker.log_path}"
                    )
            replies = app.control.ping(timeout=1.0) or []
            seen = {name.split("@", 1)[0] for reply in replies for name in reply}
            if expected <= seen:
                return
        raise ConfigurationError(f"workers {sorted(expected)} did not all answer within {timeout:.0f}s")

    def kill(self, worker: WorkerProcess, sig: int = signal.SIGKILL) -> None:
        """Kill a worker's whole process group member set: the main process and its pool children."""
        import psutil

        try:
            parent = psutil.Process(worker.process.pid)
            children = parent.children(recursive=True)
        except psutil.NoSuchProcess:
            return
        for proc in [parent, *children]:
            try:
                proc.send_signal(sig)
            except psutil.NoSuchProcess:
                continue
        worker.process.wait(timeout=30)

    def stop(self, *, timeout: float = 20.0) -> None:
        for worker in self.workers:
            if worker.process.poll() is None:
                worker.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for worker in self.workers:
            remaining = max(0.1, deadline - time.monotonic())
            try:
                worker.process.wait(timeout=remaining)
            except subprocess.TimeoutExpired:
                self.kill(worker)

    def __enter__(self) -> ProcessCluster:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

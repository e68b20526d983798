"""Helpers for the fault tests: private Redis servers, a federation on real worker processes, commit snapshots.

Every fault test runs its own ``redis-server`` on a free 127.0.0.1 port (so that no other test's FLUSHDB on the
shared database can touch its queues, and so that it may kill and restart the broker), real Celery worker processes
started by ``workers.cluster.ProcessCluster`` exactly as the runbook starts them, and the real coordinator.

Faults are made deterministic by freezing processes (SIGSTOP/SIGCONT) at points observed in the store or in the
broker, never by racing sleeps against work.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
from celery import Celery
from celery.result import AsyncResult

from coordinator.loop import Coordinator
from coordinator.run import RunConfig, create_run
from coordinator.simulation import Simulation, default_model, simulation_config
from coordinator.transport import CeleryTransport
from medheaven.crypto.codec import load_secret_keys
from medheaven.federated.paths import RunPaths
from medheaven.federated.verify import verify_round
from medheaven.federated.wire import Manifest
from medheaven.settings import Settings
from medheaven.store.audit import check_run, committed_rounds
from medheaven.store.local import LocalStore
from workers.app import create_app
from workers.cluster import ProcessCluster, WorkerProcess

HOST = "127.0.0.1"
#: CKKS error budget of the acceptance criterion: HE FedAvg vs plaintext FedAvg of the manifest's updates
MAX_ABS_ERROR = 1e-6


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def wait_for(predicate: Callable[[], Any], *, timeout: float, what: str, interval: float = 0.1) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# -- a private redis-server ---------------------------------------------------------------------------------
@dataclass
class RedisServer:
    """``redis-server`` on a free 127.0.0.1 port with an append-only file in ``directory``; restartable."""

    directory: Path
    port: int = field(default_factory=free_port)
    extra_args: tuple[str, ...] = ()
    tls: bool = False  # the port is a TLS port (extra_args carry the certificate options)
    password: tuple[str, str] | None = None  # (user, password) for the client helpers
    client_tls: dict[str, Any] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        ports = ["--port", "0", "--tls-port", str(self.port)] if self.tls else ["--port", str(self.port)]
        return [
            "redis-server", *ports, "--bind", HOST, "--dir", str(self.directory),
            "--appendonly", "yes", "--appendfsync", "always", "--save", "",
            "--logfile", str(self.directory / "redis.log"), *self.extra_args,
        ]  # fmt: skip

    def start(self, *, timeout: float = 20.0) -> RedisServer:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(self.command(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        wait_for(self._answers, timeout=timeout, what=f"redis-server on {HOST}:{self.port}")
        return self

    def _answers(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            stderr = self.process.stderr.read().decode() if self.process.stderr else ""
            log = self.directory / "redis.log"
            tail = log.read_text()[-2000:] if log.exists() else ""
            raise AssertionError(f"redis-server exited with {self.process.returncode}: {stderr}{tail}")
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        try:  # no retry: redis-py would otherwise back off for seconds on each refused attempt
            return bool(self.client(socket_timeout=1, retry=Retry(NoBackoff(), 0)).ping())
        except Exception:
            return False

    def client(self, **kwargs: Any) -> Any:
        import redis

        options: dict[str, Any] = {"host": HOST, "port": self.port, "socket_timeout": 5, **kwargs}
        if self.password:
            options["username"], options["password"] = self.password
        if self.tls:
            options.update({"ssl": True, **self.client_tls})
        return redis.Redis(**options)

    def url(self, db: int = 0) -> str:
        scheme = "rediss" if self.tls else "redis"
        auth = f"{self.password[0]}:{self.password[1]}@" if self.password else ""
        return f"{scheme}://{auth}{HOST}:{self.port}/{db}"

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            self.process.wait(timeout=30)

    def restart(self) -> None:
        self.kill()
        self.start()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=15)
        if self.process is not None and self.process.stderr:
            self.process.stderr.close()


@contextmanager
def redis_server(directory: Path, **kwargs: Any) -> Iterator[RedisServer]:
    server = RedisServer(directory, **kwargs).start()
    try:
        yield server
    finally:
        server.stop()


# -- process control -------------------------------------------------------------------------------------------
def family(worker: WorkerProcess) -> list[psutil.Process]:
    """A worker's main process and its pool children (the processes that run tasks)."""
    try:
        parent = psutil.Process(worker.process.pid)
        return [parent, *parent.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def pool_children(worker: WorkerProcess) -> list[psutil.Process]:
    return family(worker)[1:]


def signal_processes(processes: list[psutil.Process], sig: int) -> None:
    for process in processes:
        with suppress(psutil.NoSuchProcess):
            process.send_signal(sig)


def freeze(worker: WorkerProcess) -> list[psutil.Process]:
    """SIGSTOP a worker's whole family; returns the frozen processes so the same set can be thawed."""
    processes = family(worker)
    signal_processes(processes, signal.SIGSTOP)
    return processes


def thaw(processes: list[psutil.Process]) -> None:
    signal_processes(processes, signal.SIGCONT)


def kill_family(worker: WorkerProcess) -> None:
    processes = family(worker)
    signal_processes(processes, signal.SIGKILL)
    worker.process.wait(timeout=30)
    psutil.wait_procs(processes, timeout=30)


# -- broker inspection -----------------------------------------------------------------------------------------
def queued(client: Any, queue: str) -> list[dict[str, Any]]:
    """Messages waiting in ``queue`` (not yet taken by any consumer)."""
    return [json.loads(raw) for raw in client.lrange(queue, 0, -1)]


def unacked(client: Any, queue: str) -> list[dict[str, Any]]:
    """Messages for ``queue`` that a consumer has taken but not acknowledged (kombu's ``unacked`` hash)."""
    found = []
    for raw in client.hvals("unacked"):
        message, _exchange, routing_key = json.loads(raw)
        if routing_key == queue:
            found.append(message)
    return found


def task_names(messages: list[dict[str, Any]]) -> list[str]:
    return [str(m.get("headers", {}).get("task")) for m in messages]


# -- a federation on real processes -----------------------------------------------------------------------------
@dataclass
class Federation:
    simulation: Simulation
    broker_url: str
    cluster: ProcessCluster
    app: Celery
    settings_env: dict[str, str] = field(default_factory=dict)  # extra MEDHEAVEN_* for every process (TLS files)

    @property
    def store(self) -> LocalStore:
        return self.simulation.store()

    def hospital_env(self, hospital: str) -> dict[str, str]:
        return {**self.simulation.hospital_env(hospital, broker_url=self.broker_url), **self.settings_env}

    def aggregator_env(self) -> dict[str, str]:
        return {**self.simulation.aggregator_env(broker_url=self.broker_url), **self.settings_env}

    def coordinator_env(self) -> dict[str, str]:
        """The MEDHEAVEN_* environment of a coordinator subprocess (``python -m coordinator ...``)."""
        return {
            "MEDHEAVEN_BROKER_URL": self.broker_url,
            "MEDHEAVEN_STORE": self.simulation.store_url(),
            **self.settings_env,
        }

    def start_hospital(self, hospital: str, env: dict[str, str] | None = None) -> WorkerProcess:
        return self.cluster.start_hospital(hospital, {**self.hospital_env(hospital), **(env or {})})

    def start_aggregator(self, *, name: str = "aggregator") -> WorkerProcess:
        return self.cluster.start_aggregator(self.aggregator_env(), name=name)

    def worker(self, name: str) -> WorkerProcess:
        alive = [w for w in self.cluster.workers if w.name == name and w.process.poll() is None]
        assert alive, f"no live worker named {name}"
        return alive[-1]

    def wait_ready(self, timeout: float = 180.0) -> None:
        self.cluster.wait_ready(self.app, timeout=timeout)

    def config(self, run: str, **kwargs: Any) -> RunConfig:
        kwargs.setdefault("score_test", False)
        config = simulation_config(self.simulation, run=run, **kwargs)
        create_run(self.store, config, model=small_model(self.simulation), layout=self.simulation.layout)
        return config

    def coordinator(self, config: RunConfig, **kwargs: Any) -> Coordinator:
        kwargs.setdefault("poll_interval", 0.1)
        return Coordinator(self.store, CeleryTransport(self.app), config, **kwargs)

    def start_run(self, config: RunConfig, **kwargs: Any) -> tuple[CommitWatcher, BackgroundRun]:
        """``config``'s coordinator on a thread, and the watcher of its commits (started first, so it sees them all)."""
        watcher = CommitWatcher(self.simulation.store_dir, config.run)
        return watcher, BackgroundRun(self.coordinator(config, **kwargs))

    def task_state(self, task_id: str) -> tuple[str, Any]:
        result = AsyncResult(task_id, app=self.app)
        return str(result.state), result.info

    def dispatch(self, run: str, round_number: int, *, kind: str = "update", attempt: int = 1) -> dict[str, Any]:
        key = RunPaths(run).dispatch(kind, round_number, attempt)
        return dict(self.store.get_json(key)) if self.store.exists(key) else {}

    def ledger(self, run: str, round_number: int, *, kind: str = "update", attempt: int = 1) -> dict[str, Any]:
        key = RunPaths(run).ledger(kind, round_number, attempt)
        return dict(self.store.get_json(key)) if self.store.exists(key) else {"folded": [], "rejected": []}

    def folded(self, run: str, round_number: int, **kwargs: Any) -> list[str]:
        return [str(e["hospital"]) for e in self.ledger(run, round_number, **kwargs)["folded"]]

    def train_state(self, run: str, round_number: int, hospital: str, *, attempt: int = 1) -> tuple[str, Any]:
        ids = self.dispatch(run, round_number, attempt=attempt).get(hospital)
        return self.task_state(ids["task"]) if ids else ("UNSENT", None)

    def manifest(self, run: str, round_number: int, *, kind: str = "update") -> Manifest | None:
        key = RunPaths(run).manifest(kind, round_number)
        return Manifest.from_dict(self.store.get_json(key)) if self.store.exists(key) else None


def small_model(simulation: Simulation) -> Any:
    """A narrower MLP than the default: the fault tests are about the protocol, not accuracy."""
    return default_model(simulation, hidden=(16,))


@contextmanager
def federation(
    simulation: Simulation,
    broker_url: str,
    log_dir: Path,
    *,
    hospitals: tuple[str, ...] | None = None,
    aggregator: bool = True,
    settings_env: dict[str, str] | None = None,
    settings: Settings | None = None,
    ready_timeout: float = 180.0,
) -> Iterator[Federation]:
    """Workers for ``hospitals`` (default: all) and the aggregator, ready to serve; stopped at the end."""
    env = dict(settings_env or {})
    app_settings = settings or Settings(broker_url=broker_url, store=simulation.store_url())
    app = create_app(app_settings, hospitals=list(simulation.hospitals))
    with ProcessCluster(base_env={}, log_dir=log_dir) as cluster:
        fed = Federation(simulation, broker_url, cluster, app, env)
        try:
            if aggregator:
                fed.start_aggregator()
            for hospital in simulation.hospitals if hospitals is None else hospitals:
                fed.start_hospital(hospital)
            fed.wait_ready(ready_timeout)
            yield fed
        finally:
            # thaw anything a failed test left frozen, so that stop() can end it
            for worker in cluster.workers:
                thaw(family(worker))
            app.close()


# -- a coordinator in a thread ---------------------------------------------------------------------------------
class BackgroundRun:
    """``Coordinator.run()`` on a thread, so the test can inject faults while the round loop runs."""

    def __init__(self, coordinator: Coordinator) -> None:
        self.coordinator = coordinator
        self.history: list[dict[str, Any]] | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._main, name="coordinator", daemon=True)
        self.thread.start()

    def _main(self) -> None:
        try:
            self.history = self.coordinator.run()
        except BaseException as exc:
            self.error = exc

    def result(self, timeout: float) -> list[dict[str, Any]]:
        self.thread.join(timeout)
        if self.thread.is_alive():
            raise AssertionError(f"the coordinator did not finish within {timeout:.0f}s")
        if self.error is not None:
            raise self.error
        assert self.history is not None
        return self.history


# -- commit records -------------------------------------------------------------------------------------------
class CommitWatcher:
    """Records the sha256 of each committed file the moment its round's manifest appears.

    A manifest is the commit; the result it names is hashed in the same instant. At the end every recorded digest
    must still match the file (nothing committed was ever overwritten) and the manifest's own ``result_sha256``.
    """

    def __init__(self, store_dir: Path, run: str, *, interval: float = 0.05) -> None:
        self.root = store_dir / run
        self.run = run
        self.interval = interval
        self.snapshots: dict[str, str] = {}  # store key -> sha256 when first seen committed
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="commit-watcher", daemon=True)
        self._thread.start()

    def _candidates(self) -> list[Path]:
        return [*self.root.glob("rounds/*/manifest.json"), *self.root.glob("stats/manifest.json")]

    def snapshot(self) -> None:
        for manifest_path in self._candidates():
            key = manifest_path.relative_to(self.root.parent).as_posix()
            if key in self.snapshots:
                continue
            with suppress(FileNotFoundError, json.JSONDecodeError):
                data = manifest_path.read_bytes()
                manifest = json.loads(data)
                result = self.root.parent / manifest["result_key"]
                self.snapshots[manifest["result_key"]] = sha256_file(result)
                self.snapshots[key] = hashlib.sha256(data).hexdigest()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.snapshot()
            self._stop.wait(self.interval)

    def stop(self) -> dict[str, str]:
        self._stop.set()
        self._thread.join(10)
        self.snapshot()
        return dict(self.snapshots)


def assert_run_sound(
    simulation: Simulation,
    run: str,
    *,
    rounds: int,
    watcher: CommitWatcher | None = None,
    expected: dict[int, set[str]] | None = None,
) -> dict[int, dict[str, Any]]:
    """The acceptance checks for every fault: each committed round equals plaintext FedAvg of exactly its manifest's
    updates (max abs error <= 1e-6, same total sample count), every hospital is folded at most once, nothing committed
    changed since it was committed, and the store audit is all ok. Returns verify_round's report per round."""
    store = simulation.store()
    secret = load_secret_keys(simulation.keys.secret)
    assert committed_rounds(store, run) == list(range(rounds + 1)), f"run {run} did not commit rounds 0..{rounds}"
    reports: dict[int, dict[str, Any]] = {}
    for round_number in range(1, rounds + 1):
        manifest = Manifest.from_dict(store.get_json(RunPaths(run).manifest("update", round_number)))
        participants = list(manifest.participants)
        assert len(participants) == len(set(participants)), f"round {round_number} folded a hospital twice"
        assert len(participants) >= manifest.quorum
        if expected is not None and round_number in expected:
            assert set(participants) == expected[round_number], (round_number, participants)
        for entry in manifest.folded:
            assert entry.key == RunPaths(run).update("update", round_number, manifest.attempt, entry.hospital)
        report = verify_round(store, secret, run, round_number)
        assert report["max_abs_error"] <= MAX_ABS_ERROR, report
        assert report["total_samples_match"], report
        assert sorted(report["hospitals"]) == sorted(participants)
        reports[round_number] = report
    failed = [c.to_dict() for c in check_run(store, run) if not c.ok]
    assert not failed, failed
    if watcher is not None:
        snapshots = watcher.stop()
        expected_keys = {RunPaths(run).manifest("update", r) for r in range(rounds + 1)}
        assert expected_keys <= snapshots.keys(), sorted(expected_keys - snapshots.keys())
        for key, digest in snapshots.items():
            assert sha256_file(simulation.store_dir / key) == digest, f"{key} changed after it was committed"
        for round_number in range(rounds + 1):
            manifest = Manifest.from_dict(store.get_json(RunPaths(run).manifest("update", round_number)))
            assert snapshots[manifest.result_key] == manifest.result_sha256
    return reports


def log_text(worker: WorkerProcess) -> str:
    return worker.log_path.read_text(errors="replace") if worker.log_path.exists() else ""


def environment_without_medheaven() -> dict[str, str]:
    """The test process' environment minus MEDHEAVEN_* (a subprocess gets exactly the variables a test sets)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("MEDHEAVEN_")}

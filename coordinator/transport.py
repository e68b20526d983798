"""How the coordinator talks to workers: Celery signatures carrying ids, references and digests only."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from celery import Celery
from celery.backends.redis import RedisBackend
from celery.exceptions import BackendGetMetaError, BackendStoreError
from celery.result import AsyncResult
from celery.signals import task_postrun
from kombu.exceptions import OperationalError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from coordinator.messaging import TaskState
from medheaven.errors import BrokerUnreachableError
from workers.config import AGGREGATE_QUEUE, hospital_queue
from workers.config import OUTAGE_TOLERANCE as WORKERS_OUTAGE_TOLERANCE
from workers.lease import LEASE_TTL, LeaseState, lease_state, redis_client
from workers.task_state import mark_worker_lost, running_task

log = logging.getLogger(__name__)
T = TypeVar("T")

#: Errors that go away when the broker comes back (a Redis restart, a failover, a dropped connection). Every call
#: the coordinator makes is a publish or a status read, both safe to repeat: task ids are fixed before the first
#: try and tasks are idempotent, so a publish that did reach Redis before the error only delivers the same task twice.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    OperationalError,
    RedisConnectionError,
    RedisTimeoutError,
    ConnectionError,
    TimeoutError,
    # Celery's result backend retries on its own (a few dozen tries, seconds apart) and then wraps the Redis error in
    # these; they mean the same outage and are retried under this policy's longer tolerance (issue 19, defect 1)
    BackendGetMetaError,
    BackendStoreError,
)
#: How long the coordinator keeps retrying through a broker outage before it gives up (and can be resumed): the one
#: tolerance of every MedHeaven process, defined with the workers' retry budgets (``workers.config``).
OUTAGE_TOLERANCE = WORKERS_OUTAGE_TOLERANCE


class CeleryTransport:
    """``coordinator.messaging.Transport`` over Celery: Redis in deployments, ``memory://`` in the embedded demo."""

    def __init__(self, app: Celery, *, outage_tolerance: float = OUTAGE_TOLERANCE) -> None:
        self.app = app
        self.outage_tolerance = outage_tolerance
        # The coordinator has its own outage policy (``_retrying``): Celery's result-backend retry loop would only
        # hide the first ~40 s of an outage behind a traceback per retry on the operator's console and then give up
        # with BackendGetMetaError (issue 19, defect 1). Off in this process only; workers keep it.
        app.conf.result_backend_always_retry = False
        if hasattr(app.backend, "always_retry"):
            app.backend.always_retry = False
        self._down_since: float | None = None  # unix time the current outage began (None: the broker answers)
        # leases are judged only once the broker has answered for a whole lease period: right after an outage (or
        # this process' start) a live worker may not have renewed yet, and would be taken for lost
        self._reachable_since = time.time()

    def _retrying(self, what: str, call: Callable[[], T]) -> T:
        """Run ``call``, retrying transient broker/backend errors with exponential backoff (0.5 s doubling to 5 s).

        The one outage policy of the coordinator: the operator sees one line when the broker becomes unreachable and
        one when it is back (tracebacks only at DEBUG, i.e. under ``--debug``); past ``outage_tolerance`` seconds of
        continuous outage it raises ``BrokerUnreachableError``, which the CLI turns into a clean exit naming the
        resume command. Safe because every call is idempotent (see ``TRANSIENT_ERRORS``).
        """
        delay = 0.5
        while True:
            try:
                result = call()
            except TRANSIENT_ERRORS as exc:
                now = time.time()
                if self._down_since is None:
                    self._down_since = now
                    log.warning(
                        "broker unreachable since %s (%s), retrying for up to %.0fs; resume is safe",
                        time.strftime("%H:%M:%S", time.localtime(now)),
                        type(exc).__name__,
                        self.outage_tolerance,
                    )
                log.debug("%s failed; retrying in %.1fs", what, delay, exc_info=True)
                if now + delay - self._down_since > self.outage_tolerance:
                    since = time.strftime("%H:%M:%S", time.localtime(self._down_since))
                    raise BrokerUnreachableError(
                        f"the broker has been unreachable since {since} ({now - self._down_since:.0f}s, more than "
                        f"the {self.outage_tolerance:.0f}s tolerance; last error while {what}: "
                        f"{type(exc).__name__}: {exc}). Nothing committed is lost: once Redis answers again, resume"
                    ) from exc
                time.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            if self._down_since is not None:
                log.warning("broker reachable again after %.0fs", time.time() - self._down_since)
                self._down_since = None
                self._reachable_since = time.time()
            return result

    def send_hospital_task(
        self, name: str, args: tuple[Any, ...], hospital: str, *, fold: bool, task_id: str | None = None
    ) -> dict[str, str]:
        """Send one task to a hospital's queue; with ``fold``, its receipt goes straight to the aggregator."""
        ids = {"task": task_id or str(uuid.uuid4())}
        where = _where(args)
        options: dict[str, Any] = {
            "queue": hospital_queue(hospital),
            "task_id": ids["task"],
            "shadow": shadow_name(name, hospital, where),
        }
        if fold:
            ids["fold"] = str(uuid.uuid4())
            options["link"] = self.app.signature(
                "medheaven.aggregate.fold",
                queue=AGGREGATE_QUEUE,
                task_id=ids["fold"],
                shadow=shadow_name("fold", hospital, where),
            )
        self._retrying(
            f"sending {name} to {hospital}",
            lambda: self.app.send_task(f"medheaven.hospital.{name}", args=args, **options),
        )
        return ids

    def send_aggregate_task(self, name: str, args: tuple[Any, ...]) -> str:
        task_id = str(uuid.uuid4())
        self._retrying(
            f"sending {name} to the aggregator",
            lambda: self.app.send_task(
                f"medheaven.aggregate.{name}",
                args=args,
                queue=AGGREGATE_QUEUE,
                task_id=task_id,
                shadow=shadow_name(name, "aggregator", _where(args)),
            ),
        )
        return task_id

    def state(self, task_id: str) -> TaskState:
        return self._retrying(f"reading the state of task {task_id}", lambda: self._state(task_id))

    def wait(self, task_ids: Sequence[str], timeout: float) -> None:
        """``Transport.wait``: an event, not a sleep. Over a Redis result backend the coordinator subscribes to the
        channels Celery publishes every stored task state on (``celery-task-meta-<id>``); in the embedded demo the
        workers are threads of this process and wake it through Celery's ``task_postrun`` signal. Any other backend
        (or a broker outage) sleeps for ``timeout``, which is the old polling behaviour."""
        if timeout <= 0:
            return
        backend = self.app.backend
        if isinstance(backend, RedisBackend) and task_ids:
            try:
                self._wait_redis(backend, task_ids, timeout)
            except TRANSIENT_ERRORS:
                log.debug("waiting on result channels failed; sleeping instead", exc_info=True)
                time.sleep(min(timeout, 0.5))
            return
        seen = _IN_PROCESS.generation()
        if any(self._state(task_id).done for task_id in task_ids):  # finished since the caller's read
            return
        _IN_PROCESS.wait_past(seen, timeout)

    def _wait_redis(self, backend: RedisBackend, task_ids: Sequence[str], timeout: float) -> None:
        pubsub = backend.client.pubsub(ignore_subscribe_messages=True)
        try:
            pubsub.subscribe(*(backend.get_key_for_task(task_id) for task_id in task_ids))
            # subscribed first, then checked: a state stored between the caller's read and the subscription would
            # otherwise only be noticed after the timeout
            if any(self._state(task_id).done for task_id in task_ids):
                return
            limit = time.monotonic() + timeout
            while (left := limit - time.monotonic()) > 0:
                if pubsub.get_message(timeout=left) is not None:
                    return
        finally:
            pubsub.close()

    def _state(self, task_id: str) -> TaskState:
        result = AsyncResult(task_id, app=self.app)
        state = str(result.state)
        if state == "FAILURE":
            return TaskState(state, error=f"{type(result.result).__name__}: {result.result}")
        if state == "SUCCESS":
            return TaskState(state, result=result.result)
        return TaskState(state)

    def lost_worker(self, task_id: str) -> str | None:
        """The worker that started ``task_id`` if it has died with it: the task is STARTED (its meta names the
        worker's hostname) and that worker's liveness lease has expired (``workers.lease``). None while the worker
        lives, when the task is not running, or when nothing can be known (no Redis backend, a worker without a
        lease, the broker answering for less than a lease period)."""
        client = redis_client(self.app)
        if client is None or self._down_since is not None or time.time() - self._reachable_since < LEASE_TTL:
            return None

        def read() -> str | None:
            meta = self.app.backend.get_task_meta(task_id)
            info = meta.get("result")
            if meta.get("status") != "STARTED" or not isinstance(info, dict) or not info.get("hostname"):
                return None
            hostname = str(info["hostname"])
            pid = info.get("worker_pid")
            state = lease_state(client, hostname, int(pid) if isinstance(pid, int) else None)
            return hostname if state is LeaseState.EXPIRED else None

        return self._retrying(f"reading the liveness lease of task {task_id}'s worker", read)

    def live_consumers(self, hospital: str) -> int | None:
        """Live workers consuming ``hospital``'s queue, by their own answer to an ``inspect`` broadcast (one second
        for replies): a worker that is dead, frozen or still starting does not answer. None without a Redis backend
        (the in-process demo) or while the broker has answered for less than a lease period (as ``lost_worker``)."""
        if (
            redis_client(self.app) is None
            or self._down_since is not None
            or time.time() - self._reachable_since < LEASE_TTL
        ):
            return None
        queue = hospital_queue(hospital)

        def ask() -> int:
            replies = self.app.control.inspect(timeout=1.0).active_queues() or {}
            return sum(1 for entries in replies.values() if any(q.get("name") == queue for q in entries))

        return self._retrying(f"asking which workers consume {queue}", ask)

    def mark_lost(self, task_id: str, reason: str) -> None:
        """End a task whose worker died in FAILURE with ``WorkerLostError("worker lost: <worker> ...: <reason>")``,
        in the result backend and as a ``task-failed`` event for Flower (``workers.task_state.mark_worker_lost``), so
        that its state says what happened instead of STARTED forever. A task no longer STARTED is left alone; a
        worker that was only frozen and finishes after all overwrites the failure with its own SUCCESS."""

        def mark() -> None:
            task = running_task(self.app, task_id)
            if task is not None:
                mark_worker_lost(self.app, task, reason=reason)

        self._retrying(f"recording task {task_id} as lost", mark)


def shadow_name(task: str, party: str, where: tuple[str, int | None]) -> str:
    """The name Flower and the worker logs show for a task: kind, hospital (or aggregator), round and run, e.g.
    ``train · h3 · round 2 · demo-20261202-0858``. Celery keeps the real task name in the message's ``task`` header
    (routing and the result backend's ``name``); the shadow only relabels it for people."""
    run, round_number = where
    at = f" · round {round_number}" if round_number is not None else ""
    return f"{task} · {party}{at} · {run}"


def _where(args: tuple[Any, ...]) -> tuple[str, int | None]:
    """Run and round of a task from its arguments: a round spec (stats, train) or ``run, ...`` with the round as
    the first integer (init_model: none; validate, evaluate_test: second; finalise: third)."""
    first = args[0] if args else ""
    if isinstance(first, dict):
        return str(first.get("run", "")), int(first["round"]) if "round" in first else None
    rounds = [a for a in args[1:] if isinstance(a, int) and not isinstance(a, bool)]
    return str(first), rounds[0] if rounds else None


class _TaskFinished:
    """Wakes waiting coordinator threads when a task of a worker thread in this process finishes (embedded demo).

    ``task_postrun`` runs after the task's result is stored and its link (the fold) is sent, so whoever wakes reads
    the new state. A generation counter, not a bare event, so that no waiter misses a wake-up or spins on a stale one.
    """

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._generation = 0
        task_postrun.connect(self._finished, weak=False)

    def _finished(self, *args: Any, **kwargs: Any) -> None:
        with self._condition:
            self._generation += 1
            self._condition.notify_all()

    def generation(self) -> int:
        with self._condition:
            return self._generation

    def wait_past(self, seen: int, timeout: float) -> None:
        """Until a task finishes after ``generation()`` returned ``seen``, or ``timeout`` seconds."""
        with self._condition:
            self._condition.wait_for(lambda: self._generation != seen, timeout=timeout)


_IN_PROCESS = _TaskFinished()

"""Liveness leases: each worker's main process renews a short-lived key in Redis, so a worker that died is known
within seconds (issue 19, defect 4).

With late acks, a task whose pool process dies is given back by the worker's main process
(``task_reject_on_worker_lost``). When the main process itself dies (SIGKILL, out of memory, the machine), Celery's
prefork pool children die with it (``PR_SET_PDEATHSIG``), and nothing is left to give the task back: Redis restores
an unacknowledged message only after the visibility timeout (hours). The lease closes that gap: the coordinator sees
a task STARTED on a worker (``hostname`` in the task's STARTED meta) whose lease has expired, and sends the task
again to the hospital's queue (``coordinator.loop``); tasks are idempotent, so a false alarm costs only a
duplicate.

* ``medheaven:lease:<hostname>`` holds the worker's pid with a TTL of ``LEASE_TTL`` seconds, renewed every
  ``RENEW_EVERY`` seconds by a thread of the main process (the main process runs no task code, so the renewal never
  waits for training or encryption to release the GIL). Expiry is judged by Redis' own clock: no clock skew
  between machines enters.
* A worker restarted under the same hostname (a service manager restarts it within a second) renews the same key
  from a new main process: each hospital task therefore adds its worker's main pid to its STARTED meta
  (``announce``), and a lease held by another pid means the worker that ran the task is gone.
* ``medheaven:leased-workers`` is the set of hostnames that hold leases. Only a registered worker whose lease is
  gone counts as lost: a worker without this step (an older version, the in-process demo) is never taken for dead.
  A worker that stops cleanly deregisters (its current task has finished by then or is finished by the warm
  shutdown), so a stopped worker is not mistaken for a lost one either.
"""

from __future__ import annotations

import enum
import logging
import os
import threading
import time
from typing import Any

from celery import bootsteps

log = logging.getLogger(__name__)

#: Seconds a lease lives without renewal: the time it takes to notice a dead worker. Long enough to survive a renewal
#: delayed by a busy machine (five renewals may fail in a row), short against any round timeout.
LEASE_TTL = 10
#: Seconds between renewals.
RENEW_EVERY = 2.0
REGISTRY_KEY = "medheaven:leased-workers"
#: the registry outlives any run; refreshed with every renewal
REGISTRY_TTL = 7 * 24 * 3600


def lease_key(hostname: str) -> str:
    return f"medheaven:lease:{hostname}"


class LeaseState(enum.Enum):
    LIVE = "live"  # the worker renewed its lease within LEASE_TTL seconds
    EXPIRED = "expired"  # the worker holds leases and has stopped renewing: it is lost
    UNKNOWN = "unknown"  # the worker never registered a lease (or stopped cleanly): never taken for lost


def lease_state(client: Any, hostname: str, worker_pid: int | None = None) -> LeaseState:
    """Read ``hostname``'s lease with a Redis client (raises the client's connection errors); with ``worker_pid``
    (the main pid a task announced), a lease renewed by another main process is a restarted worker: EXPIRED."""
    holder = client.get(lease_key(hostname))
    if holder is None:
        return LeaseState.EXPIRED if client.sismember(REGISTRY_KEY, hostname) else LeaseState.UNKNOWN
    if worker_pid is not None and int(holder) != worker_pid:
        return LeaseState.EXPIRED
    return LeaseState.LIVE


#: the pid of the process whose thread renews the lease (set at the step's start; inherited by pool children forked
#: after it, which is how a child tells a thread pool in the main process from a prefork child)
_MAIN_PID: int | None = None


def worker_pid() -> int:
    """The pid of this worker's main process (the lease holder): our own in a thread pool, the parent's in a prefork
    pool child."""
    return os.getpid() if os.getpid() == _MAIN_PID else os.getppid()


def announce(task: Any) -> None:
    """Add the worker's main pid to the task's STARTED meta (Celery's own holds the pool pid and hostname), so the
    coordinator can tell the worker that runs the task from one restarted under the same name."""
    if task.request.called_directly or not task.request.id:
        return
    meta = {"pid": os.getpid(), "hostname": task.request.hostname, "worker_pid": worker_pid()}
    task.update_state(state="STARTED", meta=meta)


def redis_client(app: Any) -> Any | None:
    """The result backend's Redis client, or None when the backend is not Redis (the in-process demo)."""
    from celery.backends.redis import RedisBackend

    backend = app.backend
    return backend.client if isinstance(backend, RedisBackend) else None


class LeaseRenewer:
    """A daemon thread renewing one worker's lease; logs one line when renewals start failing and one when they work
    again (a Redis outage), never one per try."""

    def __init__(self, client: Any, hostname: str, *, ttl: int = LEASE_TTL, every: float = RENEW_EVERY) -> None:
        self.client = client
        self.hostname = hostname
        self.ttl = ttl
        self.every = every
        self._stop = threading.Event()
        self._failing_since: float | None = None
        self._thread = threading.Thread(target=self._loop, name=f"lease {hostname}", daemon=True)

    def start(self) -> None:
        self.renew()
        self._thread.start()

    def renew(self) -> None:
        try:
            with self.client.pipeline() as pipe:
                pipe.set(lease_key(self.hostname), os.getpid(), ex=self.ttl)
                pipe.sadd(REGISTRY_KEY, self.hostname)
                pipe.expire(REGISTRY_KEY, REGISTRY_TTL)
                pipe.execute()
        except Exception as exc:  # any failure: keep trying; the lease expiring is the signal the coordinator reads
            if self._failing_since is None:
                self._failing_since = time.time()
                log.warning(
                    "liveness lease of %s cannot be renewed since %s (%s: %s), retrying every %.0fs; after %ss the "
                    "coordinator gives this worker's task to another worker of its hospital",
                    self.hostname, time.strftime("%H:%M:%S"), type(exc).__name__, exc, self.every, self.ttl,
                )  # fmt: skip
            log.debug("lease renewal failed", exc_info=True)
            return
        if self._failing_since is not None:
            log.warning(
                "liveness lease of %s renewed again after %.0fs", self.hostname, time.time() - self._failing_since
            )
            self._failing_since = None

    def _loop(self) -> None:
        while not self._stop.wait(self.every):
            self.renew()

    def stop(self) -> None:
        """Stop renewing and deregister (a clean stop is not a loss)."""
        self._stop.set()
        self._thread.join(timeout=self.every + 5)
        try:
            with self.client.pipeline() as pipe:
                pipe.srem(REGISTRY_KEY, self.hostname)
                pipe.delete(lease_key(self.hostname))
                pipe.execute()
        except Exception:  # the broker is gone: the lease expires on its own, the registry entry stays (see above)
            log.warning("could not deregister the liveness lease of %s; it expires in %ss", self.hostname, self.ttl)


class WorkerLease(bootsteps.StartStopStep):  # type: ignore[misc]
    """Renews this worker's liveness lease from start to stop (see the module docstring)."""

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.renewer: LeaseRenewer | None = None

    def start(self, worker: Any) -> None:
        global _MAIN_PID
        client = redis_client(worker.app)
        if client is None:
            return
        _MAIN_PID = os.getpid()
        self.renewer = LeaseRenewer(client, str(worker.hostname))
        self.renewer.start()
        log.info("liveness lease of %s renewed every %.0fs (ttl %ss)", worker.hostname, RENEW_EVERY, LEASE_TTL)

    def stop(self, worker: Any) -> None:
        if self.renewer is not None:
            self.renewer.stop()
            self.renewer = None

    shutdown = stop

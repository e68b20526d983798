"""Task states that match what happened to the process running them: lost workers and redeliveries.

Celery records a task's state from inside the worker that runs it, so a worker killed outright (main process and
pool) leaves its task ``STARTED`` in the result backend and in Flower forever; the message itself waits in Redis'
``unacked`` hash until the visibility timeout gives it back (``workers.config``: hours). Only someone outside the
dead worker can say it died. This module is what that someone calls:

* ``running_task(app, task_id)``: the worker hostname and pid a ``STARTED`` task runs on (Celery stores them in the
  STARTED record, ``task_track_started``), or None.
* ``lost_tasks(app, task_ids, live=...)``: those of ``task_ids`` that are ``STARTED`` on a worker not in ``live``
  (``live_workers(app)`` pings; one missed ping is not death, so a detector should pass the workers it has seen
  miss several pings or heartbeats).
* ``mark_worker_lost(app, task, reason=...)``: ends such a task in ``FAILURE`` with a ``WorkerLostError`` naming the
  worker and the reason, in the result backend (the coordinator's ``Transport.state`` then reports the hospital as
  failed, with the reason) and as a ``task-failed`` event from the dead worker's hostname (so Flower shows FAILURE,
  the exception, and one more failure on that worker). A task that already finished is left alone. Call it for a
  task whose message will not run again in this round (its worker is dead and nothing gave the message back); a
  message given back to the queue runs again and its new delivery records its own states.
* ``mark_lost_tasks(app, task_ids, live=..., reason=...)``: both steps in one call, returning what it marked.

Redeliveries are made visible from the other side: ``report_redelivery`` runs inside the task (``workers.guard``
calls it on every delivery after the first) and sends a ``task-redelivered`` event carrying ``retries`` (deliveries
before this one), so Flower's Retries column and task page show that a worker process died holding the task.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from celery import Celery, states
from celery.app.task import Context
from celery.exceptions import WorkerLostError

log = logging.getLogger(__name__)

#: the custom event a redelivered task sends (Flower shows it as state REDELIVERED until the task ends)
REDELIVERED_EVENT = "task-redelivered"
#: how a lost worker's task failure begins, for anyone matching on it (coordinator tables, tests)
WORKER_LOST = "worker lost"


@dataclass(frozen=True)
class RunningTask:
    """A task the result backend records as STARTED, and where Celery says it runs."""

    task_id: str
    worker: str  # Celery hostname, e.g. h2-0@node7
    pid: int | None
    name: str | None  # the real task name (medheaven.hospital.train), when results are extended
    meta: dict[str, Any]  # the stored STARTED record, for rebuilding the failure record around it


def running_task(app: Celery, task_id: str) -> RunningTask | None:
    meta = app.backend.get_task_meta(task_id)
    if meta.get("status") != states.STARTED:
        return None
    info = meta.get("result") if isinstance(meta.get("result"), dict) else {}
    worker = info.get("hostname") or meta.get("worker")
    if not worker:
        return None
    pid = info.get("pid")
    return RunningTask(task_id, str(worker), int(pid) if pid is not None else None, meta.get("name"), dict(meta))


def live_workers(app: Celery, *, timeout: float = 1.0) -> set[str]:
    """Hostnames of the workers that answer a ping within ``timeout`` seconds."""
    replies = app.control.ping(timeout=timeout) or []
    return {name for reply in replies for name in reply}


def lost_tasks(app: Celery, task_ids: list[str], *, live: set[str]) -> list[RunningTask]:
    """The STARTED tasks among ``task_ids`` whose worker is not in ``live``."""
    found = []
    for task_id in task_ids:
        task = running_task(app, task_id)
        if task is not None and task.worker not in live:
            found.append(task)
    return found


def _request_of(task: RunningTask) -> Context:
    """The STARTED record's request fields, so the FAILURE record keeps the task's name, arguments and queue."""
    meta = task.meta
    return Context(
        id=task.task_id,
        task=meta.get("name"),
        args=meta.get("args"),
        kwargs=meta.get("kwargs"),
        hostname=task.worker,
        retries=meta.get("retries") or 0,
        delivery_info={"routing_key": meta.get("queue")},
    )


def mark_worker_lost(app: Celery, task: RunningTask, *, reason: str) -> bool:
    """End ``task`` in FAILURE with ``WorkerLostError('worker lost: <worker> ...: <reason>')``; False (and no
    change) if the backend no longer records it as STARTED, e.g. because it finished or was delivered again."""
    current = app.backend.get_task_meta(task.task_id)
    if current.get("status") != states.STARTED:
        return False
    pid = f" (pid {task.pid})" if task.pid is not None else ""
    error = WorkerLostError(f"{WORKER_LOST}: {task.worker}{pid} died while running this task: {reason}")
    app.backend.mark_as_failure(task.task_id, error, request=_request_of(task), call_errbacks=False)
    # Flower builds its task list from events, not from the backend. The event comes from the dead worker's
    # hostname so that the failure is counted on the worker that lost the task; Flower takes an event as a sign
    # of life, so that worker shows Online again for about two heartbeat intervals (~4 s) before turning Offline.
    with app.events.default_dispatcher(hostname=task.worker) as dispatcher:
        dispatcher.send("task-failed", uuid=task.task_id, exception=repr(error), traceback=None)
    log.warning("marked task %s FAILURE: %s", task.task_id, error)
    return True


def mark_lost_tasks(app: Celery, task_ids: list[str], *, live: set[str], reason: str) -> list[RunningTask]:
    """``lost_tasks`` then ``mark_worker_lost`` for each: the tasks now recorded as FAILURE "worker lost"."""
    return [task for task in lost_tasks(app, task_ids, live=live) if mark_worker_lost(app, task, reason=reason)]


def report_redelivery(task: Any, deliveries: int) -> None:
    """Inside a task on its second or later delivery: say so in the worker log and in Flower.

    ``retries`` is the standard task field Flower shows (column and task page); here it counts the earlier
    deliveries, each of which ended with its worker process gone (late acks and reject-on-worker-lost put the
    message back). ``redelivered`` is kombu's flag on a message restored to its queue."""
    request = task.request
    redelivered = bool((request.delivery_info or {}).get("redelivered"))
    log.warning(
        "task %s[%s] delivered %d times (redelivered flag %s): an earlier delivery's worker process was lost",
        task.name, request.id, deliveries, redelivered,
    )  # fmt: skip
    try:  # no publish retry: the task must not wait out a broker outage (up to ~2 min) for a monitoring event
        task.send_event(
            REDELIVERED_EVENT, retry=False, retries=deliveries - 1, deliveries=deliveries, redelivered=redelivered
        )
    except Exception:  # a monitoring event must never cost the task itself; the log line above stays
        log.exception("could not send the %s event of task %s", REDELIVERED_EVENT, request.id)

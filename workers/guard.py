"""Delivery guard: a task that keeps killing its worker must not be redelivered forever.

With late acks and requeue-on-worker-loss, a task whose input crashes the process (out of memory, a native
library abort) would come back after every crash. Each delivery increments a counter keyed by task id in the
result backend's Redis (or in process memory for the in-process demo); past ``MEDHEAVEN_MAX_DELIVERIES`` the task
fails without running, which is recorded, acknowledged and visible in Flower. Every delivery after the first is
reported (``workers.task_state.report_redelivery``: a log line and Flower's Retries count).
"""

from __future__ import annotations

import threading
from typing import Any

from medheaven.errors import MedHeavenError
from workers.task_state import report_redelivery

_LOCAL_COUNTS: dict[str, int] = {}
_LOCAL_LOCK = threading.Lock()
_COUNTER_TTL = 7 * 24 * 3600


class DeliveryLimitError(MedHeavenError):
    pass


def _redis_backend(task: Any) -> Any | None:
    from celery.backends.redis import RedisBackend

    backend = task.app.backend
    return backend if isinstance(backend, RedisBackend) else None


def _increment(client: Any, key: str) -> int:
    with client.pipeline() as pipe:  # MULTI/EXEC: the count and its expiry together
        pipe.incr(key)
        pipe.expire(key, _COUNTER_TTL)
        return int(pipe.execute()[0])


def count_delivery(task: Any, *, limit: int) -> int:
    """Count this delivery of ``task``; raise ``DeliveryLimitError`` past ``limit``.

    The count is the first thing a task does, so it meets a Redis outage that begins as the task starts: it rides
    the outage out under the workers' publish retry policy (``workers.config``: retries for ``OUTAGE_TOLERANCE``),
    through the result backend's own ``ensure`` (its "Connection to Redis lost" lines collapse into the worker's one
    outage line, ``workers.outage_log``), instead of failing the task. A retried increment whose reply was lost may
    count one delivery twice: the task then reports one redelivery too many, and the limit is met one delivery early.
    """
    task_id = str(task.request.id)
    backend = _redis_backend(task)
    if backend is not None:
        key = f"medheaven:deliveries:{task_id}"
        policy = dict(task.app.conf.task_publish_retry_policy or {})
        count = int(backend.ensure(_increment, (backend.client, key), **policy))
    else:
        with _LOCAL_LOCK:
            count = _LOCAL_COUNTS.get(task_id, 0) + 1
            _LOCAL_COUNTS[task_id] = count
    if count > 1:
        report_redelivery(task, count)
    if count > limit:
        raise DeliveryLimitError(
            f"task {task.name}[{task_id}] was delivered {count} times without finishing (limit {limit}); it is "
            "failed instead of redelivered: check the worker's log for the crash it causes"
        )
    return count

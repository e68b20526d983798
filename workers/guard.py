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


def _redis_client(task: Any) -> Any | None:
    from celery.backends.redis import RedisBackend

    backend = task.app.backend
    return backend.client if isinstance(backend, RedisBackend) else None


def count_delivery(task: Any, *, limit: int) -> int:
    task_id = str(task.request.id)
    client = _redis_client(task)
    if client is not None:
        key = f"medheaven:deliveries:{task_id}"
        count = int(client.incr(key))
        client.expire(key, _COUNTER_TTL)
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

"""The delivery guard (``workers.guard``) on a real, private redis-server: its counter rides out a Redis outage that
begins as a task starts (found by a CI run: a hospital task that started during a Redis restart failed in its
first Redis call, and the round failed with it), and the limit still fails a task delivered too often."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from celery import Celery
from fault_support import redis_server

from workers.config import PUBLISH_RETRY_MAX, PUBLISH_RETRY_START, PUBLISH_RETRY_STEP
from workers.guard import DeliveryLimitError, count_delivery


class _Task:
    """What the guard reads of a bound task: its app (result backend), name and request."""

    name = "medheaven.hospital.train"

    def __init__(self, app: Celery, task_id: str) -> None:
        self.app = app
        self.request = SimpleNamespace(id=task_id, delivery_info={"redelivered": False})
        self.events: list[dict[str, Any]] = []

    def send_event(self, kind: str, **fields: Any) -> None:
        self.events.append({"type": kind, **fields})


def _app(url: str) -> Celery:
    app = Celery("guard-test", broker=url, backend=url)
    app.conf.task_publish_retry_policy = {
        "max_retries": 40,
        "interval_start": PUBLISH_RETRY_START,
        "interval_step": PUBLISH_RETRY_STEP,
        "interval_max": PUBLISH_RETRY_MAX,
    }
    return app


def test_delivery_count_rides_out_a_redis_restart(tmp_path: Path) -> None:
    with redis_server(tmp_path / "redis") as redis:
        app = _app(redis.url())
        task = _Task(app, "task-outage")
        assert count_delivery(task, limit=3) == 1
        redis.kill()
        restarted = threading.Timer(2.0, redis.start)
        restarted.start()
        started = time.monotonic()
        try:
            count = count_delivery(task, limit=3)  # Redis is down when the call begins
        finally:
            restarted.join()
        waited = time.monotonic() - started
        assert waited >= 1.5, f"the count returned after {waited:.1f}s, before Redis was back"
        # the append-only file kept the first count; a retried increment whose reply was lost may add one more
        assert count in (2, 3), count
        assert redis.client().ttl("medheaven:deliveries:task-outage") > 0, "the counter lost its expiry"
        assert task.events and task.events[0]["deliveries"] == count


def test_delivery_limit_fails_the_task_past_it(tmp_path: Path) -> None:
    with redis_server(tmp_path / "redis") as redis:
        task = _Task(_app(redis.url()), "task-limit")
        assert [count_delivery(task, limit=2) for _ in range(2)] == [1, 2]
        with pytest.raises(DeliveryLimitError, match=r"delivered 3 times without finishing \(limit 2\)"):
            count_delivery(task, limit=2)

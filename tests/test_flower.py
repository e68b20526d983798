"""The Flower dashboard (``celery -A workers.dashboard flower``) on real Redis, before any worker exists: the login
guards every page and API, read-only mode refuses controls and task sending, ``/metrics`` is off by default and
behind the login when switched on, and the Broker page lists every declared queue, dead ones included, with what
waits in it and what a vanished consumer still holds. The same dashboard over a real federation, in a browser, is
tests/test_dashboard_browser.py."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from flower_support import USER, flower, http

from medheaven.settings import Settings
from workers.app import create_app
from workers.config import hospital_queue

pytestmark = pytest.mark.slow

WRONG = (USER, "not-the-password")


def _queue_rows(page: str) -> dict[str, list[str]]:
    """The Broker page's table: queue name -> its other cells' text."""
    rows = {}
    for row in re.findall(r"<tr id=[^>]*>(.*?)</tr>", page, flags=re.S):
        cells = [re.sub(r"<[^>]+>", "", cell).strip() for cell in re.findall(r"<td[^>]*>(.*?)</td>", row, flags=re.S)]
        rows[cells[0]] = cells[1:5]
    return rows


def test_flower_login_read_only_metrics_off_and_every_declared_queue(tmp_path: Path, redis_url: str) -> None:
    app = create_app(Settings(broker_url=redis_url), hospitals=["qa", "qb"])
    with app.connection_for_write() as connection:
        for queue in app.conf.task_queues:
            queue(connection.default_channel).declare()
    for _ in range(2):
        app.send_task("medheaven.hospital.train", args=({}, "qa"), queue=hospital_queue("qa"))
    app.send_task("medheaven.hospital.train", args=({}, "qb"), queue=hospital_queue("qb"))
    with (
        flower(redis_url, ("qa", "qb"), tmp_path / "flower.log") as ready,
        app.connection_for_read() as holder,
    ):
        base = ready()
        # a consumer that took qb's message and vanished without acknowledging it (as a killed worker does)
        held = holder.SimpleQueue(hospital_queue("qb"), accept=["msgpack"]).get(timeout=5)
        for path in ("/", "/tasks", "/broker", "/api/tasks", "/api/workers", "/metrics"):
            assert http(f"{base}{path}", auth=None)[0] == 401, path
            assert http(f"{base}{path}", auth=WRONG)[0] == 401, path
        assert http(f"{base}/metrics")[0] == 404
        assert http(f"{base}/healthcheck", auth=None) == (200, "OK")
        # read-only: no pool or consumer control, and the login cannot send tasks (a forged fold, for one)
        for path in ("/api/worker/pool/grow/aggregator@x?n=2", "/api/worker/shutdown/aggregator@x",
                     "/api/task/send-task/medheaven.aggregate.fold", "/api/task/revoke/abc"):  # fmt: skip
            assert http(f"{base}{path}", method="POST")[0] == 403, path
        status, page = http(f"{base}/broker")
        assert status == 200
        # Queue, Messages, Unacked, Ready, Consumers: the dead qb still listed, its held message unacknowledged
        assert _queue_rows(page) == {
            "aggregate": ["0", "0", "0", "0"],
            hospital_queue("qa"): ["2", "0", "2", "0"],
            hospital_queue("qb"): ["1", "1", "0", "0"],
        }, page
        held.ack()


def test_flower_metrics_behind_the_login_when_switched_on(tmp_path: Path, redis_url: str) -> None:
    env = {"MEDHEAVEN_DASHBOARD_METRICS": "true", "FLOWER_READ_ONLY": "false"}
    with flower(redis_url, ("qa",), tmp_path / "flower.log", env=env) as ready:
        base = ready()
        assert http(f"{base}/metrics", auth=None)[0] == 401
        assert http(f"{base}/metrics", auth=WRONG)[0] == 401
        status, body = http(f"{base}/metrics")
        assert status == 200 and "flower_events_total" in body
        # FLOWER_READ_ONLY=false gives the controls back to Flower (the workers still refuse them, workers.readonly)
        assert http(f"{base}/api/worker/pool/grow/nobody@x?n=2", method="POST")[0] == 404


def test_flower_state_of_a_redelivered_task_shows_redelivered_then_retries() -> None:
    """What Flower's event state makes of the events a pool-process crash and its redelivery send: Celery's
    task-rejected (requeue), then our task-redelivered (workers.task_state.report_redelivery), then success."""
    from flower.events import EventsState

    from workers.task_state import REDELIVERED_EVENT

    state = EventsState()
    received = {"name": "train · h1 · round 1 · r", "retries": 0, "args": "()", "kwargs": "{}"}
    events: list[tuple[str, dict[str, object]]] = [
        ("task-received", received), ("task-started", {}), ("task-rejected", {"requeue": True}),
        ("task-received", received), ("task-started", {}),
        (REDELIVERED_EVENT, {"retries": 1, "deliveries": 2, "redelivered": True}),
    ]  # fmt: skip
    for clock, (kind, fields) in enumerate(events, start=1):
        state.event({"type": kind, "uuid": "t1", "hostname": "h1-0@x", "timestamp": 1e9 + clock, "clock": clock,
                     "local_received": 1e9 + clock, **fields})  # fmt: skip
    task = state.tasks["t1"]
    assert (task.state, task.retries) == ("REDELIVERED", 1)
    state.event({"type": "task-succeeded", "uuid": "t1", "hostname": "h1-0@x", "timestamp": 1e9 + 9, "clock": 9,
                 "local_received": 1e9 + 9, "result": "{}", "runtime": 1.0})  # fmt: skip
    assert (task.state, task.as_dict()["retries"]) == ("SUCCESS", 1)

"""A worker's log shows a broker outage as one line when it begins and one when it ends (workers.outage_log).

The records are the ones Celery 5 writes during a Redis outage (logger names and messages as in a real worker log,
issue 19); that a real worker's log reads this way is checked by tests/test_faults_redis.py.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

import pytest

from workers.outage_log import QUIET_RESET, OutageLogFilter


def _record(name: str, msg: str, *args: object, created: float, exc: BaseException | None = None) -> logging.LogRecord:
    exc_info = (type(exc), exc, None) if exc is not None else None
    record = logging.LogRecord(name, logging.ERROR, __file__, 1, msg, args, exc_info)
    record.created = created
    return record


@pytest.fixture
def root_level() -> Iterator[Callable[[int], None]]:
    root = logging.getLogger()
    before = root.level
    yield root.setLevel  # setLevel, not the attribute: it also clears the loggers' isEnabledFor caches
    root.setLevel(before)


def test_outage_log_one_line_when_it_begins_and_one_when_it_ends(root_level: Callable[[int], None]) -> None:
    root_level(logging.INFO)
    log = OutageLogFilter(300.0)
    refused = ConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")
    outage = [
        _record(
            "celery.worker.consumer.consumer",
            "consumer: Connection to broker lost. %s (%r)",
            "Trying",
            refused,
            created=100.0,
        ),
        *(
            _record(
                "celery.worker.consumer.consumer",
                "consumer: Cannot connect to %s: %s.\n%s",
                "redis://x",
                refused,
                "Trying again in 2.00 seconds... (1/None)",
                created=101.0 + i,
            )
            for i in range(5)
        ),
        *(
            _record(
                "celery.backends.base",
                "Failed operation %s. Retrying %s more times.",
                "_store_result",
                39 - i,
                created=102.0 + i,
                exc=refused,
            )
            for i in range(20)
        ),
        _record("celery.bootsteps", "Error on %s %s: %r", "restarting", "Gossip", refused, created=110.0, exc=refused),
    ]
    kept = [r for r in outage if log.filter(r)]
    assert len(kept) == 1
    first = kept[0].getMessage()
    assert first.startswith("broker unreachable since ") and "retrying for up to 300s" in first
    assert kept[0].exc_info is None and kept[0].levelno == logging.WARNING
    unrelated = _record("celery.app.trace", "Task %s succeeded", "x", created=111.0)
    assert log.filter(unrelated) and unrelated.getMessage() == "Task x succeeded"
    back = _record("celery.worker.consumer.connection", "Connected to %s", "redis://x", created=175.0)
    assert log.filter(back)
    assert back.getMessage() == "broker reachable again after 75s (Connected to redis://x)"
    # a later outage gets its own first line; so does one in a process that never saw a reconnection record
    assert log.filter(_record("celery.backends.base", "Failed operation %s.", "_store_result", created=200.0))
    quiet = 200.0 + QUIET_RESET + 1
    assert log.filter(_record("celery.backends.base", "Failed operation %s.", "_store_result", created=quiet))
    assert not log.filter(_record("celery.backends.base", "Failed operation %s.", "_store_result", created=quiet + 1))


def test_outage_log_keeps_everything_under_debug(root_level: Callable[[int], None]) -> None:
    root_level(logging.DEBUG)
    log = OutageLogFilter(300.0)
    records = [
        _record("celery.backends.base", "Failed operation %s.", "_store_result", created=float(i)) for i in range(3)
    ]
    assert all(log.filter(r) for r in records)
    assert records[0].getMessage() == "Failed operation _store_result."

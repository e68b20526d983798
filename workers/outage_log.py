"""One line per state change on a worker's log during a broker outage, instead of Celery's line (and traceback) per
retry (issue 19, defects 1 and 5).

While Redis is down, a worker's consumer logs every reconnection attempt, the result backend logs "Failed operation
_store_result. Retrying N more times." with a full traceback for each of its retries, and Celery's gossip step (on
unless ``--without-gossip``) logs "Error on restarting Gossip" with a traceback. None of it is news after the first
line. ``OutageLogFilter`` sits on the worker's log handlers: the first such record of an outage is rewritten into
"broker unreachable since 12:03:04 (...), retrying for up to 300s; ..." and the rest are dropped; the consumer's
"Connected to redis://..." after an outage becomes "broker reachable again after 75s". Under ``-l DEBUG`` nothing
is rewritten or dropped (the tracebacks are wanted then).

Each process has its own filter state: a pool process that stores a result during the outage prints its own first
line. Pool processes see no reconnection record, so an outage there is taken to be over once no retry was logged
for ``QUIET_RESET`` seconds; the next retry then opens a new outage line.
"""

from __future__ import annotations

import logging
import time

#: (logger name, text in the formatted message) of the records Celery writes at each retry of an outage
RETRY_RECORDS: tuple[tuple[str, str], ...] = (
    ("celery.worker.consumer.consumer", "consumer: Cannot connect to"),
    ("celery.worker.consumer.consumer", "consumer: Connection to broker lost"),
    ("celery.worker.consumer.consumer", "Skipping prefetch count reduction"),
    ("celery.backends.base", "Failed operation"),
    ("celery.backends.redis", "Connection to Redis lost"),
    ("celery.bootsteps", "Error on restarting"),
    ("celery.bootsteps", "Error on stopping"),
    ("kombu.transport.virtual.base", "Restoring"),
    # at every connection loss Celery warns that a future version will cancel running late-ack tasks then; this
    # deployment keeps them running on purpose (worker_cancel_long_running_tasks_on_connection_loss, workers.config)
    ("py.warnings", "In Celery 5.1 we introduced an optional breaking change"),
)
RECOVERY_RECORDS: tuple[tuple[str, str], ...] = (("celery.worker.consumer.connection", "Connected to"),)
#: seconds without a retry record after which a process that saw no reconnection takes the outage to be over
QUIET_RESET = 30.0


def _matches(record: logging.LogRecord, table: tuple[tuple[str, str], ...]) -> bool:
    if not any(record.name == name for name, _ in table):
        return False
    message = record.getMessage()
    return any(record.name == name and text in message for name, text in table)


def _cause(record: logging.LogRecord) -> str:
    """The error behind an outage record: its exception, or the first exception among its arguments."""
    candidates = [record.exc_info[1] if record.exc_info else None, *(record.args or ())]
    for candidate in candidates:
        if isinstance(candidate, BaseException):
            return f"{type(candidate).__name__}: {candidate}"[:200]
    return "connection lost"


class OutageLogFilter(logging.Filter):
    def __init__(self, tolerance: float) -> None:
        super().__init__()
        self.tolerance = tolerance
        self.down_since: float | None = None
        self.last_retry = 0.0

    def filter(self, record: logging.LogRecord) -> bool:
        if logging.getLogger().isEnabledFor(logging.DEBUG):
            return True
        if _matches(record, RETRY_RECORDS):
            now = record.created
            if self.down_since is not None and now - self.last_retry > QUIET_RESET:
                self.down_since = None
            self.last_retry = now
            if self.down_since is not None:
                return False
            self.down_since = now
            what = _cause(record)
            record.msg = (
                "broker unreachable since %s (%s), retrying for up to %.0fs; task messages stay in Redis "
                "(late acks) and results are stored once it is back (see the runbook's troubleshooting)"
            )
            record.args = (time.strftime("%H:%M:%S", time.localtime(now)), what, self.tolerance)
            record.exc_info, record.exc_text, record.stack_info = None, None, None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            return True
        if _matches(record, RECOVERY_RECORDS) and self.down_since is not None:
            original = record.getMessage()
            record.msg = "broker reachable again after %.0fs (%s)"
            record.args = (record.created - self.down_since, original)
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            self.down_since = None
            return True
        return True


def install(tolerance: float) -> None:
    """Put the filter on every handler of the root logger (where Celery's worker sets up its log output)."""
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, OutageLogFilter) for f in handler.filters):
            handler.addFilter(OutageLogFilter(tolerance))

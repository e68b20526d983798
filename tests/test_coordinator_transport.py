"""The coordinator's one outage policy (``CeleryTransport._retrying``), without Redis: Celery's own give-up error
is retried under the documented tolerance, the operator sees one line per state change, and past the tolerance a
``BrokerUnreachableError`` (turned into a clean exit with the resume command by the CLI) is raised."""

from __future__ import annotations

import logging

import pytest
from celery import Celery
from celery.exceptions import BackendGetMetaError

from coordinator.transport import CeleryTransport
from medheaven.errors import BrokerUnreachableError


def _flaky(failures: int) -> tuple[list[int], object]:
    calls: list[int] = []

    def call() -> str:
        calls.append(1)
        if len(calls) <= failures:
            raise BackendGetMetaError("Connection to Redis lost: Retry (40/40) now")
        return "answer"

    return calls, call


def test_retrying_backend_give_up_error_is_transient_and_logged_once_per_state_change(
    caplog: pytest.LogCaptureFixture,
) -> None:
    transport = CeleryTransport(Celery("outage-test"), outage_tolerance=30.0)
    calls, call = _flaky(3)
    with caplog.at_level(logging.DEBUG, logger="coordinator.transport"):
        assert transport._retrying("reading a task state", call) == "answer"  # type: ignore[arg-type]
    assert len(calls) == 4
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2, warnings
    assert "broker unreachable since" in warnings[0] and "resume is safe" in warnings[0]
    assert "reachable again" in warnings[1]
    assert all(r.exc_info is None for r in caplog.records if r.levelno >= logging.INFO), "traceback outside DEBUG"
    assert any(r.exc_info for r in caplog.records if r.levelno == logging.DEBUG), "no traceback for --debug"


def test_retrying_beyond_tolerance_raises_broker_unreachable() -> None:
    transport = CeleryTransport(Celery("outage-test"), outage_tolerance=1.0)
    calls, call = _flaky(10**6)
    with pytest.raises(BrokerUnreachableError, match=r"unreachable since .* more than the 1s tolerance.*resume"):
        transport._retrying("reading a task state", call)  # type: ignore[arg-type]
    assert 1 < len(calls) < 10

"""What the round loop needs from a message transport, with no messaging framework imported.

``Coordinator`` is typed to the ``Transport`` protocol, so the loop can be imported, read and tested without Celery;
``coordinator.transport.CeleryTransport`` is the implementation the commands use.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True)
class TaskState:
    state: str  # PENDING, STARTED, SUCCESS, FAILURE, RETRY, REVOKED (Celery's state names)
    result: Any = None
    error: str | None = None

    @property
    def done(self) -> bool:
        return self.state in {"SUCCESS", "FAILURE", "REVOKED"}


class Transport(Protocol):
    """Sends tasks that carry ids, references and digests only, and reads their states."""

    def send_hospital_task(
        self, name: str, args: tuple[Any, ...], hospital: str, *, fold: bool, task_id: str | None = None
    ) -> dict[str, str]:
        """Send one task to ``hospital``'s queue; with ``fold``, its receipt goes straight on to the aggregator.

        Returns the task ids: ``{"task": ...}``, plus ``"fold"`` for the linked fold task."""
        ...

    def send_aggregate_task(self, name: str, args: tuple[Any, ...]) -> str:
        """Send one task to the aggregator's queue; returns its task id."""
        ...

    def state(self, task_id: str) -> TaskState: ...

    def lost_worker(self, task_id: str) -> str | None:
        """The worker that started ``task_id`` if it is known to have died with it (None: alive or unknown)."""
        ...

    def live_consumers(self, hospital: str) -> int | None:
        """How many live workers consume ``hospital``'s queue now (None: cannot be known, e.g. in-process)."""
        ...

    def mark_lost(self, task_id: str, reason: str) -> None:
        """Record a task whose worker died as ended (FAILURE with ``reason``), instead of running forever."""
        ...

    def wait(self, task_ids: Sequence[str], timeout: float) -> None:
        """Block until one of ``task_ids`` records a new state or ``timeout`` seconds pass, whichever is first.

        A wake-up hint only: the caller re-reads states and the store afterwards, so a spurious or missed wake-up
        costs at most ``timeout`` of latency, never a decision."""
        ...

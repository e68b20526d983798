"""A Transport (``coordinator.messaging.Transport``) that stands in for Celery where only the coordinator's
decisions are under test: it records every task it is asked to send and hands out predictable task ids
(``task-N``, ``fold-N``, ``aggregate-N``, N counting every task sent). By default nothing that was sent ever
finishes (``PENDING``) and no worker is lost; a test subclasses it to say what its tasks do."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from coordinator.messaging import TaskState


class RecordingTransport:
    def __init__(self) -> None:
        self.sent: list[tuple[str, tuple[Any, ...]]] = []

    def send_hospital_task(
        self, name: str, args: tuple[Any, ...], hospital: str, *, fold: bool, task_id: str | None = None
    ) -> dict[str, str]:
        self.sent.append((name, args))
        return {"task": f"task-{len(self.sent)}", "fold": f"fold-{len(self.sent)}"}

    def send_aggregate_task(self, name: str, args: tuple[Any, ...]) -> str:
        self.sent.append((name, args))
        return f"aggregate-{len(self.sent)}"

    def state(self, task_id: str) -> TaskState:
        return TaskState("PENDING")

    def lost_worker(self, task_id: str) -> str | None:
        return None

    def live_consumers(self, hospital: str) -> int | None:
        return None  # nothing can be known: no hospital is ever taken for lost

    def mark_lost(self, task_id: str, reason: str) -> None:
        raise AssertionError(f"no worker is lost in this test, yet task {task_id} was marked lost: {reason}")

    def wait(self, task_ids: Sequence[str], timeout: float) -> None:
        time.sleep(timeout)  # nothing ever finishes here: the coordinator's wait lasts its timeout

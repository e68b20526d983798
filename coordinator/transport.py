"""How the coordinator talks to workers: Celery signatures carrying ids, references and digests only."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from celery import Celery
from celery.result import AsyncResult

from workers.config import AGGREGATE_QUEUE, hospital_queue


@dataclass(frozen=True)
class TaskState:
    state: str  # PENDING, STARTED, SUCCESS, FAILURE, RETRY, REVOKED
    result: Any = None
    error: str | None = None

    @property
    def done(self) -> bool:
        return self.state in {"SUCCESS", "FAILURE", "REVOKED"}


class CeleryTransport:
    def __init__(self, app: Celery) -> None:
        self.app = app

    def send_hospital_task(
        self, name: str, args: tuple[Any, ...], hospital: str, *, fold: bool, task_id: str | None = None
    ) -> dict[str, str]:
        """Send one task to a hospital's queue; with ``fold``, its receipt goes straight to the aggregator."""
        ids = {"task": task_id or str(uuid.uuid4())}
        options: dict[str, Any] = {"queue": hospital_queue(hospital), "task_id": ids["task"]}
        if fold:
            ids["fold"] = str(uuid.uuid4())
            options["link"] = self.app.signature("medheaven.aggregate.fold", queue=AGGREGATE_QUEUE, task_id=ids["fold"])
        self.app.send_task(f"medheaven.hospital.{name}", args=args, **options)
        return ids

    def send_aggregate_task(self, name: str, args: tuple[Any, ...]) -> str:
        task_id = str(uuid.uuid4())
        self.app.send_task(f"medheaven.aggregate.{name}", args=args, queue=AGGREGATE_QUEUE, task_id=task_id)
        return task_id

    def state(self, task_id: str) -> TaskState:
        result = AsyncResult(task_id, app=self.app)
        state = str(result.state)
        if state == "FAILURE":
            return TaskState(state, error=f"{type(result.result).__name__}: {result.result}")
        if state == "SUCCESS":
            return TaskState(state, result=result.result)
        return TaskState(state)

    def revoke(self, task_ids: list[str]) -> None:
        for task_id in task_ids:
            self.app.control.revoke(task_id)

"""Status classification: where each hospital stands in an attempt, read from the facts the coordinator has.

Folded and rejected come from the ledger only (the aggregator writes it after verifying the hospital's signed
receipt and envelope); everything short of that comes from the hospital's task state, its fold's answer, whether
its task was given back after its worker died, and the privacy receipts that left it out of the attempt.
``classify`` decides it as a function of those facts, without Redis, Celery or a store.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from coordinator.messaging import TaskState
from medheaven.federated.ledger import FoldStatus, Ledger
from medheaven.federated.round_policy import Dropout, Verdict, on_time
from medheaven.federated.wire import RoundSpec
from medheaven.privacy.config import BUDGET_MARKER


class HospitalState(StrEnum):
    """Where one hospital stands in an attempt, as the coordinator sees it. The values are what history records,
    failed-attempts records and the report read (``medheaven.report.records.STATES``)."""

    QUEUED = "queued"  # dispatched, not yet picked up by its worker
    TRAINING = "training"  # its task has started
    UPLOADED = "uploaded"  # its task finished; the ledger has not yet said folded or rejected
    FOLDED = "folded"
    REJECTED = "rejected"
    FAILED = "failed"  # its task raised
    BUDGET_SPENT = "budget spent"  # refused to train, or left out of the attempt: its DP budget is spent
    LOST = "worker lost"  # its worker died with the task and no live worker of the hospital is left to take it
    LATE = "late"  # no folded update before the deadline

    @property
    def dropout(self) -> Dropout | None:
        """Why the round policy may count this hospital out of the attempt (``round_policy.decide``'s ``gone``)."""
        return _DROPOUTS.get(self)

    @property
    def unfinished(self) -> bool:
        """Still expected to answer."""
        return self in _UNFINISHED


_UNFINISHED = frozenset({HospitalState.QUEUED, HospitalState.TRAINING, HospitalState.UPLOADED})
_DROPOUTS = {
    HospitalState.FAILED: Dropout.FAILED,
    HospitalState.BUDGET_SPENT: Dropout.BUDGET_SPENT,
    HospitalState.LOST: Dropout.LOST,
}


@dataclass
class HospitalStatus:
    hospital: str
    state: HospitalState = HospitalState.QUEUED
    detail: str = ""


@dataclass
class RoundProgress:
    spec: RoundSpec
    statuses: dict[str, HospitalStatus] = field(default_factory=dict)
    on_time: set[str] = field(default_factory=set)  # uploaded, completed before the deadline, not yet in the ledger
    #: after the wait: the round policy's verdict, and the cohort members it counted out of a masked attempt
    verdict: Verdict = Verdict.WAIT
    dropouts: dict[str, Dropout] = field(default_factory=dict)

    def gone(self) -> dict[str, Dropout]:
        """Hospitals of the attempt known not to answer it, for the round policy."""
        return {
            h: why
            for h, s in self.statuses.items()
            if h in self.spec.hospitals and (why := s.state.dropout) is not None
        }

    def count(self, state: HospitalState) -> int:
        return sum(1 for s in self.statuses.values() if s.state == state)


def classify(
    spec: RoundSpec,
    dispatch: Mapping[str, Any],
    ledger: Ledger,
    *,
    task_state: Callable[[str], TaskState],
    now: float,
    no_live_worker: Callable[[str], bool],
    budget_spent: Mapping[str, str],
) -> RoundProgress:
    """Each hospital's state in ``spec``'s attempt. ``dispatch`` holds each hospital's task ids (``task``, ``fold``,
    and ``lost``: the ids of tasks given back after their worker died); ``task_state`` answers for a task id;
    ``no_live_worker`` says whether a hospital whose task was given back has no live worker left to take it (asked
    only for such a hospital); ``budget_spent`` names the hospitals that cannot afford the round, with why (those
    left out of the attempt when it opened are classified from it).

    A fold task's own result is never trusted to end a hospital's wait (anyone who can publish to the broker can run
    a fold task, or answer under a fold's id): only the ledger says folded or rejected."""
    rejected = {entry.hospital: f"{entry.reason}: {entry.message}" for entry in ledger.rejected}
    progress = RoundProgress(spec)
    for hospital in spec.hospitals:
        status = HospitalStatus(hospital)
        ids = dispatch.get(hospital, {})
        if hospital in ledger.folded_hospitals:
            status.state = HospitalState.FOLDED
        elif hospital in rejected:
            status.state, status.detail = HospitalState.REJECTED, rejected[hospital]
        else:
            task = task_state(ids["task"])
            if task.state == "FAILURE":
                error = task.error or ""
                # a hospital at its DP budget refuses to train: its own state, not a crash; quorum decides
                status.state = HospitalState.BUDGET_SPENT if BUDGET_MARKER in error else HospitalState.FAILED
                status.detail = error
            elif task.state == "SUCCESS":
                status.state = HospitalState.UPLOADED  # until the ledger says folded or rejected
                fold = task_state(ids["fold"])
                outcome = fold.result if fold.state == "SUCCESS" and isinstance(fold.result, dict) else {}
                if outcome.get("status") == FoldStatus.NOISE.value:
                    # the aggregator could not verify it as this hospital's answer: it is not folded, and it is
                    # not waited for past the deadline (a forged result can cost that wait, never a decision)
                    status.detail = f"its update was not accepted as verified ({outcome.get('message', '')})"
                elif _completed_on_time(spec, task.result, now):
                    progress.on_time.add(hospital)
            elif task.state == "STARTED":
                status.state = HospitalState.TRAINING
            elif ids.get("lost") and no_live_worker(hospital):
                status.state = HospitalState.LOST
                status.detail = (
                    f"its worker died with the task ({len(ids['lost'])}x); the task was given back, but no live "
                    "worker consumes its queue"
                )
        progress.statuses[hospital] = status
    for hospital, why in budget_spent.items():
        if hospital not in spec.hospitals:  # left out when the attempt opened (``Coordinator._affordable``)
            progress.statuses[hospital] = HospitalStatus(hospital, HospitalState.BUDGET_SPENT, why)
    return progress


def _completed_on_time(spec: RoundSpec, receipt: Any, now: float) -> bool:
    completed_at = receipt.get("completed_at") if isinstance(receipt, dict) else None
    return isinstance(completed_at, int | float) and on_time(spec, float(completed_at), now)


def awaited(dispatch: Mapping[str, Any], progress: RoundProgress) -> list[str]:
    """The task whose next state would change each unfinished hospital's status: its own task until it has
    answered, then the fold of its receipt."""
    ids: list[str] = []
    for hospital, status in progress.statuses.items():
        sent = dispatch.get(hospital, {})
        if status.state in {HospitalState.QUEUED, HospitalState.TRAINING} and "task" in sent:
            ids.append(sent["task"])
        elif status.state is HospitalState.UPLOADED and "fold" in sent:
            ids.append(sent["fold"])
    return ids


def failure_reasons(progress: RoundProgress) -> dict[str, str]:
    """Why each hospital that was not folded was not: the task's exception type and message, or the aggregator's
    rejection, or the deadline (never a traceback; that stays in the worker's log)."""
    return {
        hospital: status.detail or status.state.value
        for hospital, status in progress.statuses.items()
        if status.state is not HospitalState.FOLDED
    }

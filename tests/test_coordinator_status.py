"""Status classification (``coordinator.status.classify``): how the coordinator reads one hospital's state in an
attempt from the ledger (the only source of folded and rejected), its task's and its fold's states, whether its task
was given back after its worker died, and the privacy receipts, without Redis, Celery or a store.
"""

from __future__ import annotations

from typing import Any

import pytest

from coordinator.messaging import TaskState
from coordinator.status import HospitalState, HospitalStatus, RoundProgress, classify
from medheaven.federated.ledger import EntryStatus, FoldStatus, Ledger, LedgerEntry
from medheaven.federated.wire import RoundSpec
from medheaven.privacy.local import BUDGET_MARKER

NOW, DEADLINE = 1000.0, 1060.0
SPEC = RoundSpec("status", 2, 1, "update", ("h1",), 1, DEADLINE, "ab" * 32, opened_at=NOW - 10)
DISPATCH: dict[str, dict[str, Any]] = {"h1": {"task": "train-h1", "fold": "fold-h1"}}


def _classify(
    ledger: Ledger,
    *,
    no_live_worker: bool = False,
    budget_spent: dict[str, str] | None = None,
    dispatch: dict[str, dict[str, Any]] = DISPATCH,
    **states: TaskState,
) -> RoundProgress:
    """Each task id answers with the state the test gives it (``train_h1`` for ``train-h1``); an id not given is
    PENDING."""
    scripted = {name.replace("_", "-"): state for name, state in states.items()}
    return classify(
        SPEC,
        dispatch,
        ledger,
        task_state=lambda task_id: scripted.get(task_id, TaskState("PENDING")),
        now=NOW,
        no_live_worker=lambda hospital: no_live_worker,
        budget_spent=budget_spent or {},
    )


def _ledger(*entries: LedgerEntry) -> Ledger:
    ledger = Ledger.empty("status", "update", 2, 1)
    for entry in entries:
        ledger = ledger.with_entry(entry)
    return ledger


EMPTY = _ledger()
RECEIPT = {"completed_at": NOW - 1}


def test_status_ledger_decides_folded_and_rejected_whatever_the_tasks_say() -> None:
    folded = _classify(_ledger(LedgerEntry("h1", EntryStatus.FOLDED, at=NOW, key="k")), train_h1=TaskState("FAILURE"))
    assert folded.statuses["h1"].state is HospitalState.FOLDED and folded.on_time == set()
    rejected = _classify(
        _ledger(LedgerEntry("h1", EntryStatus.REJECTED, at=NOW, reason="signature", message="forged")),
        train_h1=TaskState("SUCCESS", RECEIPT),
    )
    assert (rejected.statuses["h1"].state, rejected.statuses["h1"].detail) == (
        HospitalState.REJECTED,
        "signature: forged",
    )


@pytest.mark.parametrize(
    ("task", "state"),
    [
        (TaskState("PENDING"), HospitalState.QUEUED),
        (TaskState("RETRY"), HospitalState.QUEUED),
        (TaskState("STARTED"), HospitalState.TRAINING),
        (TaskState("FAILURE", error="ValueError: boom"), HospitalState.FAILED),
        (TaskState("FAILURE", error=f"PrivacyBudgetError: {BUDGET_MARKER} at round 2"), HospitalState.BUDGET_SPENT),
    ],
    ids=["pending", "retry", "started", "failed", "budget-spent"],
)
def test_status_task_state_before_the_ledger_answers(task: TaskState, state: HospitalState) -> None:
    progress = _classify(EMPTY, train_h1=task)
    assert progress.statuses["h1"].state is state
    assert progress.statuses["h1"].detail == (task.error or "")
    assert progress.on_time == set()


def test_status_uploaded_on_time_counts_for_the_policy_until_the_ledger_answers() -> None:
    progress = _classify(EMPTY, train_h1=TaskState("SUCCESS", RECEIPT))
    assert progress.statuses["h1"].state is HospitalState.UPLOADED and progress.on_time == {"h1"}


@pytest.mark.parametrize(
    "receipt",
    [{"completed_at": DEADLINE + 1}, {"completed_at": NOW + 3600}, {}, "not a receipt"],
    ids=["after-deadline", "clock-in-the-future", "no-completion-time", "not-a-dict"],
)
def test_status_uploaded_but_not_on_time_is_not_waited_for(receipt: object) -> None:
    progress = _classify(EMPTY, train_h1=TaskState("SUCCESS", receipt))
    assert progress.statuses["h1"].state is HospitalState.UPLOADED and progress.on_time == set()


def test_status_fold_result_of_noise_is_never_on_time_and_says_why() -> None:
    noise = {"status": FoldStatus.NOISE.value, "message": "signature does not verify"}
    progress = _classify(EMPTY, train_h1=TaskState("SUCCESS", RECEIPT), fold_h1=TaskState("SUCCESS", noise))
    status = progress.statuses["h1"]
    assert status.state is HospitalState.UPLOADED and progress.on_time == set()
    assert status.detail == "its update was not accepted as verified (signature does not verify)"


def test_status_fold_result_claiming_folded_does_not_end_the_wait() -> None:
    """Anyone who can publish to the broker can answer under a fold's id: only the ledger says folded."""
    claim = {"status": FoldStatus.FOLDED.value}
    progress = _classify(EMPTY, train_h1=TaskState("SUCCESS", RECEIPT), fold_h1=TaskState("SUCCESS", claim))
    assert progress.statuses["h1"].state is HospitalState.UPLOADED and progress.statuses["h1"].state.unfinished


@pytest.mark.parametrize("no_live_worker", [True, False], ids=["no-live-worker", "live-worker"])
def test_status_given_back_task_is_lost_only_without_a_live_worker(no_live_worker: bool) -> None:
    dispatch = {"h1": {"task": "train-h1", "fold": "fold-h1", "lost": ["old-h1"]}}
    status = _classify(EMPTY, no_live_worker=no_live_worker, dispatch=dispatch).statuses["h1"]
    assert status.state is (HospitalState.LOST if no_live_worker else HospitalState.QUEUED)
    assert ("its worker died with the task (1x)" in status.detail) is no_live_worker


def test_status_liveness_is_not_asked_for_a_task_never_given_back() -> None:
    asked: list[str] = []

    def no_live_worker(hospital: str) -> bool:
        asked.append(hospital)
        return True

    progress = classify(
        SPEC,
        DISPATCH,
        EMPTY,
        task_state=lambda task_id: TaskState("PENDING"),
        now=NOW,
        no_live_worker=no_live_worker,
        budget_spent={},
    )
    assert progress.statuses["h1"].state is HospitalState.QUEUED and asked == []


def test_status_hospital_left_out_for_its_budget_is_budget_spent_and_gone_is_only_the_attempts() -> None:
    progress = _classify(EMPTY, budget_spent={"h9": "epsilon 3.1 of 3.0 spent", "h1": "also over"})
    assert progress.statuses["h9"] == HospitalStatus("h9", HospitalState.BUDGET_SPENT, "epsilon 3.1 of 3.0 spent")
    assert progress.statuses["h1"].state is HospitalState.QUEUED  # in the attempt: its own task decides
    assert progress.gone() == {}

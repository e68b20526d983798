"""Status classification: how the coordinator reads one hospital's state in an attempt from the ledger (the only
source of folded and rejected) and its task's state, without Redis or Celery.

The classification is ``Coordinator._statuses`` today (issue 17 asks for it to move out of ``coordinator/loop.py``
into a module of its own); these tests name what it decides, so that move can keep them as they are.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from transport_support import RecordingTransport

from coordinator.loop import Coordinator, HospitalState, RoundProgress
from coordinator.messaging import TaskState
from coordinator.run import RunConfig
from medheaven.federated.ledger import EntryStatus, FoldStatus, Ledger, LedgerEntry
from medheaven.federated.wire import RoundSpec
from medheaven.privacy.local import BUDGET_MARKER
from medheaven.store.local import LocalStore

NOW, DEADLINE = 1000.0, 1060.0
SPEC = RoundSpec("status", 2, 1, "update", ("h1",), 1, DEADLINE, "ab" * 32, opened_at=NOW - 10)
DISPATCH = {"h1": {"task": "train-h1", "fold": "fold-h1"}}


class _ScriptedTransport(RecordingTransport):
    """Each task id answers with the state the test gives it; an id not given is PENDING."""

    def __init__(self, states: dict[str, TaskState]) -> None:
        super().__init__()
        self.states = states

    def state(self, task_id: str) -> TaskState:
        return self.states.get(task_id, TaskState("PENDING"))


def _classify(tmp_path: Path, ledger: Ledger, **states: TaskState) -> RoundProgress:
    transport = _ScriptedTransport({f"{name.replace('_', '-')}": state for name, state in states.items()})
    config = RunConfig(run="status", hospitals=("h1",), rounds=1, min_hospitals=1, round_timeout=60)
    coordinator = Coordinator(LocalStore(tmp_path / "store"), transport, config, clock=lambda: NOW)
    return coordinator._statuses(SPEC, DISPATCH, ledger)


def _ledger(*entries: LedgerEntry) -> Ledger:
    ledger = Ledger.empty("status", "update", 2, 1)
    for entry in entries:
        ledger = ledger.with_entry(entry)
    return ledger


EMPTY = _ledger()
RECEIPT = {"completed_at": NOW - 1}


def test_status_ledger_decides_folded_and_rejected_whatever_the_tasks_say(tmp_path: Path) -> None:
    folded = _classify(
        tmp_path, _ledger(LedgerEntry("h1", EntryStatus.FOLDED, at=NOW, key="k")), train_h1=TaskState("FAILURE")
    )
    assert folded.statuses["h1"].state is HospitalState.FOLDED and folded.on_time == set()
    rejected = _classify(
        tmp_path,
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
def test_status_task_state_before_the_ledger_answers(tmp_path: Path, task: TaskState, state: HospitalState) -> None:
    progress = _classify(tmp_path, EMPTY, train_h1=task)
    assert progress.statuses["h1"].state is state
    assert progress.statuses["h1"].detail == (task.error or "")
    assert progress.on_time == set()


def test_status_uploaded_on_time_counts_for_the_policy_until_the_ledger_answers(tmp_path: Path) -> None:
    progress = _classify(tmp_path, EMPTY, train_h1=TaskState("SUCCESS", RECEIPT))
    assert progress.statuses["h1"].state is HospitalState.UPLOADED and progress.on_time == {"h1"}


@pytest.mark.parametrize(
    "receipt",
    [{"completed_at": DEADLINE + 1}, {"completed_at": NOW + 3600}, {}, "not a receipt"],
    ids=["after-deadline", "clock-in-the-future", "no-completion-time", "not-a-dict"],
)
def test_status_uploaded_but_not_on_time_is_not_waited_for(tmp_path: Path, receipt: object) -> None:
    progress = _classify(tmp_path, EMPTY, train_h1=TaskState("SUCCESS", receipt))
    assert progress.statuses["h1"].state is HospitalState.UPLOADED and progress.on_time == set()


def test_status_fold_result_of_noise_is_never_on_time_and_says_why(tmp_path: Path) -> None:
    noise = {"status": FoldStatus.NOISE.value, "message": "signature does not verify"}
    progress = _classify(tmp_path, EMPTY, train_h1=TaskState("SUCCESS", RECEIPT), fold_h1=TaskState("SUCCESS", noise))
    status = progress.statuses["h1"]
    assert status.state is HospitalState.UPLOADED and progress.on_time == set()
    assert status.detail == "its update was not accepted as verified (signature does not verify)"


def test_status_fold_result_claiming_folded_does_not_end_the_wait(tmp_path: Path) -> None:
    """Anyone who can publish to the broker can answer under a fold's id: only the ledger says folded."""
    claim = {"status": FoldStatus.FOLDED.value}
    progress = _classify(tmp_path, EMPTY, train_h1=TaskState("SUCCESS", RECEIPT), fold_h1=TaskState("SUCCESS", claim))
    assert progress.statuses["h1"].state is HospitalState.UPLOADED and progress.statuses["h1"].state.unfinished

"""The round loop: open, wait for quorum and answers or the deadline, finalise, record. Resumable at any point.

Everything the loop needs to continue lives in the store (run.json, specs, dispatch records, ledgers, manifests),
so a coordinator killed at any moment is replaced by ``medheaven-coordinator resume``: committed rounds are
skipped, an attempt that was in flight is re-attached (its tasks are still queued or running) and finalised at its
deadline, and a failed attempt is followed by a fresh one.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

from coordinator.budget import privacy_receipts
from coordinator.messaging import TaskState, Transport
from coordinator.run import RunConfig
from medheaven.errors import QuorumNotReachedError, RoundError, RunStateError
from medheaven.federated.cohort import earlier_attempts
from medheaven.federated.fedavg import mean_metrics
from medheaven.federated.ledger import AttemptTombstone, FoldStatus, Ledger
from medheaven.federated.paths import RunPaths
from medheaven.federated.phase import Phase
from medheaven.federated.protocol import UPLOAD_GRACE, is_masked, sha256_hex
from medheaven.federated.results import last_committed_round
from medheaven.federated.round_policy import (
    CLOCK_SKEW,
    Dropout,
    Verdict,
    cohort_violations,
    decide,
    on_time,
    safe_cohort,
)
from medheaven.federated.wire import Manifest, RoundSpec, RunDescription
from medheaven.privacy.budget import latest_reports, unaffordable
from medheaven.privacy.local import BUDGET_MARKER
from medheaven.store.base import Store

log = logging.getLogger(__name__)

FINALISE_TIMEOUT = 300.0
#: Seconds an aggregator task (a fold or the finalise) may stay unanswered before the coordinator sends it again.
#: An aggregator killed while holding a message leaves it unacknowledged in Redis until the visibility timeout
#: (hours), and a message that Redis handed to a process which died before reading it is gone. Folding and
#: finalising are idempotent (the ledger folds a hospital at most once per attempt; a committed round stays
#: committed), so sending again is safe and bounds what a crashed aggregator costs to this many seconds.
RESEND_AFTER = 30.0
#: Seconds a failed round keeps polling its unfinished hospitals so that their reasons, too, reach the operator.
REASON_GRACE = 15.0
#: Seconds between two questions whether a hospital whose task was given back after its worker died has any live
#: worker left to take it; with none, the hospital counts as lost for the round policy (``Dropout.LOST``).
LIVENESS_EVERY = 5.0
#: Seconds a hospital must have had no live worker before it counts as lost (a restarted worker is up by then).
NO_WORKER_FOR = 10.0


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


class Observer(Protocol):
    def round_started(self, spec: RoundSpec) -> None: ...
    def round_progress(self, progress: RoundProgress) -> None: ...
    def round_finished(self, record: dict[str, Any]) -> None: ...
    def message(self, text: str) -> None: ...


class LogObserver:
    def round_started(self, spec: RoundSpec) -> None:
        log.info("%s round %s attempt %s opened for %s", spec.kind, spec.round, spec.attempt, ",".join(spec.hospitals))

    def round_progress(self, progress: RoundProgress) -> None:
        return None

    def round_finished(self, record: dict[str, Any]) -> None:
        log.info("round %s: %s", record.get("round"), record.get("status"))

    def message(self, text: str) -> None:
        log.info("%s", text)


class Coordinator:
    #: the hospital task that answers each phase (the layout phase's coordinator answers the statistics otherwise)
    HOSPITAL_TASKS: dict[Phase, str] = {phase: phase.hospital_task for phase in Phase}  # noqa: RUF012 - read-only

    def __init__(
        self,
        store: Store,
        transport: Transport,
        config: RunConfig,
        *,
        poll_interval: float = 0.2,
        observer: Observer | None = None,
        clock: Callable[[], float] = time.time,
        resend_after: float = RESEND_AFTER,
        retry_advice: str | None = None,
    ) -> None:
        self.store = store
        self.transport = transport
        self.config = config
        self.paths = RunPaths(config.run)
        self.poll_interval = poll_interval
        self.observer: Observer = observer or LogObserver()
        self.clock = clock
        self.resend_after = resend_after
        # what a failed round tells the operator to do next; a demo cannot be resumed, so it passes its own
        self.retry_advice = retry_advice or f"run `medheaven-coordinator resume --run-id {config.run}`"
        self._budget_cache: dict[tuple[int, int], dict[str, str]] = {}
        self._rounds_watched: set[int] = set()  # training rounds this process saw to their commit
        self._consumers: dict[str, tuple[float, float | None]] = {}  # hospital -> (asked at, no live worker since)

    # -- store queries -----------------------------------------------------------------------------------
    def manifest(self, kind: Phase, round_number: int) -> Manifest | None:
        key = self.paths.manifest(kind, round_number)
        return Manifest.from_dict(self.store.get_json(key)) if self.store.exists(key) else None

    def last_committed_round(self) -> int:
        return last_committed_round(self.store, self.config.run)

    def _open_spec(self, kind: Phase, round_number: int) -> RoundSpec | None:
        key = self.paths.spec(kind, round_number)
        return RoundSpec.from_dict(self.store.get_json(key)) if self.store.exists(key) else None

    def _failed(self, spec: RoundSpec) -> bool:
        return self.store.exists(self.paths.failure(spec.kind, spec.round, spec.attempt))

    # -- the run -----------------------------------------------------------------------------------------
    def run(self) -> list[dict[str, Any]]:
        """Run (or continue) the whole federation; returns the per-round history."""
        if self.manifest(Phase.STATS, 0) is None:
            self._phase(Phase.STATS, 0, base="")
        if self.manifest(Phase.UPDATE, 0) is None:
            self._initial_model()
        start = self.last_committed_round() + 1
        for round_number in range(start, self.config.rounds + 1):
            base = self.manifest(Phase.UPDATE, round_number - 1)
            assert base is not None
            self._phase(Phase.UPDATE, round_number, base=base.result_sha256)
        self._validate_final()
        if self.config.test_path:
            self._score_test()
        return self.history()

    def _phase(self, kind: Phase, round_number: int, *, base: str) -> Manifest:
        """One round (or the stats phase): re-attach to an in-flight attempt, or open a new one; a masked attempt
        that loses a cohort member is followed by a fresh attempt among the survivors (``_retry``)."""
        spec = self._open_spec(kind, round_number)
        # no dispatch record: the coordinator died between writing the spec and recording its tasks' ids, so the
        # attempt cannot be watched; a fresh attempt is safe (the old one's updates live under another attempt, and
        # it is closed with a tombstone first so that nothing can be folded into it or masked against it)
        if (
            spec is None
            or self._failed(spec)
            or spec.base_sha256 != base
            or not self.store.exists(self.paths.dispatch(kind, round_number, spec.attempt))
        ):
            if spec is not None and not self._failed(spec):
                self._abandon(spec)
            attempt = 1 if spec is None else spec.attempt + 1
            spec = self._open(
                kind, round_number, base, attempt=attempt, hospitals=self._cohort_for(kind, round_number, attempt)
            )
        else:
            self.observer.message(f"re-attaching to {kind} round {round_number} attempt {spec.attempt}")
        while True:
            dispatch = self.store.get_json(self.paths.dispatch(kind, round_number, spec.attempt))
            progress = self._wait(spec, dispatch)
            closed = self._finalise(spec, progress, dispatch)
            if isinstance(closed, Manifest):
                self._record(spec, closed, progress)
                return closed
            spec = self._retry(spec, closed, dispatch, progress, base)

    def _masked(self) -> bool:
        return is_masked(RunDescription.from_dict(self.store.get_json(self.paths.model)))

    def _cohort_for(self, kind: Phase, round_number: int, attempt: int) -> tuple[str, ...]:
        """The hospitals of a new attempt: everyone configured, or, for a masked run with failed attempts in this
        round, the largest set the cohort rule allows (``round_policy.safe_cohort``)."""
        if attempt == 1 or not self._masked():
            return self.config.hospitals
        earlier = earlier_attempts(self.store, self.config.run, kind, round_number, before=attempt)
        cohort, problems = safe_cohort(self.config.hospitals, earlier)
        if problems or len(cohort) < self.config.min_hospitals:
            raise QuorumNotReachedError(
                f"{kind} round {round_number} of run {self.config.run!r} cannot be retried without revealing an "
                f"individual update: {'; '.join(problems) or f'only {len(cohort)} hospitals remain eligible'} "
                f"(quorum {self.config.min_hospitals}). A failed masked attempt whose uploads are in the store may "
                "be unmasked by anyone holding the left-out hospitals' masks, so its hospitals must stay together: "
                "bring the missing hospitals back and resume, or start a new run"
            )
        return cohort

    def _abandon(self, spec: RoundSpec) -> None:
        """Close an attempt that was never watched (no dispatch record) with a tombstone naming its cohort."""
        tombstone = AttemptTombstone(
            run=spec.run,
            kind=spec.kind.value,
            round=spec.round,
            attempt=spec.attempt,
            quorum=spec.quorum,
            reason="abandoned: the coordinator stopped before recording its tasks",
            at=self.clock(),
            missing=spec.hospitals,
            cohort=spec.cohort,
            uploaded=tuple(
                h
                for h in spec.hospitals
                if self.store.exists(self.paths.update(spec.kind, spec.round, spec.attempt, h))
            ),
        )
        self.store.put_json(self.paths.failure(spec.kind, spec.round, spec.attempt), tombstone.to_dict())

    def _retry(
        self,
        spec: RoundSpec,
        tombstone: AttemptTombstone,
        dispatch: dict[str, Any],
        progress: RoundProgress,
        base: str,
    ) -> RoundSpec:
        """A fresh attempt among the survivors of a failed masked attempt.

        Why a fresh attempt and not recovery of the dropped hospital's masks (SecAgg's Shamir shares): the failed
        attempt's sum is never unmasked (it lacks the dropped hospital's masks, and nobody reconstructs them), the
        survivors re-train and re-mask with masks of the new attempt, so no hospital ever hands out a pairwise
        seed or a share of one, and there is no threshold of honest hospitals to configure. The price is one more
        local training per survivor. Dropouts are the members the round policy counted out when it abandoned the
        attempt (failed, refused, lost with their worker, at their privacy budget); otherwise (the attempt closed at
        its deadline) the members that failed or were refused and those still silent; everyone else stays. The
        cohort rule
        (``round_policy.cohort_violations``) forbids leaving out a dropout whose upload of a failed attempt of
        this round is in the store: then the round stops for the operator instead.
        """
        past_deadline = self.clock() >= spec.deadline
        gone = {
            HospitalState.FAILED,
            HospitalState.BUDGET_SPENT,
            HospitalState.REJECTED,
            HospitalState.LOST,
        }
        if past_deadline:
            gone.add(HospitalState.LATE)
        if progress.verdict is Verdict.ABANDON:
            dropouts = [h for h in spec.cohort if h in progress.dropouts and h not in tombstone.folded]
        else:
            dropouts = [h for h in spec.cohort if h not in tombstone.folded and progress.statuses[h].state in gone]
        if not dropouts:  # closed early for no hospital's fault (e.g. the aggregator's clock): everyone again
            dropouts = [h for h in tombstone.missing if progress.statuses[h].state in gone]
        self._settle_dropouts(spec, dropouts, progress)
        earlier = earlier_attempts(self.store, spec.run, spec.kind, spec.round, before=spec.attempt + 1)
        cohort, problems = safe_cohort([h for h in spec.cohort if h not in dropouts], earlier)
        why = "; ".join(problems)
        if not why and not dropouts:
            why = "no hospital could be identified as the one that dropped out"
        elif not why and len(cohort) < spec.quorum:
            why = f"only {len(cohort)} hospitals ({', '.join(cohort) or 'none'}) are left, quorum {spec.quorum}"
        if why:
            raise QuorumNotReachedError(
                f"{spec.kind} round {spec.round} of run {spec.run!r} attempt {spec.attempt} lost cohort members "
                f"({', '.join(dropouts) or 'none identified'}) and no fresh attempt can follow: {why}. The previous "
                f"global model is untouched; fix the failing hospitals and {self.retry_advice}"
            )
        self.observer.message(
            f"{spec.kind} round {spec.round} attempt {spec.attempt} closed without {', '.join(dropouts)} (its masked "
            f"sum is never unmasked); attempt {spec.attempt + 1} re-trains with fresh masks among {', '.join(cohort)}"
        )
        return self._open(spec.kind, spec.round, base, attempt=spec.attempt + 1, hospitals=cohort)

    def _settle_dropouts(self, spec: RoundSpec, dropouts: list[str], progress: RoundProgress) -> None:
        """Before judging whether a dropout uploaded: its task may still be running. Hospitals refuse to upload into
        a masked attempt past its deadline or once it has a tombstone, and an upload that passed that check lands
        within ``UPLOAD_GRACE`` (one store write in flight), so the store's uploads of the attempt are final after
        deadline + clock skew + ``UPLOAD_GRACE``, or, for an abandoned attempt, ``UPLOAD_GRACE`` after its tombstone
        (which exists now). A dropout whose task ended with an error or whose answer was refused does not upload
        any more: no wait for it. One lost with its worker might (a frozen, not dead, worker that wakes up)."""
        ended = {HospitalState.FAILED, HospitalState.BUDGET_SPENT, HospitalState.REJECTED}
        unsure = [h for h in dropouts if progress.statuses[h].state not in ended]
        if not unsure:
            return
        until = spec.deadline + CLOCK_SKEW + UPLOAD_GRACE
        if progress.verdict is Verdict.ABANDON:
            until = min(until, self.clock() + UPLOAD_GRACE)
        while self.clock() < until:
            time.sleep(self.poll_interval)

    def _open(
        self, kind: Phase, round_number: int, base: str, *, attempt: int, hospitals: tuple[str, ...]
    ) -> RoundSpec:
        hospitals = self._affordable(kind, round_number, attempt, hospitals)
        now = self.clock()
        spec = RoundSpec(
            run=self.config.run,
            round=round_number,
            attempt=attempt,
            kind=kind,
            hospitals=hospitals,
            quorum=self.config.min_hospitals,
            deadline=now + self.config.round_timeout,
            base_sha256=base,
            training=self.config.training,
            opened_at=now,
            cohort=hospitals if self._masked() else (),
        )
        self.store.put_json(self.paths.spec(kind, round_number), spec.to_dict())
        task = self.HOSPITAL_TASKS[kind]
        dispatch = {
            hospital: self.transport.send_hospital_task(task, (spec.to_dict(), hospital), hospital, fold=True)
            for hospital in spec.hospitals
        }
        self.store.put_json(self.paths.dispatch(kind, round_number, attempt), dispatch)
        self.observer.round_started(spec)
        return spec

    def _affordable(self, kind: Phase, round_number: int, attempt: int, hospitals: tuple[str, ...]) -> tuple[str, ...]:
        """``hospitals`` less those whose signed receipts say they cannot afford this round's DP-SGD
        (``privacy.budget``): an attempt that one of them would refuse is bound to fail, and under masks its
        survivors' re-training would be charged to their budgets twice. The reduced cohort still has to meet the
        quorum and, for a fresh attempt, the cohort rule; otherwise the round stops here for the operator."""
        spent = self._budget_spent(kind, round_number, attempt)
        kept = tuple(h for h in hospitals if h not in spent)
        if len(kept) == len(hospitals):
            return kept
        problems: tuple[str, ...] = ()
        if attempt > 1 and self._masked():
            problems = cohort_violations(
                kept, earlier_attempts(self.store, self.config.run, kind, round_number, before=attempt)
            )
        left_out = "; ".join(f"{h}: {spent[h]}" for h in hospitals if h in spent)
        if problems or len(kept) < self.config.min_hospitals:
            why = "; ".join(problems) or f"only {len(kept)} hospitals ({', '.join(kept) or 'none'}) can afford it"
            raise QuorumNotReachedError(
                f"{kind} round {round_number} of run {self.config.run!r} cannot be opened: {why} (quorum "
                f"{self.config.min_hospitals}). {left_out}. The previous global model is untouched; the run's "
                "privacy budget is used up for these hospitals (a new run with a larger --dp-epsilon, or fewer "
                "rounds, plans another budget)"
            )
        self.observer.message(f"{kind} round {round_number} attempt {attempt} leaves out {left_out}")
        return kept

    def _budget_spent(self, kind: Phase, round_number: int, attempt: int) -> dict[str, str]:
        """Hospitals that cannot afford ``round_number``'s DP-SGD, with why; the same answer on every call for an
        attempt (it reads only receipts of earlier attempts), so a resumed coordinator shows the same table."""
        dp = self.config.training.dp
        if dp is None or not kind.trains:
            return {}
        key = (round_number, attempt)
        if key not in self._budget_cache:
            receipts = privacy_receipts(self.store, self.paths, round_number, attempt)
            spent = unaffordable(latest_reports(receipts, wanted=self.config.hospitals), dp)
            self._budget_cache[key] = {h: report.describe(dp) for h, report in spent.items()}
        return self._budget_cache[key]

    def _ledger(self, spec: RoundSpec) -> Ledger:
        key = self.paths.ledger(spec.kind, spec.round, spec.attempt)
        if not self.store.exists(key):
            return Ledger.empty(spec.run, spec.kind, spec.round, spec.attempt)
        return Ledger.from_dict(self.store.get_json(key))

    def _statuses(self, spec: RoundSpec, dispatch: dict[str, Any], ledger: Ledger) -> RoundProgress:
        """Folded and rejected come from the ledger only: the aggregator writes it after verifying the hospital's
        signed receipt and envelope. A fold task's own result is never trusted to end a hospital's wait (anyone who
        can publish to the broker can run a fold task, or answer under a fold's id)."""
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
                task: TaskState = self.transport.state(ids["task"])
                if task.state == "FAILURE":
                    error = task.error or ""
                    # a hospital at its DP budget refuses to train: its own state, not a crash; quorum decides
                    status.state = HospitalState.BUDGET_SPENT if BUDGET_MARKER in error else HospitalState.FAILED
                    status.detail = error
                elif task.state == "SUCCESS":
                    status.state = HospitalState.UPLOADED  # until the ledger says folded or rejected
                    fold = self.transport.state(ids["fold"])
                    outcome = fold.result if fold.state == "SUCCESS" and isinstance(fold.result, dict) else {}
                    if outcome.get("status") == FoldStatus.NOISE.value:
                        # the aggregator could not verify it as this hospital's answer: it is not folded, and it is
                        # not waited for past the deadline (a forged result can cost that wait, never a decision)
                        status.detail = f"its update was not accepted as verified ({outcome.get('message', '')})"
                    elif self._completed_on_time(spec, task.result):
                        progress.on_time.add(hospital)
                elif task.state == "STARTED":
                    status.state = HospitalState.TRAINING
                elif ids.get("lost") and self._no_live_worker(hospital):
                    status.state = HospitalState.LOST
                    status.detail = (
                        f"its worker died with the task ({len(ids['lost'])}x); the task was given back, but no live "
                        "worker consumes its queue"
                    )
            progress.statuses[hospital] = status
        for hospital, why in self._budget_spent(spec.kind, spec.round, spec.attempt).items():
            if hospital not in spec.hospitals:  # left out when the attempt opened (``_affordable``)
                progress.statuses[hospital] = HospitalStatus(hospital, HospitalState.BUDGET_SPENT, why)
        return progress

    def _completed_on_time(self, spec: RoundSpec, receipt: Any) -> bool:
        completed_at = receipt.get("completed_at") if isinstance(receipt, dict) else None
        return isinstance(completed_at, int | float) and on_time(spec, float(completed_at), self.clock())

    def _wait(self, spec: RoundSpec, dispatch: dict[str, Any]) -> RoundProgress:
        """Poll until the round policy (``round_policy.decide``) says commit or fail."""
        uploaded_since: dict[str, float] = {}
        while True:
            ledger = self._ledger(spec)
            progress = self._statuses(spec, dispatch, ledger)
            self._resend_unanswered_folds(spec, dispatch, progress, uploaded_since)
            self._give_back_lost_tasks(spec, dispatch, progress)
            self.observer.round_progress(progress)
            decision = decide(spec, ledger, self.clock(), on_time_pending=progress.on_time, gone=progress.gone())
            if decision.verdict is Verdict.WAIT:
                self._pause(_awaited(dispatch, progress), until=spec.deadline)
                continue
            progress.verdict, progress.dropouts = decision.verdict, dict(decision.dropouts)
            if self.clock() >= spec.deadline:
                for status in progress.statuses.values():
                    if status.state.unfinished:
                        status.state, status.detail = HospitalState.LATE, "no folded update before the deadline"
            log.info("%s round %s attempt %s: %s", spec.kind, spec.round, spec.attempt, decision.reason)
            return progress

    def _pause(self, task_ids: list[str], *, until: float) -> None:
        """Wait for the next event instead of sleeping: until one of ``task_ids`` records a state (the transport
        wakes us), ``until`` (a deadline the caller acts on) or ``poll_interval`` passes. ``poll_interval`` is only
        the safety net for what no task announces (a ledger entry of a fold sent before a resend)."""
        self.transport.wait(task_ids, max(0.0, min(self.poll_interval, until - self.clock())))

    def _resend_unanswered_folds(
        self, spec: RoundSpec, dispatch: dict[str, Any], progress: RoundProgress, since: dict[str, float]
    ) -> None:
        """Send a receipt to the aggregator again when its fold has not answered for ``resend_after`` seconds (see
        RESEND_AFTER); the receipt is the hospital task's result, still in the result backend."""
        now = self.clock()
        for hospital, status in progress.statuses.items():
            if status.state is not HospitalState.UPLOADED:
                since.pop(hospital, None)
                continue
            if now - since.setdefault(hospital, now) < self.resend_after:
                continue
            receipt = self.transport.state(dispatch[hospital]["task"]).result
            dispatch[hospital] = {**dispatch[hospital], "fold": self.transport.send_aggregate_task("fold", (receipt,))}
            self.store.put_json(self.paths.dispatch(spec.kind, spec.round, spec.attempt), dispatch)
            since[hospital] = now
            self.observer.message(
                f"{hospital}'s update for {spec.kind} round {spec.round} was not folded within "
                f"{self.resend_after:.0f}s of its upload: sent its receipt to the aggregator again"
            )

    def _give_back_lost_tasks(self, spec: RoundSpec, dispatch: dict[str, Any], progress: RoundProgress) -> None:
        """Send a hospital's task again to its queue when the worker running it died (its liveness lease expired,
        ``workers.lease``), so that another worker of that hospital does the work in this round instead of the round
        waiting for Redis' visibility timeout (hours). The new task is recorded before the old one is marked lost
        (FAILURE, ``WorkerLostError``), so a coordinator killed in between only sends it once more on resume. A false
        alarm (a frozen, not dead, worker) costs a duplicate: updates are create-only per attempt and each hospital is
        folded at most once."""
        task_name = self.HOSPITAL_TASKS[spec.kind]
        for hospital, status in progress.statuses.items():
            if status.state is not HospitalState.TRAINING:
                continue
            old = dispatch[hospital]
            worker = self.transport.lost_worker(old["task"])
            if worker is None:
                continue
            new = self.transport.send_hospital_task(task_name, (spec.to_dict(), hospital), hospital, fold=True)
            dispatch[hospital] = {**new, "lost": [*old.get("lost", []), old["task"]]}
            self.store.put_json(self.paths.dispatch(spec.kind, spec.round, spec.attempt), dispatch)
            self.transport.mark_lost(
                old["task"],
                f"its liveness lease expired; the coordinator gave {hospital}'s {task_name} task for {spec.kind} "
                f"round {spec.round} back to {hospital}'s queue as task {new['task']}",
            )
            status.state, status.detail = HospitalState.QUEUED, f"worker {worker} lost; task given back to its queue"
            self.observer.message(
                f"{hospital}'s worker {worker} was lost while running its {task_name} task for {spec.kind} round "
                f"{spec.round}: gave the task back to {hospital}'s queue"
            )

    def _no_live_worker(self, hospital: str) -> bool:
        """Whether ``hospital`` has had no live worker to take a given-back task for ``NO_WORKER_FOR`` seconds
        (asked at most every ``LIVENESS_EVERY`` seconds: an inspect broadcast waits a second for replies), so that
        a worker a service manager is restarting has time to come up. Unknown counts as alive."""
        now = self.clock()
        asked_at, none_since = self._consumers.get(hospital, (-math.inf, None))
        if now - asked_at >= LIVENESS_EVERY:
            consumers = self.transport.live_consumers(hospital)
            none_since = (none_since if none_since is not None else now) if consumers == 0 else None
            self._consumers[hospital] = (now, none_since)
        return none_since is not None and now - none_since >= NO_WORKER_FOR

    def _settled(self, spec: RoundSpec, dispatch: dict[str, Any]) -> RoundProgress:
        """The round's statuses once its unfinished hospitals have finished or REASON_GRACE has passed: a round
        fails as soon as its quorum is out of reach, and the reasons of hospitals still running then are wanted."""
        limit = min(self.clock() + REASON_GRACE, max(spec.deadline, self.clock()))
        while True:
            progress = self._statuses(spec, dispatch, self._ledger(spec))
            unfinished = any(s.state.unfinished for s in progress.statuses.values())
            if not unfinished or self.clock() >= limit:
                return progress
            self._pause(_awaited(dispatch, progress), until=limit)

    def _finalise(
        self, spec: RoundSpec, progress: RoundProgress | None = None, dispatch: dict[str, Any] | None = None
    ) -> Manifest | AttemptTombstone:
        """The commit (the manifest), or the tombstone of a masked attempt that may be retried among its
        survivors; any other failure raises ``QuorumNotReachedError`` with each hospital's reason."""
        args: tuple[Any, ...] = (spec.run, spec.kind.value, spec.round, spec.attempt)
        if progress is not None and progress.dropouts:  # the aggregator's policy names them in the tombstone
            args = (*args, {h: why.value for h, why in progress.dropouts.items()})
        task_id = self.transport.send_aggregate_task("finalise", args)
        sent_at = self.clock()
        limit = self.clock() + FINALISE_TIMEOUT
        while self.clock() < limit:
            manifest = self.manifest(spec.kind, spec.round)
            if manifest is not None and manifest.attempt == spec.attempt:
                return manifest
            if self._failed(spec):
                failure = self.store.get_json(self.paths.failure(spec.kind, spec.round, spec.attempt))
                refused = "; ".join(f"{r['hospital']}: {r.get('reason', '?')}" for r in failure.get("rejected", []))
                if dispatch is not None:
                    verdict, dropouts = (progress.verdict, progress.dropouts) if progress else (Verdict.FAIL, {})
                    progress = self._settled(spec, dispatch)
                    progress.verdict, progress.dropouts = verdict, dropouts
                reasons = failure_reasons(progress) if progress is not None else {}
                self._record_failure(spec, failure, progress, reasons)
                tombstone = AttemptTombstone.from_dict(failure)
                if spec.cohort and len(tombstone.folded) >= spec.quorum:
                    return tombstone  # enough survivors for a fresh attempt: ``_retry`` decides
                why = "".join(f"\n  {hospital}: {reason}" for hospital, reason in reasons.items())
                raise QuorumNotReachedError(
                    f"{spec.kind} round {spec.round} of run {spec.run!r} failed: {len(failure['folded'])} of "
                    f"{len(spec.hospitals)} hospitals folded ({', '.join(failure['folded']) or 'none'}), quorum "
                    f"{spec.quorum}; refused: {refused or 'none'}; no answer: "
                    f"{', '.join(failure.get('missing', [])) or 'none'}.{why}\nThe previous global model is untouched; fix the failing hospitals and "
                    f"{self.retry_advice}"
                )
            state = self.transport.state(task_id)
            # a missed quorum also ends the task in FAILURE, after the failure record: the next pass reports it
            if state.state == "FAILURE" and not self._failed(spec):
                raise RoundError(f"finalising {spec.kind} round {spec.round} failed on the aggregator: {state.error}")
            if self.clock() - sent_at >= self.resend_after:  # idempotent; see RESEND_AFTER
                task_id, sent_at = self.transport.send_aggregate_task("finalise", args), self.clock()
                self.observer.message(f"finalise of {spec.kind} round {spec.round} unanswered: sent it again")
            self._pause([task_id], until=min(limit, sent_at + self.resend_after))
        raise RoundError(
            f"the aggregator did not finalise {spec.kind} round {spec.round} within {FINALISE_TIMEOUT:.0f}s: "
            "is an aggregator worker consuming the 'aggregate' queue?"
        )

    def _initial_model(self) -> None:
        holder = self.config.key_holder
        ids = self.transport.send_hospital_task("init_model", (self.config.run, holder), holder, fold=False)
        result = self._await_task(ids["task"], f"initial model from {holder!r}", self.config.round_timeout)
        data = self.store.get(self.paths.global_model(0))
        if sha256_hex(data) != result["sha256"]:
            raise RoundError("round 0 model in the store does not match what the key holder reported; retry")
        now = self.clock()
        manifest = Manifest(
            run=self.config.run,
            round=0,
            attempt=1,
            kind=Phase.UPDATE,
            base_sha256="",
            result_key=self.paths.global_model(0),
            result_sha256=result["sha256"],
            result_size=len(data),
            selected=(holder,),
            folded=(),
            rejected=(),
            quorum=0,
            opened_at=now,
            deadline=now,
            finalised_at=now,
        )
        self.store.create_json(self.paths.manifest(Phase.UPDATE, 0), manifest.to_dict())

    def _await_task(self, task_id: str, what: str, timeout: float) -> dict[str, Any]:
        limit = self.clock() + timeout
        while self.clock() < limit:
            state = self.transport.state(task_id)
            if state.state == "SUCCESS":
                return dict(state.result)
            if state.state == "FAILURE":
                raise RoundError(f"{what} failed: {state.error}")
            self._pause([task_id], until=limit)
        raise RoundError(f"{what} did not finish within {timeout:.0f}s: is that hospital's worker running?")

    def _validate_final(self) -> None:
        """Every hospital scores the last global model on its validation patients (the rounds' own records only
        cover the models they started from); the result completes the curve that model selection reads."""
        last = self.last_committed_round()
        if self.store.exists(self.paths.final_validation) or last < 1:
            return
        skipped = self.unreachable(last)
        for hospital, why in skipped.items():
            self.observer.message(f"final validation skips {hospital}: {why}")
        sent = {
            hospital: self.transport.send_hospital_task(
                "validate", (self.config.run, last, hospital), hospital, fold=False
            )
            for hospital in self.config.hospitals
            if hospital not in skipped
        }
        per_hospital: dict[str, dict[str, float]] = {}
        deadline = self.clock() + self.config.round_timeout
        pending = dict(sent)
        while pending and self.clock() < deadline:
            for hospital, ids in list(pending.items()):
                state = self.transport.state(ids["task"])
                if state.done:
                    if state.state == "SUCCESS":
                        per_hospital[hospital] = dict(state.result["metrics"])
                    del pending[hospital]
                elif (worker := self.transport.lost_worker(ids["task"])) is not None:
                    skipped[hospital] = f"{HospitalState.LOST}: worker {worker} died while validating"
                    self.observer.message(f"final validation skips {hospital}: {skipped[hospital]}")
                    del pending[hospital]
            if pending:
                self._pause([ids["task"] for ids in pending.values()], until=deadline)
        record = {
            "round": last,
            "metrics": per_hospital,
            "weighted": mean_metrics(per_hospital),
            "missing": sorted(pending),
            "skipped": dict(sorted(skipped.items())),  # known lost or silent: not waited for
        }
        self.store.put_json(self.paths.final_validation, record)
        self.observer.message(f"final model (round {last}) validated by {len(per_hospital)} hospitals")

    def unreachable(self, round_number: int) -> dict[str, str]:
        """Hospitals the attempts of training round ``round_number`` saw lost with their worker or silent to the
        deadline (their latest state over that round's attempts), with that state: a phase after the rounds (the
        final validation, the test scoring) does not wait a whole timeout for a hospital known gone. Only for a
        round this process watched: a coordinator resumed later asks everyone again (the hospital may be back)."""
        if round_number not in self._rounds_watched:
            return {}
        records = [r for r in self.failed_attempts() if r["kind"] == Phase.UPDATE and r["round"] == round_number]
        records.sort(key=lambda r: int(r["attempt"]))
        records += [r for r in self.history() if int(r["round"]) == round_number]
        latest: dict[str, tuple[str, str]] = {}
        for record in records:
            reasons = dict(record.get("reasons", {}))
            for hospital, state in dict(record.get("statuses", {})).items():
                latest[hospital] = (str(state), str(reasons.get(hospital, "")))
        gone = {HospitalState.LOST.value, HospitalState.LATE.value}
        return {
            h: f"{state} in round {round_number}" + (f" ({why})" if why and why != state else "")
            for h, (state, why) in latest.items()
            if state in gone
        }

    def selected_round(self) -> tuple[int, float]:
        """The committed round whose global model had the best mean validation ROC-AUC (federated early
        stopping: hospitals' validation metrics only, never the held-out test set)."""
        candidates = [(int(r["evaluated_round"]), float(r["weighted"]["roc_auc"])) for r in self.history()]
        if self.store.exists(self.paths.final_validation):
            final = self.store.get_json(self.paths.final_validation)
            candidates.append((int(final["round"]), float(final["weighted"]["roc_auc"])))
        scored = [(r, auc) for r, auc in candidates if r >= 1 and math.isfinite(auc)]  # not NaN, not untrained round 0
        if not scored:
            return self.last_committed_round(), float("nan")
        return max(scored, key=lambda item: (item[1], item[0]))

    def _score_test(self) -> None:
        holder = self.config.key_holder
        if (why := self.unreachable(self.last_committed_round()).get(holder)) is not None:
            self.observer.message(
                f"held-out test not scored: the key holder {holder!r} is {why}; once {holder} is back, "
                f"`medheaven-coordinator resume --run-id {self.config.run}` scores it"
            )
            return
        last, validation_auc = self.selected_round()
        args = (self.config.run, last, holder)  # the hospital reads test_path from the run config
        ids = self.transport.send_hospital_task("evaluate_test", args, holder, fold=False)
        record = self._await_task(ids["task"], f"test scoring by {holder!r}", self.config.round_timeout)
        record = {
            **record,
            "selected_by": "best mean validation ROC-AUC over hospitals",
            "validation_roc_auc": validation_auc,
        }
        self.store.put_json(self.paths.test_scores(), record)
        metrics = record["metrics"]
        self.observer.message(
            f"held-out test of round {last} (best validation ROC-AUC {validation_auc:.3f}): "
            f"ROC-AUC {metrics['roc_auc']:.3f}, PR-AUC {metrics['pr_auc']:.3f}"
        )

    # -- records -----------------------------------------------------------------------------------------
    def _record(self, spec: RoundSpec, manifest: Manifest, progress: RoundProgress) -> None:
        reasons = failure_reasons(progress)
        if not spec.kind.trains:
            missing = "".join(f"; not folded: {h} ({why})" for h, why in reasons.items())
            self.observer.message(
                f"federated standardisation statistics from {', '.join(manifest.participants)}{missing}"
            )
            return
        self._rounds_watched.add(spec.round)
        record = round_record(manifest)
        record["statuses"] = {h: s.state.value for h, s in progress.statuses.items()}
        record["reasons"] = reasons
        history = self.history()
        history = [r for r in history if r["round"] != spec.round] + [record]
        self.store.put_json(self.paths.history, sorted(history, key=lambda r: int(r["round"])))
        self.observer.round_finished(record)

    def _record_failure(
        self, spec: RoundSpec, failure: dict[str, Any], progress: RoundProgress | None, reasons: dict[str, str]
    ) -> None:
        """Keep why an attempt failed where ``status`` and ``--json`` read it, not only in the workers' logs."""
        record = {
            "kind": spec.kind.value,
            "round": spec.round,
            "attempt": spec.attempt,
            "status": "failed",
            "quorum": spec.quorum,
            "folded": list(failure.get("folded", [])),
            "statuses": {h: s.state.value for h, s in progress.statuses.items()} if progress is not None else {},
            "reasons": reasons,
            "at": self.clock(),
        }
        earlier = self.failed_attempts()
        kept = [r for r in earlier if (r["kind"], r["round"], r["attempt"]) != (spec.kind, spec.round, spec.attempt)]
        self.store.put_json(self.paths.failed_attempts, [*kept, record])

    def failed_attempts(self) -> list[dict[str, Any]]:
        if not self.store.exists(self.paths.failed_attempts):
            return []
        return list(self.store.get_json(self.paths.failed_attempts))

    def history(self) -> list[dict[str, Any]]:
        if not self.store.exists(self.paths.history):
            return []
        return list(self.store.get_json(self.paths.history))


def _awaited(dispatch: dict[str, Any], progress: RoundProgress) -> list[str]:
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


def round_record(manifest: Manifest) -> dict[str, Any]:
    """Per-round metrics: the incoming model's validation metrics per hospital and their mean over hospitals."""
    per_hospital = {e.hospital: dict(e.metrics) for e in manifest.folded}
    mean = mean_metrics(per_hospital)
    phases: dict[str, float] = {}
    for entry in manifest.folded:
        for phase, seconds in entry.timings.items():
            phases[phase] = max(phases.get(phase, 0.0), seconds)
    return {
        "round": manifest.round,
        "attempt": manifest.attempt,
        "status": "committed",
        "participants": list(manifest.participants),
        "rejected": [r.to_dict() for r in manifest.rejected],
        "evaluated_round": manifest.round - 1,
        "metrics": per_hospital,
        "weighted": mean,
        # spent (ε, δ) per hospital under DP-SGD, as each hospital signed it in its receipt; absent without DP
        "privacy": {e.hospital: dict(e.privacy) for e in manifest.folded if e.privacy},
        "seconds": manifest.finalised_at - manifest.opened_at,
        "phases_max": phases,
        "bytes_up": sum(e.size for e in manifest.folded),
        "global_bytes": manifest.result_size,
    }


def require_run_config(store: Store, run: str) -> RunConfig:
    key = RunPaths(run).config
    if not store.exists(key):
        raise RunStateError(
            f"run {run!r} does not exist in {store.location}: start it with `medheaven-coordinator run`"
        )
    return RunConfig.from_dict(store.get_json(key))

"""The one round policy: when an attempt commits, fails or keeps waiting, and when an answer is late.

Pure functions of the round's spec, its ledger (verified answers only, see ``ledger.py``) and a clock reading, so
the coordinator's wait loop and the aggregator's finalise cannot disagree about a round, and the policy is unit
tested without Redis.

Lateness is judged on when the hospital's update was *complete* (the completion time inside its signed receipt),
not on when the aggregator gets round to folding it: an aggregator backlog (frozen, restarting, busy with a large
model) never turns on-time work into late work. While an on-time update is uploaded but not yet folded, the round
waits for it past the deadline, for at most ``BACKLOG_GRACE`` seconds.

Masked attempts (``spec.cohort`` non-empty, the pairwise-masked scheme): the masks of an attempt cancel only in the
sum over its *whole* cohort, so an attempt commits only when every cohort member is folded, and fails as soon as one
of them cannot be (refused, crashed, or silent at the deadline). A dropout is recovered by a **fresh attempt among the
survivors**, never by completing or re-using the failed attempt; ``cohort_violations`` is the rule that keeps that
recovery from revealing the dropped hospital's update (the argument is in docs/architecture.md,
"Dropouts"). The quorum still bounds how small a cohort may become.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum

from medheaven.federated.ledger import Ledger
from medheaven.federated.wire import RoundSpec

#: Seconds a completion time may lie ahead of the judge's clock (hospital and aggregator clocks are NTP-synced,
#: not identical); a receipt dated further into the future is refused rather than trusted.
CLOCK_SKEW = 5.0
#: Seconds past the deadline the coordinator keeps waiting for updates that were complete before the deadline but
#: are not folded yet (an aggregator frozen, restarted or behind). Beyond it the round closes without them, so a dead
#: aggregator still ends the round; ``RESEND_AFTER`` in the coordinator re-sends their receipts meanwhile.
BACKLOG_GRACE = 120.0


class Verdict(Enum):
    COMMIT = "commit"
    FAIL = "fail"
    WAIT = "wait"


@dataclass(frozen=True)
class Decision:
    verdict: Verdict
    reason: str
    folded: tuple[str, ...]
    outstanding: tuple[str, ...]  # selected hospitals with no verified answer yet


def decide(
    spec: RoundSpec,
    ledger: Ledger,
    now: float,
    *,
    on_time_pending: Iterable[str] = (),
    closing: bool = False,
) -> Decision:
    """Commit, fail or wait.

    ``on_time_pending``: hospitals whose update is known to have been complete before the deadline but is not in the
    ledger yet (the coordinator sees their receipts). ``closing``: the caller closes the attempt now (the
    aggregator's finalise), so the answer is never ``WAIT``.
    """
    folded = tuple(h for h in spec.hospitals if h in ledger.folded_hospitals)
    outstanding = tuple(h for h in spec.hospitals if h not in ledger.answered)
    if spec.cohort:
        return _decide_masked(spec, ledger, now, folded, outstanding, on_time_pending, closing=closing)
    quorum_met = len(folded) >= spec.quorum

    def closed(why: str) -> Decision:
        if quorum_met:
            return Decision(Verdict.COMMIT, f"{why}; {len(folded)} folded, quorum {spec.quorum}", folded, outstanding)
        return Decision(Verdict.FAIL, f"{why}; only {len(folded)} folded, quorum is {spec.quorum}", folded, outstanding)

    if not outstanding:
        return closed("every selected hospital has answered")
    if len(folded) + len(outstanding) < spec.quorum:
        why = f"quorum {spec.quorum} can no longer be reached: {len(folded)} folded, {len(outstanding)} outstanding"
        return Decision(Verdict.FAIL, why, folded, outstanding)
    wait = None if closing else _wait_reason(spec, outstanding, now, on_time_pending)
    if wait is not None:
        return Decision(Verdict.WAIT, wait, folded, outstanding)
    return closed("the attempt is being closed" if closing else "the deadline has passed")


def _wait_reason(
    spec: RoundSpec, outstanding: tuple[str, ...], now: float, on_time_pending: Iterable[str]
) -> str | None:
    """Why the attempt keeps waiting for its outstanding hospitals, or None once it must close."""
    if now < spec.deadline:
        return f"waiting for {', '.join(outstanding)} until the deadline"
    backlog = tuple(h for h in outstanding if h in set(on_time_pending))
    if backlog and now < spec.deadline + BACKLOG_GRACE:
        return f"past the deadline, waiting for the aggregator to fold on-time updates of {', '.join(backlog)}"
    return None


def _decide_masked(
    spec: RoundSpec,
    ledger: Ledger,
    now: float,
    folded: tuple[str, ...],
    outstanding: tuple[str, ...],
    on_time_pending: Iterable[str],
    *,
    closing: bool,
) -> Decision:
    """A masked attempt is all or nothing: its sum means something only with every cohort member's masks in it."""
    missing = tuple(h for h in spec.cohort if h not in ledger.folded_hospitals)
    refused = tuple(h for h in missing if h in ledger.rejected_hospitals)
    if not missing and len(folded) >= spec.quorum:
        why = f"every cohort member folded ({len(folded)} hospitals, quorum {spec.quorum})"
        return Decision(Verdict.COMMIT, why, folded, outstanding)
    if not missing:  # a cohort smaller than the quorum is never opened
        why = f"the whole cohort of {len(folded)} folded, but the quorum is {spec.quorum}"
        return Decision(Verdict.FAIL, why, folded, outstanding)
    wait = None if closing or refused else _wait_reason(spec, outstanding, now, on_time_pending)
    if wait is not None:
        return Decision(Verdict.WAIT, wait, folded, outstanding)
    why = (
        f"cohort incomplete: {', '.join(refused)} refused, so this masked attempt's sum can never be unmasked"
        if refused
        else f"cohort incomplete: no folded update from {', '.join(outstanding)}"
    )
    return Decision(Verdict.FAIL, why, folded, outstanding)


@dataclass(frozen=True)
class EarlierAttempt:
    """A closed (failed) attempt of the same round, as far as the cohort rule needs it."""

    attempt: int
    cohort: tuple[str, ...]
    uploaded: frozenset[str]  # hospitals with an upload of that attempt in the store now, whatever its fate


def cohort_violations(cohort: Iterable[str], earlier: Iterable[EarlierAttempt]) -> tuple[str, ...]:
    """Why a masked attempt over ``cohort`` would let a key holder read an individual update; empty when safe.

    The rule: for every earlier failed attempt ``a`` of the round in which anybody uploaded, ``uploaded(a) <= cohort
    <= cohort(a)``. Why: the sum of a failed attempt is unmasked exactly by the sum over all its cohort's uploads, and
    a coalition holding the masks of the members that did not upload can strip those (docs/architecture.md,
    "Dropouts"). So any attempt with uploads may be *as good as committed* for somebody. Its sum differs from a later
    committed sum (over the same, deterministically re-trained updates) by the updates of the hospitals in one
    cohort and not the other: leaving out a hospital that uploaded in ``a``, or adding one that was not in ``a``,
    could isolate one hospital's update. Leaving out a hospital that never uploaded in ``a`` is safe: its peers'
    masks with it never cancel, so ``a``'s sum stays masked for everybody who does not hold its agreement key.
    """
    members = set(cohort)
    problems: list[str] = []
    for past in earlier:
        if not past.uploaded:
            continue  # nobody uploaded: the attempt reveals nothing, whatever follows
        added = sorted(members - set(past.cohort))
        if added:
            problems.append(f"{', '.join(added)} not in the cohort of failed attempt {past.attempt}")
        dropped = sorted(past.uploaded - members)
        if dropped:
            problems.append(f"{', '.join(dropped)} uploaded in failed attempt {past.attempt} but would be left out")
    return tuple(problems)


def safe_cohort(
    candidates: Iterable[str], earlier: Iterable[EarlierAttempt]
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The largest cohort among ``candidates`` (kept in their order) that ``cohort_violations`` accepts, with the
    violations that remain if none is (a hospital that uploaded earlier but is no longer a candidate)."""
    past = tuple(earlier)
    cohort = list(candidates)
    for attempt in past:
        if attempt.uploaded:
            cohort = [h for h in cohort if h in attempt.cohort]
    return tuple(cohort), cohort_violations(cohort, past)


def lateness(spec: RoundSpec, completed_at: float, now: float) -> str | None:
    """Why an update completed at ``completed_at`` (the hospital's signed time) is not on time, or None if it is."""
    if completed_at > now + CLOCK_SKEW:
        return (
            f"its completion time lies {completed_at - now:.1f}s in the future of the aggregator's clock "
            f"(more than the {CLOCK_SKEW:.0f}s allowed clock skew): check the hospital's clock (NTP)"
        )
    if completed_at > spec.deadline:
        return (
            f"it was completed {completed_at - spec.deadline:.1f}s after the deadline of {spec.kind} round {spec.round}"
        )
    return None


def on_time(spec: RoundSpec, completed_at: float, now: float) -> bool:
    return lateness(spec, completed_at, now) is None

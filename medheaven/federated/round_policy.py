"""The one round policy: when an attempt commits, fails or keeps waiting, and when an answer is late.

Pure functions of the round's spec, its ledger (verified answers only, see ``ledger.py``) and a clock reading, so
the coordinator's wait loop and the aggregator's finalise cannot disagree about a round, and the policy is unit
tested without Redis.

Lateness is judged on when the hospital's update was *complete* (the completion time inside its signed receipt),
not on when the aggregator gets round to folding it: an aggregator backlog (frozen, restarting, busy with a large
model) never turns on-time work into late work. While an on-time update is uploaded but not yet folded, the round
waits for it past the deadline, for at most ``BACKLOG_GRACE`` seconds.

Masked attempts (``spec.cohort`` non-empty, the pairwise-masked scheme): the masks of an attempt cancel only in the
sum over its *whole* cohort, so an attempt commits only when every cohort member is folded. It is **abandoned** the
moment that is known to be impossible and nothing else is pending: a member refused by the aggregator, or one the
caller knows gone (``Dropout``: its task failed, its worker died with it, it refused at its privacy budget) while
every other member has answered. It **fails** at the deadline when a member is still silent. A dropout is recovered
by a **fresh attempt among the survivors**, never by completing or re-using the failed attempt; ``cohort_violations`` is the rule that keeps that
recovery from revealing the dropped hospital's update (the argument is in docs/architecture.md,
"Dropouts"). The quorum still bounds how small a cohort may become.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
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
    #: masked only: the attempt can never commit (a cohort member is known gone) and nobody else is pending, so it is
    #: closed now, before its deadline, and the caller opens a fresh attempt among the survivors
    ABANDON = "abandon"

    @property
    def closes(self) -> bool:
        """The attempt is closed without a commit (a tombstone follows)."""
        return self in {Verdict.FAIL, Verdict.ABANDON}


class Dropout(Enum):
    """Why a hospital is known not to answer an attempt, as its caller sees it (the values are the wire strings the
    coordinator sends with a finalise, and what the tombstone's reason names)."""

    REFUSED = "refused"  # the aggregator verified its answer and refused it (the ledger says so)
    FAILED = "failed"  # its task ended with an error
    LOST = "worker lost"  # its worker's liveness lease expired while it ran the task
    BUDGET_SPENT = "budget spent"  # it refused to train: one more round would exceed its privacy budget


@dataclass(frozen=True)
class Decision:
    verdict: Verdict
    reason: str
    folded: tuple[str, ...]
    outstanding: tuple[str, ...]  # selected hospitals with no verified answer yet
    #: cohort members that make a masked attempt impossible to commit, with why (ABANDON and FAIL of a masked attempt)
    dropouts: tuple[tuple[str, Dropout], ...] = ()


def decide(
    spec: RoundSpec,
    ledger: Ledger,
    now: float,
    *,
    on_time_pending: Iterable[str] = (),
    gone: Mapping[str, Dropout] | None = None,
    closing: bool = False,
) -> Decision:
    """Commit, fail, abandon or wait.

    ``on_time_pending``: hospitals whose update is known to have been complete before the deadline but is not in the
    ledger yet (the coordinator sees their receipts). ``gone``: hospitals known not to answer this attempt and why
    (the coordinator sees their tasks; a folded hospital is never gone). ``closing``: the caller closes the attempt
    now (the aggregator's finalise), so the answer is never ``WAIT``.
    """
    folded = tuple(h for h in spec.hospitals if h in ledger.folded_hospitals)
    outstanding = tuple(h for h in spec.hospitals if h not in ledger.answered)
    known_gone = {h: why for h, why in (gone or {}).items() if h in spec.hospitals and h not in ledger.answered}
    if spec.cohort:
        return _decide_masked(spec, ledger, now, folded, outstanding, on_time_pending, known_gone, closing=closing)
    # an unmasked round does not wait for a hospital that will not answer: it may commit, or fail, sooner
    outstanding_live = tuple(h for h in outstanding if h not in known_gone)
    return _decide_unmasked(spec, now, folded, outstanding, outstanding_live, on_time_pending, closing=closing)


def _decide_unmasked(
    spec: RoundSpec,
    now: float,
    folded: tuple[str, ...],
    outstanding: tuple[str, ...],
    live: tuple[str, ...],
    on_time_pending: Iterable[str],
    *,
    closing: bool,
) -> Decision:
    quorum_met = len(folded) >= spec.quorum

    def closed(why: str) -> Decision:
        if quorum_met:
            return Decision(Verdict.COMMIT, f"{why}; {len(folded)} folded, quorum {spec.quorum}", folded, outstanding)
        return Decision(Verdict.FAIL, f"{why}; only {len(folded)} folded, quorum is {spec.quorum}", folded, outstanding)

    if not live:
        return closed("every selected hospital has answered" if not outstanding else "no other hospital can answer")
    if len(folded) + len(live) < spec.quorum:
        why = f"quorum {spec.quorum} can no longer be reached: {len(folded)} folded, {len(live)} outstanding"
        return Decision(Verdict.FAIL, why, folded, outstanding)
    wait = None if closing else _wait_reason(spec, live, now, on_time_pending)
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
    gone: Mapping[str, Dropout],
    *,
    closing: bool,
) -> Decision:
    """A masked attempt is all or nothing: its sum means something only with every cohort member's masks in it.

    Abandoning waits for the members still working (not for the deadline): each of them either folds or is known
    gone, so the tombstone then names every member's fate and the fresh attempt can be judged at once. Abandoning
    while one of them trains would make it refuse to upload into the closed attempt and look like one more dropout.
    """
    missing = tuple(h for h in spec.cohort if h not in ledger.folded_hospitals)
    doomed = tuple(
        (h, Dropout.REFUSED if h in ledger.rejected_hospitals else gone[h])
        for h in missing
        if h in ledger.rejected_hospitals or h in gone
    )
    working = tuple(h for h in missing if h not in dict(doomed))
    if not missing and len(folded) >= spec.quorum:
        why = f"every cohort member folded ({len(folded)} hospitals, quorum {spec.quorum})"
        return Decision(Verdict.COMMIT, why, folded, outstanding)
    if not missing:  # a cohort smaller than the quorum is never opened
        why = f"the whole cohort of {len(folded)} folded, but the quorum is {spec.quorum}"
        return Decision(Verdict.FAIL, why, folded, outstanding)
    lost = ", ".join(f"{h} {why.value}" for h, why in doomed)
    if doomed and not working:
        why = (
            f"cohort incomplete: {lost}, and every other member has answered, so this masked attempt's sum can "
            "never be unmasked: abandoned now, a fresh attempt follows among the survivors"
        )
        return Decision(Verdict.ABANDON, why, folded, outstanding, doomed)
    wait = None if closing else _wait_reason(spec, working, now, on_time_pending)
    if wait is not None:
        if doomed:
            wait = f"cohort incomplete ({lost}); {wait}, so that the fresh attempt knows who uploaded"
        return Decision(Verdict.WAIT, wait, folded, outstanding, doomed)
    silent = f"no folded update from {', '.join(working)}"
    why = f"cohort incomplete: {f'{lost}; ' if doomed else ''}{silent}"
    return Decision(Verdict.FAIL, why, folded, outstanding, doomed)


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

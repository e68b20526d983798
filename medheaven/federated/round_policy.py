"""The one round policy: when an attempt commits, fails or keeps waiting, and when an answer is late.

Pure functions of the round's spec, its ledger (verified answers only, see ``ledger.py``) and a clock reading, so
the coordinator's wait loop and the aggregator's finalise cannot disagree about a round, and the policy is unit
tested without Redis.

Lateness is judged on when the hospital's update was *complete* (the completion time inside its signed receipt),
not on when the aggregator gets round to folding it: an aggregator backlog (frozen, restarting, busy with a large
model) never turns on-time work into late work. While an on-time update is uploaded but not yet folded, the round
waits for it past the deadline, for at most ``BACKLOG_GRACE`` seconds.
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
    quorum_met = len(folded) >= spec.quorum

    def verdict(kind: Verdict, reason: str) -> Decision:
        return Decision(kind, reason, folded, outstanding)

    def closed(why: str) -> Decision:
        if quorum_met:
            return verdict(Verdict.COMMIT, f"{why}; {len(folded)} folded, quorum {spec.quorum}")
        return verdict(Verdict.FAIL, f"{why}; only {len(folded)} folded, quorum is {spec.quorum}")

    if not outstanding:
        return closed("every selected hospital has answered")
    if len(folded) + len(outstanding) < spec.quorum:
        return verdict(
            Verdict.FAIL,
            f"quorum {spec.quorum} can no longer be reached: {len(folded)} folded, {len(outstanding)} outstanding",
        )
    if closing:
        return closed("the attempt is being closed")
    if now < spec.deadline:
        return verdict(Verdict.WAIT, f"waiting for {', '.join(outstanding)} until the deadline")
    backlog = tuple(h for h in outstanding if h in set(on_time_pending))
    if backlog and now < spec.deadline + BACKLOG_GRACE:
        return verdict(
            Verdict.WAIT,
            f"past the deadline, waiting for the aggregator to fold on-time updates of {', '.join(backlog)}",
        )
    return closed("the deadline has passed")


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

"""The one round policy (``round_policy.decide`` / ``lateness``) and the typed ledger, without Redis."""

from __future__ import annotations

import dataclasses

import pytest

from medheaven.federated.ledger import EntryStatus, FoldOutcome, FoldStatus, Ledger, LedgerEntry
from medheaven.federated.round_policy import BACKLOG_GRACE, CLOCK_SKEW, Dropout, Verdict, decide, lateness
from medheaven.federated.wire import RoundSpec

OPENED, DEADLINE = 1000.0, 1060.0
SPEC = RoundSpec(
    run="policy",
    round=2,
    attempt=1,
    kind="update",
    hospitals=("h1", "h2", "h3"),
    quorum=2,
    deadline=DEADLINE,
    base_sha256="ab" * 32,
    opened_at=OPENED,
)


def _ledger(folded: tuple[str, ...] = (), rejected: tuple[str, ...] = ()) -> Ledger:
    ledger = Ledger.empty("policy", "update", 2, 1)
    for hospital in folded:
        ledger = ledger.with_entry(LedgerEntry(hospital, EntryStatus.FOLDED, at=OPENED + 5, key=f"k/{hospital}"))
    for hospital in rejected:
        ledger = ledger.with_entry(LedgerEntry(hospital, EntryStatus.REJECTED, at=OPENED + 5, reason="shape"))
    return ledger


@pytest.mark.parametrize(
    ("folded", "rejected", "now", "pending", "verdict"),
    [
        (("h1", "h2", "h3"), (), OPENED + 1, (), Verdict.COMMIT),  # everyone answered before the deadline
        (("h1", "h2"), ("h3",), OPENED + 1, (), Verdict.COMMIT),  # answered, quorum met despite a refusal
        (("h1",), ("h2", "h3"), OPENED + 1, (), Verdict.FAIL),  # answered, quorum missed
        ((), ("h2", "h3"), OPENED + 1, (), Verdict.FAIL),  # quorum unreachable: fail before the deadline
        (("h1", "h2"), (), OPENED + 1, (), Verdict.WAIT),  # quorum met but h3 may still answer
        (("h1", "h2"), (), DEADLINE, (), Verdict.COMMIT),  # deadline: commit without h3
        (("h1",), (), DEADLINE, (), Verdict.FAIL),  # deadline, quorum missed
        (("h1",), (), DEADLINE + 1, ("h2",), Verdict.WAIT),  # h2 finished on time, the aggregator is behind
        (("h1",), (), DEADLINE + BACKLOG_GRACE, ("h2",), Verdict.FAIL),  # the backlog wait is bounded
        (("h1", "h2"), (), DEADLINE + 1, ("h3",), Verdict.WAIT),
        ((), (), OPENED, (), Verdict.WAIT),
    ],
)
def test_decide_verdicts(
    folded: tuple[str, ...], rejected: tuple[str, ...], now: float, pending: tuple[str, ...], verdict: Verdict
) -> None:
    decision = decide(SPEC, _ledger(folded, rejected), now, on_time_pending=pending)
    assert decision.verdict is verdict, decision
    assert decision.folded == folded
    assert set(decision.outstanding) == set(SPEC.hospitals) - set(folded) - set(rejected)


def test_decide_closing_never_waits() -> None:
    assert decide(SPEC, _ledger(("h1", "h2")), OPENED + 1, closing=True).verdict is Verdict.COMMIT
    failed = decide(SPEC, _ledger(("h1",)), OPENED + 1, on_time_pending=("h2",), closing=True)
    assert failed.verdict is Verdict.FAIL and "only 1 folded, quorum is 2" in failed.reason


def test_decide_ignores_ledger_entries_of_unselected_hospitals() -> None:
    ledger = _ledger(("h1", "h9"))
    assert decide(SPEC, ledger, DEADLINE).verdict is Verdict.FAIL
    assert decide(SPEC, ledger, DEADLINE).folded == ("h1",)


def test_decide_hospital_folded_after_a_refusal_counts_as_folded() -> None:
    decision = decide(SPEC, _ledger(("h1", "h2", "h3"), ("h3",)), OPENED + 1)
    assert decision.verdict is Verdict.COMMIT and decision.folded == ("h1", "h2", "h3")


@pytest.mark.parametrize(
    ("completed_at", "now", "late"),
    [
        (DEADLINE - 25, DEADLINE + 40, None),  # on time, folded late by a backlogged aggregator: still on time
        (DEADLINE, DEADLINE + 1, None),
        (DEADLINE + 0.5, DEADLINE + 1, "completed 0.5s after the deadline"),
        (OPENED + 10 + CLOCK_SKEW + 1, OPENED + 10, "in the future"),
    ],
)
def test_lateness_judged_on_completion_time(completed_at: float, now: float, late: str | None) -> None:
    reason = lateness(SPEC, completed_at, now)
    assert (reason is None) if late is None else (reason is not None and late in reason), reason


def test_ledger_round_trips_and_keeps_manifest_keys() -> None:
    ledger = _ledger(("h1",), ("h2",)).with_noise().with_noise()
    data = ledger.to_dict()
    assert Ledger.from_dict(data) == ledger
    assert data["noise"] == 2
    assert {"hospital", "key", "sha256", "size", "metrics", "timings", "folded_at"} <= data["folded"][0].keys()
    assert {"hospital", "reason", "message", "at"} <= data["rejected"][0].keys()


def test_ledger_reads_entries_written_before_the_status_field() -> None:
    old = {
        "run": "policy",
        "kind": "update",
        "round": 2,
        "attempt": 1,
        "folded": [
            {"hospital": "h1", "key": "k", "sha256": "s", "size": 3, "metrics": {}, "timings": {}, "folded_at": 9}
        ],
        "rejected": [{"hospital": "h2", "reason": "signature", "message": "m", "at": 8}],
    }
    ledger = Ledger.from_dict(old)
    assert ledger.folded_hospitals == {"h1"} and ledger.rejected_hospitals == {"h2"} and ledger.noise == 0
    assert ledger.folded[0].at == 9 and ledger.rejected[0].status is EntryStatus.REJECTED


def test_fold_outcome_round_trips() -> None:
    for outcome in (
        FoldOutcome(FoldStatus.FOLDED, "h1", 2, fold_seconds=0.5),
        FoldOutcome(FoldStatus.NOISE, "h2", 2, "signature", "forged"),
    ):
        assert FoldOutcome.from_dict(outcome.to_dict()) == outcome


# -- masked attempts: all or nothing, and the cohort rule of a fresh attempt ------------------------------
MASKED = dataclasses.replace(SPEC, cohort=("h1", "h2", "h3"))


@pytest.mark.parametrize(
    ("folded", "rejected", "now", "pending", "closing", "verdict"),
    [
        (("h1", "h2", "h3"), (), OPENED + 1, (), False, Verdict.COMMIT),  # the whole cohort: the masks cancel
        (("h1", "h2"), (), OPENED + 1, (), False, Verdict.WAIT),  # quorum met is not enough while h3 may answer
        (("h1", "h2"), (), DEADLINE, (), False, Verdict.FAIL),  # never commit a sum that still holds h3's masks
        (("h1", "h2"), ("h3",), OPENED + 1, (), False, Verdict.ABANDON),  # a refused member ends the attempt at once
        (("h1", "h2"), (), DEADLINE + 1, ("h3",), False, Verdict.WAIT),  # h3 on time, aggregator behind
        (("h1", "h2"), (), OPENED + 1, (), True, Verdict.FAIL),  # closing never commits an incomplete cohort
    ],
)
def test_decide_masked_attempt_commits_only_with_every_cohort_member(
    folded: tuple[str, ...],
    rejected: tuple[str, ...],
    now: float,
    pending: tuple[str, ...],
    closing: bool,
    verdict: Verdict,
) -> None:
    decision = decide(MASKED, _ledger(folded, rejected), now, on_time_pending=pending, closing=closing)
    assert decision.verdict is verdict, decision
    if verdict.closes:
        assert "cohort incomplete" in decision.reason


@pytest.mark.parametrize("cause", list(Dropout))
def test_decide_masked_attempt_abandoned_before_its_deadline_once_a_member_is_known_gone(cause: Dropout) -> None:
    """Every other member folded and h3 will never answer (failed, refused, lost, at its budget): no wait for the
    deadline, the verdict names h3 and why, and the aggregator's closing call agrees."""
    ledger = _ledger(("h1", "h2"), ("h3",) if cause is Dropout.REFUSED else ())
    gone = {} if cause is Dropout.REFUSED else {"h3": cause}
    for closing in (False, True):
        decision = decide(MASKED, ledger, OPENED + 1, gone=gone, closing=closing)
        assert decision.verdict is Verdict.ABANDON and decision.verdict.closes
        assert decision.dropouts == (("h3", cause),)
        assert decision.folded == ("h1", "h2") and "cohort incomplete" in decision.reason
        assert f"h3 {cause.value}" in decision.reason


def test_decide_masked_doomed_attempt_waits_for_members_still_working() -> None:
    """h3 is gone but h2 still trains: abandoning now would make h2 refuse to upload into the closed attempt and look
    like another dropout, so the attempt waits for h2's answer (not for the deadline once h2 has answered)."""
    gone = {"h3": Dropout.LOST}
    waiting = decide(MASKED, _ledger(("h1",)), OPENED + 1, gone=gone)
    assert waiting.verdict is Verdict.WAIT and "h3 worker lost" in waiting.reason and "h2" in waiting.reason
    assert waiting.dropouts == (("h3", Dropout.LOST),)
    # h2 fails too: both gone, nobody pending, abandon with both named
    both = decide(MASKED, _ledger(("h1",)), OPENED + 1, gone={**gone, "h2": Dropout.FAILED})
    assert both.verdict is Verdict.ABANDON
    assert both.dropouts == (("h2", Dropout.FAILED), ("h3", Dropout.LOST))
    # h2 stays silent to the deadline: the ordinary deadline failure, still naming h3
    late = decide(MASKED, _ledger(("h1",)), DEADLINE, gone=gone)
    assert late.verdict is Verdict.FAIL and "h3 worker lost" in late.reason and "h2" in late.reason
    # the aggregator's finalise never waits: it closes as a failure while h2 may still answer
    assert decide(MASKED, _ledger(("h1",)), OPENED + 1, gone=gone, closing=True).verdict is Verdict.FAIL


def test_decide_masked_a_gone_member_that_folded_after_all_commits() -> None:
    """A worker taken for lost that was only frozen, woke and got folded: the ledger wins over the coordinator's
    guess, on both sides (the aggregator gets the coordinator's dropouts with its finalise)."""
    ledger = _ledger(("h1", "h2", "h3"))
    for closing in (False, True):
        decision = decide(MASKED, ledger, OPENED + 1, gone={"h3": Dropout.LOST}, closing=closing)
        assert decision.verdict is Verdict.COMMIT and decision.dropouts == ()


def test_decide_unmasked_round_does_not_wait_for_a_hospital_known_gone() -> None:
    """Without masks a gone hospital is simply not waited for: commit once the others answered, fail once the
    quorum is out of reach, both before the deadline."""
    committed = decide(SPEC, _ledger(("h1", "h2")), OPENED + 1, gone={"h3": Dropout.BUDGET_SPENT})
    assert committed.verdict is Verdict.COMMIT and committed.outstanding == ("h3",)
    failed = decide(SPEC, _ledger(("h1",)), OPENED + 1, gone={"h2": Dropout.FAILED, "h3": Dropout.LOST})
    assert failed.verdict is Verdict.FAIL and "only 1 folded, quorum is 2" in failed.reason
    # a hospital named gone but folded is not gone (the ledger is the truth)
    assert decide(SPEC, _ledger(("h1", "h2", "h3")), OPENED + 1, gone={"h3": Dropout.LOST}).verdict is Verdict.COMMIT


def test_round_spec_refuses_a_cohort_that_is_not_its_hospitals() -> None:
    from dataclasses import replace

    from medheaven.errors import EnvelopeFormatError

    with pytest.raises(EnvelopeFormatError, match="cohort"):
        replace(MASKED, cohort=("h1", "h2"))
    assert RoundSpec.from_dict(MASKED.to_dict()) == MASKED
    assert RoundSpec.from_dict({k: v for k, v in SPEC.to_dict().items() if k != "cohort"}).cohort == ()


def test_cohort_rule_allows_dropping_only_hospitals_that_never_uploaded() -> None:
    from medheaven.federated.round_policy import EarlierAttempt, cohort_violations, safe_cohort

    # attempt 1: h3 died before uploading; h1, h2 uploaded
    first = EarlierAttempt(1, ("h1", "h2", "h3"), frozenset({"h1", "h2"}))
    assert cohort_violations(("h1", "h2"), [first]) == ()
    assert safe_cohort(("h1", "h2", "h3"), [first]) == (("h1", "h2", "h3"), ())
    # leaving out h2, which uploaded in attempt 1: attempt 1's sum minus the retry's would be h2's update
    assert cohort_violations(("h1",), [first]) == ("h2 uploaded in failed attempt 1 but would be left out",)
    # adding h4, absent from attempt 1: the retry's sum minus attempt 1's (h3's masks known to h3) is h4's update
    assert cohort_violations(("h1", "h2", "h4"), [first]) == ("h4 not in the cohort of failed attempt 1",)
    # attempt 2 over the survivors also failed, h2 silent: h2's attempt-1 upload forbids leaving it out
    second = EarlierAttempt(2, ("h1", "h2"), frozenset({"h1"}))
    cohort, problems = safe_cohort(("h1",), [first, second])
    assert cohort == ("h1",) and problems == ("h2 uploaded in failed attempt 1 but would be left out",)
    # an attempt nobody uploaded in constrains nothing
    assert cohort_violations(("h9",), [EarlierAttempt(1, ("h1", "h2"), frozenset())]) == ()


def test_attempt_tombstone_round_trips_with_folded_hospital_names_and_rejected_entries() -> None:
    """A tombstone lists folded hospitals by name and rejected ones as ledger entries; reading one back (what the
    coordinator does before every retry) must not take the names for entries."""
    from medheaven.federated.ledger import AttemptTombstone

    rejected = _ledger(rejected=("h3",)).rejected
    tombstone = AttemptTombstone(
        run="policy",
        kind="update",
        round=2,
        attempt=1,
        quorum=2,
        reason="cohort incomplete: h3 refused",
        at=OPENED + 9,
        folded=("h1", "h2"),
        rejected=rejected,
        missing=(),
        cohort=("h1", "h2", "h3"),
        uploaded=("h1", "h2", "h3"),
    )
    assert AttemptTombstone.from_dict(tombstone.to_dict()) == tombstone

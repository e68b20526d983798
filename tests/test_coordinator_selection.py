"""Model selection after the rounds (``coordinator.selection``): which round's model the held-out test set scores,
and which hospitals the phases after the rounds do not wait for, decided from the records alone."""

from __future__ import annotations

import math
from typing import Any

from coordinator.selection import select_round, unreachable_hospitals
from coordinator.status import HospitalState


def _round(evaluated: int, auc: float) -> dict[str, Any]:
    return {"round": evaluated + 1, "evaluated_round": evaluated, "weighted": {"roc_auc": auc}}


def test_selection_picks_the_best_validation_auc_and_counts_the_final_validation() -> None:
    history = [_round(0, 0.9), _round(1, 0.7), _round(2, 0.8)]
    assert select_round(history, None, 3) == (2, 0.8)  # round 0 is the untrained model: never selected
    assert select_round(history, {"round": 3, "weighted": {"roc_auc": 0.85}}, 3) == (3, 0.85)


def test_selection_ties_go_to_the_later_round_and_nan_is_skipped() -> None:
    history = [_round(1, 0.8), _round(2, float("nan")), _round(3, 0.8)]
    assert select_round(history, None, 4) == (3, 0.8)


def test_selection_without_a_finite_score_falls_back_to_the_last_round() -> None:
    selected, auc = select_round([_round(0, 0.9), _round(1, float("nan"))], None, 2)
    assert selected == 2 and math.isnan(auc)


def test_unreachable_is_the_latest_state_over_the_rounds_attempts() -> None:
    failed = [
        {"kind": "update", "round": 2, "attempt": 2, "statuses": {"h1": "folded", "h2": "late"}, "reasons": {}},
        {
            "kind": "update",
            "round": 2,
            "attempt": 1,
            "statuses": {"h1": HospitalState.LOST.value, "h3": "late"},
            "reasons": {"h1": "its worker died"},
        },
        {"kind": "update", "round": 1, "attempt": 1, "statuses": {"h4": "late"}, "reasons": {}},
        {"kind": "stats", "round": 2, "attempt": 1, "statuses": {"h5": "late"}, "reasons": {}},
    ]
    history = [{"round": 2, "statuses": {"h3": "folded"}, "reasons": {}}]
    # h1 lost in attempt 1, folded in attempt 2; h3 late in attempt 1, folded in the committed one; h2 late last
    assert unreachable_hospitals(2, failed, history) == {"h2": "late in round 2"}
    assert unreachable_hospitals(2, failed[1:2], []) == {
        "h1": "worker lost in round 2 (its worker died)",
        "h3": "late in round 2",
    }

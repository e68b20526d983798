"""After the rounds: the final validation of the last global model, the choice of the model the held-out test set
scores (federated early stopping), and that test scoring. ``select_round`` and ``unreachable_hospitals`` decide from the
records alone; ``validate_final`` and ``score_test`` are the two phases the coordinator runs after its rounds."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from coordinator.status import HospitalState
from medheaven.federated.fedavg import mean_metrics
from medheaven.federated.phase import Phase

if TYPE_CHECKING:
    from coordinator.loop import Coordinator

#: how ``select_round`` chooses, as the test record states it
SELECTED_BY = "best mean validation ROC-AUC over hospitals"


def select_round(
    history: Sequence[Mapping[str, Any]], final_validation: Mapping[str, Any] | None, last_committed: int
) -> tuple[int, float]:
    """The committed round whose global model had the best mean validation ROC-AUC (federated early stopping:
    hospitals' validation metrics only, never the held-out test set), with that ROC-AUC. Each history record scores
    the model its round started from; the final validation scores the last one. Ties go to the later round; with no
    finite score of a trained model (round ≥ 1), the last committed round and NaN."""
    candidates = [(int(r["evaluated_round"]), float(r["weighted"]["roc_auc"])) for r in history]
    if final_validation is not None:
        candidates.append((int(final_validation["round"]), float(final_validation["weighted"]["roc_auc"])))
    scored = [(r, auc) for r, auc in candidates if r >= 1 and math.isfinite(auc)]  # not NaN, not untrained round 0
    if not scored:
        return last_committed, float("nan")
    return max(scored, key=lambda item: (item[1], item[0]))


def unreachable_hospitals(
    round_number: int, failed_attempts: Sequence[Mapping[str, Any]], history: Sequence[Mapping[str, Any]]
) -> dict[str, str]:
    """Hospitals the attempts of training round ``round_number`` saw lost with their worker or silent to the
    deadline (their latest state over that round's attempts: failed attempts in order, then the committed one), with
    that state, so that a phase after the rounds does not wait a whole timeout for a hospital known gone."""
    records = [r for r in failed_attempts if r["kind"] == Phase.UPDATE and r["round"] == round_number]
    records.sort(key=lambda r: int(r["attempt"]))
    records += [r for r in history if int(r["round"]) == round_number]
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


def validate_final(coordinator: Coordinator) -> None:
    """Every hospital scores the last global model on its validation patients (the rounds' own records only
    cover the models they started from); the result completes the curve that model selection reads."""
    c = coordinator
    last = c.last_committed_round()
    if c.store.exists(c.paths.final_validation) or last < 1:
        return
    skipped = c.unreachable(last)
    for hospital, why in skipped.items():
        c.observer.message(f"final validation skips {hospital}: {why}")
    sent = {
        hospital: c.transport.send_hospital_task("validate", (c.config.run, last, hospital), hospital, fold=False)
        for hospital in c.config.hospitals
        if hospital not in skipped
    }
    per_hospital: dict[str, dict[str, float]] = {}
    deadline = c.clock() + c.config.round_timeout
    pending = dict(sent)
    while pending and c.clock() < deadline:
        for hospital, ids in list(pending.items()):
            state = c.transport.state(ids["task"])
            if state.done:
                if state.state == "SUCCESS":
                    per_hospital[hospital] = dict(state.result["metrics"])
                del pending[hospital]
            elif (worker := c.transport.lost_worker(ids["task"])) is not None:
                skipped[hospital] = f"{HospitalState.LOST}: worker {worker} died while validating"
                c.observer.message(f"final validation skips {hospital}: {skipped[hospital]}")
                del pending[hospital]
        if pending:
            c.pause([ids["task"] for ids in pending.values()], until=deadline)
    record = {
        "round": last,
        "metrics": per_hospital,
        "weighted": mean_metrics(per_hospital),
        "missing": sorted(pending),
        "skipped": dict(sorted(skipped.items())),  # known lost or silent: not waited for
    }
    c.store.put_json(c.paths.final_validation, record)
    c.observer.message(f"final model (round {last}) validated by {len(per_hospital)} hospitals")


def score_test(coordinator: Coordinator) -> None:
    """The key holder scores the selected round's model (``select_round``) on the held-out test set."""
    c = coordinator
    holder = c.config.key_holder
    if (why := c.unreachable(c.last_committed_round()).get(holder)) is not None:
        c.observer.message(
            f"held-out test not scored: the key holder {holder!r} is {why}; once {holder} is back, "
            f"`medheaven-coordinator resume --run-id {c.config.run}` scores it"
        )
        return
    last, validation_auc = c.selected_round()
    args = (c.config.run, last, holder)  # the hospital reads test_path from the run config
    ids = c.transport.send_hospital_task("evaluate_test", args, holder, fold=False)
    record = c.await_task(ids["task"], f"test scoring by {holder!r}", c.config.round_timeout)
    record = {**record, "selected_by": SELECTED_BY, "validation_roc_auc": validation_auc}
    c.store.put_json(c.paths.test_scores(), record)
    metrics = record["metrics"]
    c.observer.message(
        f"held-out test of round {last} (best validation ROC-AUC {validation_auc:.3f}): "
        f"ROC-AUC {metrics['roc_auc']:.3f}, PR-AUC {metrics['pr_auc']:.3f}"
    )

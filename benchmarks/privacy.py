"""What patient-level DP-SGD costs and buys: held-out accuracy, time per round and a membership-inference attack.

One split and one key set, then the same encrypted federation (same hospitals, rows, seeds, model, rounds) once per
row of ``--epsilons``: ``none`` trains with plain Keras ``fit``, a number with DP-SGD at that target ε (δ =
``--delta``, clipping ``--clip``, z calibrated by each hospital from ε and the planned rounds). Every row is scored
on the held-out test patients with the **last** round's model (no model selection, which would read the hospitals'
validation metrics, themselves not covered by the accountant).

The membership-inference check (``--attack-epsilons``) is a loss-threshold attack (Yeom et al. 2018). What the
attacker sees: the decrypted global model of the last round (as every hospital and every user of ``medheaven
export`` does) and, for each candidate patient, that patient's encounters (features and readmission labels). Its
score is minus the patient's mean binary cross-entropy under the model; a threshold on it guesses "trained on".
Members are one hospital's training patients (the rows it ran SGD/DP-SGD on), non-members an equal-size random
sample of the held-out test patients (never trained on by anyone), drawn with ``--attack-seed``; the reported number
is the ROC-AUC of that score over every threshold (0.5 = no better than a coin), per hospital and their mean.

    python -m benchmarks.privacy --data ../shared/data/diabetes-130-us/diabetic_data.csv.gz \\
        --hospitals 5 --scheme column:admission_source_id --seed 42 --rounds 10 --epsilons none,8,3,1 \\
        --mode processes --broker-url redis://127.0.0.1:6379/13
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.federation import round_breakdown
from benchmarks.runs import (
    BENCHMARK_BROKER_URL,
    add_schedule_arguments,
    add_split_arguments,
    fresh_split_and_model,
    results_header,
    timed_run,
    with_retries,
)
from coordinator.options import (
    BATCH_SIZE,
    LEARNING_RATE,
    LOCAL_EPOCHS,
    dp_config,
    local_training,
    server_step,
)
from coordinator.simulation import Simulation
from medheaven.crypto.planning import plan_ckks_parameters
from medheaven.errors import MedHeavenError
from medheaven.federated.wire import LocalTraining
from medheaven.model import ModelSpec
from medheaven.privacy.config import (
    OPTIMIZERS,
    RECIPE_BATCH_PATIENTS,
    RECIPE_CLIP,
    RECIPE_EPOCHS,
    RECIPE_LEARNING_RATE,
    RECIPE_OPTIMIZER,
)

NO_DP = "none"
TARGETS = {"roc_auc_gap_at_epsilon_8_max": 0.01}


def _epsilons(text: str) -> list[float | None]:
    return [None if item.strip() == NO_DP else float(item) for item in text.split(",") if item.strip()]


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_split_arguments(parser, seed_help="split seed (BENCHMARKS.md and the baseline use 42)")
    parser.add_argument("--rounds", type=int, default=10, help="the same for every row")
    parser.add_argument("--epsilons", type=_epsilons, default=_epsilons("none,8,3,1"), help="'none' = no DP")
    parser.add_argument("--attack-epsilons", type=_epsilons, default=_epsilons("none,8,1"))
    parser.add_argument("--delta", type=float, default=1e-5)
    parser.add_argument(
        "--clip", type=float, default=RECIPE_CLIP, help="C: L2 bound on one patient's gradient per step"
    )
    # every row trains as `medheaven-coordinator run` does by default: the no-DP rows with the plain recipe, the DP rows
    # with the DP recipe, both under the same learning-rate schedule and server step
    parser.add_argument("--local-epochs", type=int, default=LOCAL_EPOCHS, help="no-DP rows")
    parser.add_argument("--batch-size", type=int, default=BATCH_SIZE, help="encounters per step, no-DP rows")
    parser.add_argument("--learning-rate", type=float, default=LEARNING_RATE, help="no-DP rows")
    add_schedule_arguments(parser)
    # the DP rows' own recipe (DpConfig; its defaults are the one chosen on validation, PRIVACY.md)
    parser.add_argument("--dp-batch-patients", type=int, default=RECIPE_BATCH_PATIENTS, help="expected per step")
    parser.add_argument("--dp-epochs", type=float, default=RECIPE_EPOCHS, help="expected passes over patients/round")
    parser.add_argument("--dp-learning-rate", type=float, default=RECIPE_LEARNING_RATE)
    parser.add_argument("--dp-optimizer", choices=OPTIMIZERS, default=RECIPE_OPTIMIZER)
    parser.add_argument("--hidden", default="64,32")
    parser.add_argument("--dropout", type=float, default=0.3)
    parser.add_argument("--l2", type=float, default=1e-3)
    parser.add_argument(
        "--encryption",
        choices=["default", "ckks"],
        default="default",
        help="default: the simulation's default scheme; ckks: the CKKS plan (as PRIVACY.md was measured)",
    )
    parser.add_argument("--mode", choices=["threads", "processes"], default="processes")
    parser.add_argument("--broker-url", default=BENCHMARK_BROKER_URL)
    parser.add_argument("--attack-seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("benchmark-runs/privacy"))
    parser.add_argument("--round-timeout", type=float, default=900.0)
    parser.add_argument("--retries", type=int, default=1, help="restart a row whose run fails")
    return parser.parse_args(argv)


# -- the model a run released, and what it reveals ---------------------------------------------------------
class ReleasedModel:
    """The last committed global model of a run, decrypted with the federation's key (the benchmark is a key
    holder, like every hospital), with the federation's standardiser."""

    def __init__(self, simulation: Simulation, run: str) -> None:
        from medheaven.model import build_model, set_flat_weights
        from medheaven.serving.export import decrypt_global_model, decrypt_standardiser, load_key_holder_context

        store = simulation.store()
        secret = load_key_holder_context(simulation.keys.secret)
        decrypted = decrypt_global_model(store, secret, run)
        self.round = decrypted.round
        self.layout = decrypted.description.layout
        self.standardiser = decrypt_standardiser(store, secret, decrypted.description)
        self.model = build_model(decrypted.description.model)
        set_flat_weights(self.model, decrypted.weights)

    def risk(self, encoded: np.ndarray) -> np.ndarray:
        from medheaven.model import predict_risk

        return np.asarray(predict_risk(self.model, self.standardiser.apply(encoded)), dtype=np.float64)


def _encounter_losses(labels: np.ndarray, risk: np.ndarray) -> np.ndarray:
    p = np.clip(risk, 1e-7, 1 - 1e-7)
    y = np.asarray(labels, dtype=np.float64)
    losses: np.ndarray = -(y * np.log(p) + (1 - y) * np.log(1 - p))
    return losses


def patient_losses(groups: np.ndarray, labels: np.ndarray, risk: np.ndarray) -> dict[str, float]:
    """Mean cross-entropy over each patient's encounters: the attack's per-patient statistic."""
    import pandas as pd

    losses = pd.Series(_encounter_losses(labels, risk)).groupby(np.asarray(groups).astype(str)).mean()
    return {str(k): float(v) for k, v in losses.items()}


def loss_threshold_attack(
    members: dict[str, float], non_members: dict[str, float], *, rng: np.random.Generator
) -> dict[str, Any]:
    """ROC-AUC of ``-loss`` at telling members from non-members, on equal-size random samples of both."""
    from sklearn.metrics import roc_auc_score

    n = min(len(members), len(non_members))
    if n < 2:
        return {"patients_each": n, "roc_auc": float("nan")}
    inside = rng.choice(np.fromiter(members.values(), float), size=n, replace=False)
    outside = rng.choice(np.fromiter(non_members.values(), float), size=n, replace=False)
    labels = np.r_[np.ones(n), np.zeros(n)]
    return {
        "patients_each": n,
        "roc_auc": float(roc_auc_score(labels, -np.r_[inside, outside])),
        "member_mean_loss": float(inside.mean()),
        "non_member_mean_loss": float(outside.mean()),
    }


@dataclass(frozen=True)
class AttackPlan:
    """Who the membership-inference attack compares: ``seed`` draws the samples; ``partition_column`` (the split's
    column, when it has one) gives the same-source non-members; ``validation_fraction`` is the hospital node's."""

    seed: int
    partition_column: str | None = None
    validation_fraction: float = 0.1


def evaluate_released(simulation: Simulation, run: str, attack: AttackPlan | None = None) -> dict[str, Any]:
    """Held-out test metrics of the last round's model and, if asked, the membership-inference attack on it."""
    from medheaven.data import encode_features, prepare_hospital_data
    from medheaven.data.schemas import GROUP, LABEL
    from medheaven.evaluation.metrics import binary_metrics
    from medheaven.federated.nodes import schema_reader

    released = ReleasedModel(simulation, run)
    read = schema_reader("prepared", None)
    test = read(simulation.test_file)
    test_risk = released.risk(encode_features(test, released.layout))
    test_labels = test[LABEL].to_numpy()
    # calibration-in-the-large beside the ranking metrics: DP-SGD's clipping can keep ROC-AUC and still squeeze
    # every predicted risk far below the readmission rate (PRIVACY.md, "Clipping bias")
    metrics = {**binary_metrics(test_labels, test_risk), "mean_risk": float(np.mean(test_risk))}
    out: dict[str, Any] = {"round": released.round, "test": metrics}
    if attack is None:
        return out
    non_members = patient_losses(test[GROUP].to_numpy(), test_labels, test_risk)
    test_source = _first_value(test, attack.partition_column)
    rng = np.random.default_rng(attack.seed)
    per_hospital: dict[str, Any] = {}
    for hospital in simulation.hospitals:
        frame = read(simulation.data_files[hospital])
        # the hospital's own train/validation split, exactly as its node makes it (HospitalNode's defaults)
        data = prepare_hospital_data(frame, released.layout, validation_fraction=attack.validation_fraction, seed=0)
        assert data.train_groups is not None
        members = patient_losses(data.train_groups, data.train_y, released.risk(data.train_x))
        attack_row = loss_threshold_attack(members, non_members, rng=rng)
        if test_source is not None:
            # non-members from the same admission sources as the hospital: hospitals differ in base rate, so the
            # pooled comparison also measures that shift; this one isolates what training on the patients did
            sources = set(_first_value(frame, attack.partition_column).tolist())
            matched = {p: v for p, v in non_members.items() if test_source.get(p) in sources}
            attack_row["matched"] = loss_threshold_attack(members, matched, rng=rng)
        per_hospital[hospital] = attack_row
    out["attack"] = {"per_hospital": per_hospital, **_attack_summary(per_hospital, "roc_auc")}
    if test_source is not None:
        matched_rows = {h: r["matched"] for h, r in per_hospital.items()}
        out["attack"]["matched"] = _attack_summary(matched_rows, "roc_auc")
    return out


def _first_value(frame: Any, column: str | None) -> Any:
    """Each patient's value of the partition column at their first encounter (the partitioner's rule)."""
    from medheaven.data.schemas import GROUP

    if column is None or column not in frame.columns:
        return None
    return frame[column].astype(str).groupby(frame[GROUP].astype(str), sort=False).first()


def _attack_summary(rows: dict[str, Any], key: str) -> dict[str, float]:
    aucs = [float(r[key]) for r in rows.values() if np.isfinite(r[key])]
    return {
        "mean_roc_auc": float(np.mean(aucs)) if aucs else float("nan"),
        "max_roc_auc": float(np.max(aucs)) if aucs else float("nan"),
    }


# -- one row ----------------------------------------------------------------------------------------------
def _label(epsilon: float | None) -> str:
    return NO_DP if epsilon is None else f"{epsilon:g}"


def _training(args: argparse.Namespace, epsilon: float | None) -> LocalTraining:
    recipe = (args.dp_batch_patients, args.dp_epochs, args.dp_learning_rate, args.dp_optimizer)
    return local_training(
        epochs=args.local_epochs,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        rounds=args.rounds,
        dp=dp_config(epsilon, args.delta, args.clip, 0.0, True, *recipe),
        lr_decay=args.lr_decay,
    )


def run_row(
    simulation: Simulation, args: argparse.Namespace, model: ModelSpec, epsilon: float | None, attempt: int
) -> dict[str, Any]:
    run = f"eps-{_label(epsilon)}" + (f"-retry{attempt}" if attempt else "")
    server = server_step(args.server_optimiser, None, None)
    config, result, wall = timed_run(
        simulation, args, run=run, training=_training(args, epsilon), model=model, server=server
    )
    history = result.history
    store = simulation.store()
    breakdown = [round_breakdown(store, run, int(r["round"])) for r in history]
    later = breakdown[1:] or breakdown
    column = args.scheme.partition(":")[2] if args.scheme.startswith("column:") else None
    attack = AttackPlan(args.attack_seed, column) if epsilon in args.attack_epsilons else None
    scored = evaluate_released(simulation, run, attack)
    return {
        "run": run,
        "epsilon_target": epsilon,
        "delta": None if epsilon is None else args.delta,
        "clip": None if epsilon is None else args.clip,
        "training": config.training.to_dict(),
        "server": config.server.to_dict(),
        "loadavg": os.getloadavg(),
        "wall_seconds": wall,
        "round_seconds": [float(r["seconds"]) for r in history],
        "median_round_seconds_after_first": statistics.median(float(r["seconds"]) for r in history[1:] or history),
        # the train phase of the last hospital folded (the critical path), and the slowest hospital's train phase
        "median_train_seconds_critical_path": statistics.median(b["train"] for b in later),
        "median_train_seconds_slowest_hospital": statistics.median(
            float(r["phases_max"].get("train", 0.0)) for r in history[1:] or history
        ),
        "spent": dict(history[-1].get("privacy", {})) if history else {},
        "validation_roc_auc": [r["weighted"].get("roc_auc") for r in history],
        "selected_round_test": result.test["metrics"] if result.test else None,
        "selected_round": result.test["round"] if result.test else None,
        **scored,
    }


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The table PRIVACY.md prints: one line per row, gaps and time ratios against the non-private row."""
    plain = next((r for r in rows if r["epsilon_target"] is None), None)
    table = []
    for row in rows:
        line: dict[str, Any] = {
            "epsilon": _label(row["epsilon_target"]),
            "spent_epsilon_max": max((float(s["epsilon"]) for s in row["spent"].values()), default=None),
            "test_roc_auc": row["test"]["roc_auc"],
            "test_pr_auc": row["test"]["pr_auc"],
            "test_brier": row["test"]["brier"],
            "test_mean_risk": row["test"]["mean_risk"],
            "test_base_rate": row["test"]["base_rate"],
            "median_round_seconds": row["median_round_seconds_after_first"],
            "median_train_seconds_slowest_hospital": row["median_train_seconds_slowest_hospital"],
            "attack_roc_auc_mean": row.get("attack", {}).get("mean_roc_auc"),
            "attack_roc_auc_max": row.get("attack", {}).get("max_roc_auc"),
            "attack_matched_roc_auc_mean": row.get("attack", {}).get("matched", {}).get("mean_roc_auc"),
            "attack_matched_roc_auc_max": row.get("attack", {}).get("matched", {}).get("max_roc_auc"),
        }
        if plain is not None:
            line["roc_auc_gap_to_no_dp"] = plain["test"]["roc_auc"] - row["test"]["roc_auc"]
            line["round_time_ratio_to_no_dp"] = (
                row["median_round_seconds_after_first"] / plain["median_round_seconds_after_first"]
            )
        table.append(line)
    return {"table": table}


def main(argv: list[str] | None = None) -> None:
    args = _arguments(argv)
    results: dict[str, Any] = {
        **results_header(args),
        "encryption": "CKKS, the default plan" if args.encryption == "ckks" else "the simulation's default scheme",
        "attack": "loss-threshold (per patient mean cross-entropy under the last round's decrypted global model); "
        "members: one hospital's training patients; non-members: an equal-size sample of held-out test patients",
    }
    simulation, model = fresh_split_and_model(
        args, params=plan_ckks_parameters() if args.encryption == "ckks" else None
    )
    results["parameters"] = model.parameter_count()
    results["hospitals"] = list(simulation.hospitals)
    rows = []
    for epsilon in args.epsilons:
        row = with_retries(
            partial(run_row, simulation, args, model, epsilon), retries=args.retries, retry_on=(MedHeavenError,)
        )
        rows.append(row)
        # progress on stderr (the table is only printed at the end): a long run can be followed in its log
        print(json.dumps({"row": _label(epsilon), **summarise([row])["table"][0]}), file=sys.stderr, flush=True)
    results["rows"] = rows
    results.update(summarise(rows))
    results["loadavg_end"] = os.getloadavg()
    results["targets"] = TARGETS
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

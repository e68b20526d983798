"""Round-time overhead of encryption, and accuracy of the encrypted federation on real data.

Runs the same federation (same data, split, hospitals, seeds, model) twice side by side: encrypted, then in the
insecure plaintext comparison mode; on real Redis with worker processes (``--mode processes``) or in one process
(``--mode threads``). Prints one JSON object: per-round times by phase, the encrypted/plaintext ratio, and the
held-out test metrics of both.

    python -m benchmarks.federation --data ../shared/data/diabetes-130-us/diabetic_data.csv.gz \\
        --hospitals 5 --scheme column:admission_source_id --seed 42 --rounds 12 --mode processes
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from functools import partial
from pathlib import Path
from typing import Any

from benchmarks.runs import (
    BENCHMARK_BROKER_URL,
    add_split_arguments,
    fresh_split_and_model,
    results_header,
    timed_run,
    with_retries,
)
from coordinator.simulation import (
    Simulation,
)
from medheaven.crypto.codec import load_secret_keys, scheme_of
from medheaven.errors import MedHeavenError
from medheaven.federated.paths import RunPaths
from medheaven.federated.phase import Phase
from medheaven.federated.wire import LocalTraining, Manifest
from medheaven.model import ModelSpec
from medheaven.store.base import Store

#: hospital-side phases as the receipt reports them, then the aggregator's; "other" is the rest of the wall time
HOSPITAL_PHASES = ("fetch_decrypt", "evaluate", "train", "encrypt_upload")
PHASES = (*HOSPITAL_PHASES, "fold", "finalise", "other")
CRYPTO_PHASES = ("fetch_decrypt", "encrypt_upload", "fold", "finalise")
TARGETS = {"mlp_ratio_max": 1.10, "1m_ratio_max": 1.5, "1m_ratio_goal_issue13": 1.2}


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_split_arguments(parser, seed_help="split seed (the baseline uses 42)")
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--local-epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--learning-rate", type=float, default=5e-4)
    parser.add_argument("--lr-decay", type=float, default=1.0, help="per-round learning-rate decay")
    parser.add_argument("--hidden", default="64,32")
    parser.add_argument("--dropout", type=float, default=0.3)
    parser.add_argument("--l2", type=float, default=1e-3)
    parser.add_argument("--mode", choices=["threads", "processes"], default="processes")
    parser.add_argument("--broker-url", default=BENCHMARK_BROKER_URL)
    parser.add_argument("--only", choices=["encrypted", "plaintext", "both"], default="both")
    parser.add_argument("--out", type=Path, default=Path("benchmark-runs/federation"))
    parser.add_argument(
        "--repeat", type=int, default=1, help="alternate encrypted/plaintext runs this many times; report medians"
    )
    parser.add_argument("--round-timeout", type=float, default=300.0)
    parser.add_argument("--retries", type=int, default=2, help="restart a run that fails (shared Redis db flushed)")
    return parser.parse_args(argv)


def round_breakdown(store: Store, run: str, round_number: int) -> dict[str, float]:
    """Split one round's wall time along its critical path: the phases of the last hospital folded, the
    aggregator's finalise, and ``other`` (dispatch, broker and store round trips, queueing behind other folds,
    coordinator polling). Hospitals overlap, so only the last one folded is on the path."""
    manifest = Manifest.from_dict(store.get_json(RunPaths(run).manifest(Phase.UPDATE, round_number)))
    seconds = manifest.finalised_at - manifest.opened_at
    last = max(manifest.folded, key=lambda e: e.at)
    timings = dict(last.timings)
    phases = {phase: timings.get(phase, 0.0) for phase in (*HOSPITAL_PHASES, "fold")}
    phases["finalise"] = float(manifest.timings.get("finalise", 0.0))
    phases["other"] = seconds - sum(phases.values())
    phases["seconds"] = seconds
    phases["fold_sum_all_hospitals"] = sum(e.timings.get("fold", 0.0) for e in manifest.folded)
    return phases


def _median_phases(rounds: list[dict[str, float]]) -> dict[str, float]:
    return {key: statistics.median(r[key] for r in rounds) for key in rounds[0]}


def _run(
    simulation: Simulation, args: argparse.Namespace, model: ModelSpec, attempt: int, *, plaintext: bool, repeat: int
) -> dict[str, Any]:
    mode = "plaintext" if plaintext else "encrypted"
    run = f"{mode}-{repeat}" + (f"-retry{attempt}" if attempt else "")
    training = LocalTraining(
        epochs=args.local_epochs, batch_size=args.batch_size, learning_rate=args.learning_rate, lr_decay=args.lr_decay
    )
    _, result, wall = timed_run(simulation, args, run=run, training=training, model=model, plaintext=plaintext)
    rounds = result.history
    per_round = [float(r["seconds"]) for r in rounds]
    store = simulation.store()
    breakdown = [round_breakdown(store, run, int(r["round"])) for r in rounds]
    return {
        "run": run,
        "mode": mode,
        "loadavg": os.getloadavg(),
        "wall_seconds": wall,
        "round_seconds": per_round,
        "median_round_seconds": statistics.median(per_round),
        "mean_round_seconds_after_first": statistics.mean(per_round[1:]) if len(per_round) > 1 else per_round[0],
        "phases_max_per_round": [r["phases_max"] for r in rounds],
        "critical_path_per_round": breakdown,
        "critical_path_median_after_first": _median_phases(breakdown[1:] or breakdown),
        "bytes_up_per_round": [r["bytes_up"] for r in rounds],
        "global_bytes": rounds[-1]["global_bytes"],
        "validation_roc_auc": [r["weighted"]["roc_auc"] for r in rounds],
        "test": result.test["metrics"] if result.test else None,
    }


def _summary(outcomes: list[dict[str, Any]]) -> dict[str, Any]:
    keys = ("wall_seconds", "median_round_seconds", "mean_round_seconds_after_first")
    summary: dict[str, Any] = {key: statistics.median(o[key] for o in outcomes) for key in keys}
    summary["critical_path_median_after_first"] = _median_phases(
        [o["critical_path_median_after_first"] for o in outcomes]
    )
    return summary


def main(argv: list[str] | None = None) -> None:
    args = _arguments(argv)
    results = results_header(args)
    # one split and key set for every run, so encrypted and plaintext runs see the same hospitals and rows
    simulation, model = fresh_split_and_model(args)
    results["parameters"] = model.parameter_count()
    # the encrypted runs' scheme: the simulation's key set (bfv-masked, pairwise-masked, unless --data's plan says
    # otherwise), recorded so that a row of BENCHMARKS.md says what it measured
    results["crypto_scheme"] = scheme_of(load_secret_keys(simulation.keys.secret)).value
    results["hospitals"] = list(simulation.hospitals)
    modes = {"encrypted": [False], "plaintext": [True], "both": [False, True]}[args.only]
    runs: dict[str, list[dict[str, Any]]] = {"encrypted": [], "plaintext": []}
    for repeat in range(args.repeat):
        # alternate the order so that drifting background load does not favour one mode
        for plaintext in modes if repeat % 2 == 0 else modes[::-1]:
            outcome = with_retries(
                partial(_run, simulation, args, model, plaintext=plaintext, repeat=repeat),
                retries=args.retries,
                retry_on=(MedHeavenError,),
            )
            runs[outcome["mode"]].append(outcome)
            print(
                json.dumps({"mode": outcome["mode"], "repeat": repeat, "rounds": outcome["round_seconds"]}),
                file=sys.stderr,
            )
    for mode, outcomes in runs.items():
        if outcomes:
            results[mode] = {"runs": outcomes, **_summary(outcomes)}
    if runs["encrypted"] and runs["plaintext"]:
        pairs = list(zip(runs["encrypted"], runs["plaintext"], strict=True))
        for name, key in (
            ("ratio_median_round", "median_round_seconds"),
            ("ratio_mean_round_after_first", "mean_round_seconds_after_first"),
            ("ratio_wall", "wall_seconds"),
        ):
            ratios = [enc[key] / plain[key] for enc, plain in pairs]
            results[name] = statistics.median(ratios)
            results[f"{name}_per_repeat"] = ratios
        # Training time swings with the machine's load far more than encryption costs; the phases that differ
        # between the modes are the crypto ones, so this ratio adds only their extra time to the plaintext round.
        crypto = {
            mode: sum(results[mode]["critical_path_median_after_first"][p] for p in CRYPTO_PHASES)
            for mode in ("encrypted", "plaintext")
        }
        plain_round = results["plaintext"]["median_round_seconds"]
        results["crypto_phases_seconds"] = crypto
        results["ratio_crypto_attributable"] = (plain_round + crypto["encrypted"] - crypto["plaintext"]) / plain_round
    results["loadavg_end"] = os.getloadavg()
    results["targets"] = TARGETS
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

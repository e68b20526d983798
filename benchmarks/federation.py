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
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from coordinator.simulation import (
    Simulation,
    default_model,
    prepare_simulation,
    run_in_processes,
    run_in_threads,
    simulation_config,
)
from medheaven.federated.wire import LocalTraining
from medheaven.model import ModelSpec


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=None, help="data file (default: synthetic)")
    parser.add_argument("--schema", default="diabetes130")
    parser.add_argument("--hospitals", type=int, default=5)
    parser.add_argument("--scheme", default="column:admission_source_id")
    parser.add_argument("--seed", type=int, default=42, help="split seed (the baseline uses 42)")
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--local-epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--learning-rate", type=float, default=5e-4)
    parser.add_argument("--hidden", default="64,32")
    parser.add_argument("--dropout", type=float, default=0.3)
    parser.add_argument("--l2", type=float, default=1e-3)
    parser.add_argument("--mode", choices=["threads", "processes"], default="processes")
    parser.add_argument("--broker-url", default="redis://127.0.0.1:6379/15")
    parser.add_argument("--only", choices=["encrypted", "plaintext", "both"], default="both")
    parser.add_argument("--synthetic-rows", type=int, default=20000)
    parser.add_argument("--out", type=Path, default=Path("benchmark-runs/federation"))
    return parser.parse_args(argv)


def _run(simulation: Simulation, args: argparse.Namespace, model: ModelSpec, *, plaintext: bool) -> dict[str, Any]:
    run = "plaintext" if plaintext else "encrypted"
    config = simulation_config(
        simulation,
        run=run,
        rounds=args.rounds,
        round_timeout=1800,
        training=LocalTraining(epochs=args.local_epochs, batch_size=args.batch_size, learning_rate=args.learning_rate),
        plaintext=plaintext,
    )
    started = time.perf_counter()
    if args.mode == "threads":
        result, _ = run_in_threads(simulation, config, model=model)
    else:
        result = run_in_processes(simulation, config, model=model, broker_url=args.broker_url)
    wall = time.perf_counter() - started
    rounds = result.history
    per_round = [float(r["seconds"]) for r in rounds]
    return {
        "run": run,
        "wall_seconds": wall,
        "round_seconds": per_round,
        "median_round_seconds": statistics.median(per_round),
        "mean_round_seconds_after_first": statistics.mean(per_round[1:]) if len(per_round) > 1 else per_round[0],
        "phases_max_per_round": [r["phases_max"] for r in rounds],
        "bytes_up_per_round": [r["bytes_up"] for r in rounds],
        "global_bytes": rounds[-1]["global_bytes"],
        "validation_roc_auc": [r["weighted"]["roc_auc"] for r in rounds],
        "test": result.test["metrics"] if result.test else None,
    }


def main(argv: list[str] | None = None) -> None:
    args = _arguments(argv)
    hidden = tuple(int(w) for w in args.hidden.split(",") if w)
    results: dict[str, Any] = {"args": {k: str(v) for k, v in vars(args).items()}}
    for plaintext in {"encrypted": [False], "plaintext": [True], "both": [False, True]}[args.only]:
        root = args.out / ("plaintext" if plaintext else "encrypted")
        import shutil

        shutil.rmtree(root, ignore_errors=True)
        simulation = prepare_simulation(
            root,
            data=args.data,
            schema=args.schema,
            hospitals=args.hospitals,
            scheme=args.scheme,
            seed=args.seed,
            synthetic_rows=args.synthetic_rows,
        )
        model = default_model(simulation, hidden=hidden, dropout=args.dropout, l2=args.l2, seed=0)
        results["parameters"] = model.parameter_count()
        results["hospitals"] = list(simulation.hospitals)
        outcome = _run(simulation, args, model, plaintext=plaintext)
        results[outcome["run"]] = outcome
        print(json.dumps({outcome["run"]: outcome["test"]}), file=sys.stderr)
    if "encrypted" in results and "plaintext" in results:
        enc, plain = results["encrypted"], results["plaintext"]
        results["ratio_median_round"] = enc["median_round_seconds"] / plain["median_round_seconds"]
        results["ratio_mean_round_after_first"] = (
            enc["mean_round_seconds_after_first"] / plain["mean_round_seconds_after_first"]
        )
        results["ratio_wall"] = enc["wall_seconds"] / plain["wall_seconds"]
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

"""A grid over the DP-SGD recipe, scored on the hospitals' VALIDATION patients only (the test split is never read).

    python -m benchmarks.dp_grid --data ../shared/data/diabetes-130-us/diabetic_data.csv.gz --rounds 10 \\
        --epsilon 8 --batch-patients 1024,2048,4096 --learning-rates 1e-3,3e-3 --epochs 1,2 > dp-grid.json

The split is ``benchmarks.privacy``'s (``benchmarks.runs.split_simulation``, same flags and defaults), each hospital's
train/validation split is its node's (``prepare_hospital_data``, 10% of patients, seed 0) and the standardiser is the
pooled one the federation's statistics phase computes. Then the federation's arithmetic in plaintext in one process,
without the protocol (HE equals plaintext FedAvg to ~1e-12): each hospital keeps its own model and optimiser state
across rounds, calibrates its own z from ε, δ, its own q and the planned rounds (``medheaven.privacy.local``), runs
the hospital's DP-SGD (``DpSgd``) from the global model at the round's learning rate (``--lr-decay``: round r trains
at lr * decay^(r-1), as ``LocalTraining.rate_for``), and the next global model is the product's server step
(``--server-optimiser``, ``medheaven.federated.server_optimiser.Trajectory``, as every hospital replays it) from the
n-weighted FedAvg average. Both default to what ``medheaven-coordinator run`` does (``coordinator/options.py``).
Each configuration prints the validation ROC-AUC after every round: over all hospitals' validation patients pooled
(``--score pooled``, the default ranking: the test split is scored pooled, so this is its proxy), and the mean over
hospitals weighted by validation patients (as the coordinator's history reports it) and unweighted; each hospital's
mean predicted risk against its readmission rate (calibration), its q, z and steps, and seconds. The two rankings
differ when a model's offsets between hospitals are wrong, which per-hospital ROC-AUC cannot see: DP-SGD's clipping
bias (negatives, 89% of patients, are clipped too until their risk is tiny) squeezes them.
``--no-dp`` adds the non-private reference row (the hospitals' plain ``train_epochs``) with ``--plain-*`` settings,
by default the product's plain recipe (``coordinator/options.py``), under the same schedule and server step.

``--time-round HOSPITAL`` instead times one round of that hospital's local training, alternating DP-SGD (the first
grid configuration) with plain ``fit`` for one and for the DP row's number of epochs, ``--repeat`` times each.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.peer_flower import roc_auc
from benchmarks.runs import add_schedule_arguments, add_split_arguments, split_simulation
from coordinator.options import BATCH_SIZE, LEARNING_RATE, LOCAL_EPOCHS, server_step
from coordinator.simulation import default_model
from medheaven.federated.fedavg import fedavg
from medheaven.federated.server_optimiser import Trajectory
from medheaven.federated.wire import LocalTraining
from medheaven.model import ModelSpec
from medheaven.privacy.accountant import calibrate_noise, epsilon_for
from medheaven.privacy.dpsgd import DpSgd, PatientIndex, sampling_rate, steps_per_round


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v.strip()]


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_split_arguments(parser, seed_help="split seed (benchmarks.privacy and BENCHMARKS.md use 42)")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--epsilon", type=float, default=8.0)
    parser.add_argument("--delta", type=float, default=1e-5)
    parser.add_argument("--batch-patients", type=_floats, default=_floats("2048"))
    parser.add_argument("--learning-rates", type=_floats, default=_floats("3e-3"))
    parser.add_argument("--epochs", type=_floats, default=_floats("1"), help="expected passes over patients/round")
    parser.add_argument("--clips", type=_floats, default=_floats("1"))
    parser.add_argument("--optimizers", default="adam", help="comma-separated: adam, sgd")
    parser.add_argument("--no-dp", action="store_true", help="add the non-private reference row")
    parser.add_argument("--plain-batch", type=int, default=BATCH_SIZE, help="no-DP row: encounters per step")
    parser.add_argument("--plain-learning-rate", type=float, default=LEARNING_RATE, help="no-DP row")
    parser.add_argument("--plain-epochs", type=int, default=LOCAL_EPOCHS, help="no-DP row: epochs per round")
    add_schedule_arguments(parser)
    parser.add_argument(
        "--noise-seeds", type=_ints, default=_ints("0"), help="repeat each DP configuration with these noise seeds"
    )
    parser.add_argument(
        "--score",
        choices=("pooled", "weighted"),
        default="pooled",
        help="what `final` ranks by: ROC-AUC over every hospital's validation patients together (as the test split "
        "is scored), or the mean of each hospital's own, weighted by validation patients (the coordinator's history)",
    )
    parser.add_argument("--out", type=Path, default=Path("benchmark-runs/dp-grid"))
    parser.add_argument("--time-round", default=None, metavar="HOSPITAL", help="time one local round instead")
    parser.add_argument("--repeat", type=int, default=3)
    return parser.parse_args(argv)


def load_hospitals(args: argparse.Namespace) -> tuple[ModelSpec, dict[str, dict[str, Any]]]:
    """The privacy benchmark's split; per hospital: standardised train/validation arrays and training patients."""
    from medheaven.data import FeatureLayout, Standardiser, SufficientStats, prepare_hospital_data
    from medheaven.federated.nodes import schema_reader

    shutil.rmtree(args.out, ignore_errors=True)
    simulation = split_simulation(args)
    layout = FeatureLayout.from_dict(simulation.layout)
    read = schema_reader("prepared", None)
    # the hospital node's own split (HospitalNode's defaults)
    data = {
        h: prepare_hospital_data(read(simulation.data_files[h]), layout, validation_fraction=0.1, seed=0)
        for h in simulation.hospitals
    }
    pooled = sum(SufficientStats.of(d.train_x).to_vector() for d in data.values())
    standardiser = Standardiser.from_stats(SufficientStats.from_vector(np.asarray(pooled), layout.n_features))
    hospitals = {
        h: {
            "x": standardiser.apply(d.train_x),
            "y": d.train_y.astype(np.float32),
            "index": PatientIndex.of(np.asarray(d.train_groups)),
            "val": (standardiser.apply(d.val_x), d.val_y),
        }
        for h, d in data.items()
    }
    return default_model(simulation), hospitals


def run_config(
    spec: ModelSpec,
    hospitals: dict[str, dict[str, Any]],
    config: dict[str, Any],
    *,
    rounds: int,
    delta: float,
    score: str = "pooled",
) -> dict[str, Any]:
    import keras

    from medheaven.model import (
        build_model,
        compile_model,
        get_flat_weights,
        predict_risk,
        set_flat_weights,
        train_epochs,
    )

    models, planned = {}, {}
    private: dict[str, DpSgd] = {}
    for h, d in hospitals.items():
        models[h] = build_model(spec)
        compile_model(models[h], learning_rate=config["lr"], optimizer=config.get("optimizer", "adam"))
        if config.get("epsilon") is not None:
            q = sampling_rate(int(config["batch"]), d["index"].n_patients)
            steps = steps_per_round(config["epochs"], q)
            z = calibrate_noise(config["epsilon"], delta, q, steps * rounds)
            planned[h] = {"q": q, "steps": steps, "z": z, "epsilon": epsilon_for(q, z, steps * rounds, delta)}
            # one DpSgd per hospital for the whole run, as a hospital's process keeps one (privacy.local._dp_sgd): a
            # new one per round traced its compiled functions again every round; its noise is seeded here
            private[h] = DpSgd(
                models[h],
                clip=config["clip"],
                noise_multiplier=z,
                sampling_rate=q,
                seed=spec.seed * 1_009 + len(private) + 7_919 * int(config.get("noise_seed", 0)),
            )
    # round r's global model: the product's server step (as each hospital replays it) from the FedAvg averages
    averages = {0: np.asarray(get_flat_weights(next(iter(models.values()))), dtype=np.float64)}
    trajectory = Trajectory(server_step(config["server"], None, None), averages.__getitem__)
    weights = trajectory.model(0)
    schedule = LocalTraining(learning_rate=config["lr"], lr_decay=config["lr_decay"])  # the hospitals' rate_for
    curve: list[float] = []
    curve_mean: list[float] = []
    curve_pooled: list[float] = []
    calibration: list[dict[str, list[float]]] = []
    # the validation labels do not change between rounds: pooled in hospital order, as each round's risks are
    pooled_labels = np.concatenate([d["val"][1] for d in hospitals.values()])
    rates = {h: float(np.mean(d["val"][1])) for h, d in hospitals.items()}
    started = time.monotonic()
    for r in range(1, rounds + 1):
        updates = []
        rate = schedule.rate_for(r)
        for i, (h, model) in enumerate(models.items()):
            d = hospitals[h]
            set_flat_weights(model, weights)
            model.optimizer.learning_rate.assign(rate)
            seed = spec.seed * 1_000_003 + r * 7919 + i
            if h in private:
                keras.utils.set_random_seed(seed)
                private[h].train(d["x"], d["y"], d["index"], int(planned[h]["steps"]))
            else:
                train_epochs(
                    model,
                    d["x"],
                    d["y"],
                    epochs=int(config["epochs"]),
                    batch_size=int(config["batch"]),
                    rng=np.random.default_rng(seed),
                )
            updates.append((get_flat_weights(model), int(d["y"].size)))
        averages[r] = fedavg(updates)
        weights = trajectory.model(r)
        scorer = next(iter(models.values()))
        set_flat_weights(scorer, weights)
        risks = {h: predict_risk(scorer, d["val"][0]) for h, d in hospitals.items()}
        aucs = {h: roc_auc(d["val"][1], risks[h]) for h, d in hospitals.items()}
        sizes = {h: d["val"][1].size for h, d in hospitals.items()}
        curve.append(sum(aucs[h] * sizes[h] for h in aucs) / sum(sizes.values()))
        curve_mean.append(float(np.mean(list(aucs.values()))))
        curve_pooled.append(roc_auc(pooled_labels, np.concatenate(list(risks.values()))))
        calibration.append({h: [float(np.mean(risks[h])), rates[h]] for h in hospitals})
    return {
        "config": config,
        "validation_roc_auc_weighted": curve,
        "validation_roc_auc_mean": curve_mean,
        "validation_roc_auc_pooled": curve_pooled,
        "validation_mean_risk_and_rate": calibration,
        "final": (curve_pooled if score == "pooled" else curve)[-1],
        "planned": planned,
        "seconds": time.monotonic() - started,
        "loadavg": os.getloadavg(),
    }


def time_round(spec: ModelSpec, data: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """Seconds of one round of local training: DP-SGD against plain ``fit`` on the same hospital, interleaved."""
    from medheaven.model import build_model, compile_model

    model = build_model(spec)
    compile_model(model, learning_rate=args.learning_rates[0])
    q = sampling_rate(int(args.batch_patients[0]), data["index"].n_patients)
    steps = steps_per_round(args.epochs[0], q)
    z = calibrate_noise(args.epsilon, args.delta, q, steps * args.rounds)
    dp = DpSgd(model, clip=args.clips[0], noise_multiplier=z, sampling_rate=q)
    epochs = max(1, round(args.epochs[0]))
    runs: dict[str, Any] = {"dp_sgd": dp.train, "fit_1_epoch": 1, f"fit_{epochs}_epochs": epochs}
    dp.train(data["x"], data["y"], data["index"], 2)  # warm-up: tracing of both
    model.fit(data["x"], data["y"], batch_size=args.plain_batch, epochs=1, verbose=0)
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.repeat):
        for name, how in runs.items():
            started = time.perf_counter()
            if callable(how):
                how(data["x"], data["y"], data["index"], steps)
            else:
                model.fit(data["x"], data["y"], batch_size=args.plain_batch, epochs=how, verbose=0)
            seconds[name].append(time.perf_counter() - started)
    return {
        "train_rows": int(data["y"].size),
        "patients": data["index"].n_patients,
        "q": q,
        "z": z,
        "steps": steps,
        "method": dp.method,
        "seconds": seconds,
        "loadavg": os.getloadavg(),
    }


def main(argv: list[str] | None = None) -> None:
    args = _arguments(argv)
    spec, hospitals = load_hospitals(args)
    if args.time_round is not None:
        print(
            json.dumps(
                {
                    "args": {k: str(v) for k, v in vars(args).items()},
                    **time_round(spec, hospitals[args.time_round], args),
                }
            )
        )
        return
    configs: list[dict[str, Any]] = []
    schedule = {"lr_decay": args.lr_decay, "server": args.server_optimiser}
    if args.no_dp:
        configs.append(
            {"epsilon": None, "batch": args.plain_batch, "lr": args.plain_learning_rate, "epochs": args.plain_epochs,
             **schedule}
        )  # fmt: skip
    for clip, batch, lr, epochs, optimizer, noise_seed in itertools.product(
        args.clips, args.batch_patients, args.learning_rates, args.epochs, args.optimizers.split(","), args.noise_seeds
    ):
        configs.append(
            {"epsilon": args.epsilon, "batch": int(batch), "lr": lr, "epochs": epochs, "clip": clip,
             "optimizer": optimizer, "noise_seed": noise_seed, **schedule}
        )  # fmt: skip
    rows = []
    for config in configs:
        row = run_config(spec, hospitals, config, rounds=args.rounds, delta=args.delta, score=args.score)
        rows.append(row)
        print(json.dumps({k: row[k] for k in ("config", "final", "seconds")}), file=sys.stderr, flush=True)
    best = max((r for r in rows if r["config"]["epsilon"] is not None), key=lambda r: r["final"], default=None)
    print(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows, "best": best}, indent=2))


if __name__ == "__main__":
    main()

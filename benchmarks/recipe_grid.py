"""A small grid over the federated training recipe, scored on the hospitals' VALIDATION patients only.

    python -m benchmarks.recipe_grid --data-dir medheaven-demo/data --rounds 10 > grid.json

Reads a split written by ``medheaven demo`` (``<out>/data``), and runs the hospitals' recipe in plaintext in one
process, without the protocol: each hospital keeps its own model and Adam state across rounds, trains
``local_epochs`` epochs from the global model, the global model is the sample-weighted FedAvg average followed by
the server step (``medheaven.federated.server_optimiser``, the code the hospitals run). Encryption does not change
the result (HE equals plaintext FedAvg to ~1e-12), so this is the demo's arithmetic at a fraction of its cost. Each
configuration prints the mean validation ROC-AUC over hospitals after every round; the held-out test file is
never read. Pick on validation, then confirm with the real demo (``benchmarks.peer_flower``).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.peer_flower import load_split, model_spec, roc_auc
from medheaven.federated.fedavg import fedavg
from medheaven.federated.server_optimiser import ServerOptimiser, ServerState, server_step


def run_recipe(split: dict[str, Any], config: dict[str, Any], *, rounds: int, seed: int) -> dict[str, Any]:
    import keras

    from medheaven.model import build_model, compile_model, get_flat_weights, predict_risk, set_flat_weights

    spec = model_spec(split["layout"], seed)
    models = {}
    for h in split["hospitals"]:
        models[h] = build_model(spec)
        compile_model(models[h], learning_rate=config["lr"])
    server = ServerOptimiser.parse(
        config["server"], learning_rate=config.get("server_lr"), momentum=config.get("momentum")
    )
    x0 = get_flat_weights(models[split["hospitals"][0]])
    state = ServerState(0, x0, np.zeros_like(x0), np.zeros_like(x0))
    curve = []
    started = time.monotonic()
    for r in range(1, rounds + 1):
        updates = []
        for h, model in models.items():
            set_flat_weights(model, state.model)
            model.optimizer.learning_rate.assign(config["lr"] * config.get("decay", 1.0) ** (r - 1))
            keras.utils.set_random_seed(seed * 1_000_003 + r * 7919 + len(h))
            x, y = split["train"][h]
            model.fit(x, y, epochs=config["epochs"], batch_size=config["batch"], shuffle=True, verbose=0)
            updates.append((get_flat_weights(model), len(y)))
        state = server_step(server, state, fedavg(updates))
        scorer = models[split["hospitals"][0]]
        set_flat_weights(scorer, state.model)
        curve.append(float(np.nanmean([roc_auc(vy, predict_risk(scorer, vx)) for vx, vy in split["val"].values()])))
    return {"config": config, "validation_roc_auc": curve, "best": max(curve), "final": curve[-1],
            "seconds": time.monotonic() - started}  # fmt: skip


GRID: list[dict[str, Any]] = [
    # the current default, then one change at a time, then the promising combinations
    {"server": "fedavg", "lr": 1e-3, "batch": 64, "epochs": 1},
    {"server": "fedavg", "lr": 1e-3, "batch": 256, "epochs": 1},
    {"server": "fedavg", "lr": 1e-3, "batch": 64, "epochs": 2},
    {"server": "fedavg", "lr": 3e-3, "batch": 64, "epochs": 1, "decay": 0.8},
    {"server": "fedavgm", "server_lr": 1.0, "momentum": 0.5, "lr": 1e-3, "batch": 64, "epochs": 1},
    {"server": "fedavgm", "server_lr": 1.0, "momentum": 0.9, "lr": 1e-3, "batch": 64, "epochs": 1},
    {"server": "fedadam", "server_lr": 0.01, "momentum": 0.9, "lr": 1e-3, "batch": 64, "epochs": 1},
    {"server": "fedadam", "server_lr": 0.003, "momentum": 0.9, "lr": 1e-3, "batch": 64, "epochs": 1},
    {"server": "fedavgm", "server_lr": 1.0, "momentum": 0.5, "lr": 1e-3, "batch": 256, "epochs": 1},
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", type=int, nargs="*", help="indices into the grid")
    args = parser.parse_args()
    split = load_split(args.data_dir)
    chosen = [GRID[i] for i in args.only] if args.only else GRID
    results = [run_recipe(split, config, rounds=args.rounds, seed=args.seed) for config in chosen]
    for item in results:
        print(json.dumps(item), flush=True)


if __name__ == "__main__":
    main()

"""MedHeaven's embedded demo beside Flower's simulation (plaintext FedAvg) on the same split, model and local recipe.

    python -m benchmarks.peer_flower --data ../shared/data/diabetes-130-us/diabetic_data.csv.gz --hospitals 5 \\
        --scheme column:admission_source_id --rounds 10 [--flower-python /path/to/venv-with-flwr/bin/python]

One run does both, one after the other on the same machine, and prints one JSON object: per side the total wall
time (interpreter start to exit, as a user sees it), the time to the end of round 1, each round's time, the peak RSS
of the whole process tree (sampled every 0.1 s: Flower's Ray workers are separate processes, MedHeaven's demo is
one), and the held-out test ROC-AUC of every round's global model. MedHeaven runs first and writes the split;
Flower then reads exactly those hospital files and test file. Flower needs the optional ``bench`` extra
(``pip install -e '.[bench]'``); ``--flower-python`` runs the Flower side under another interpreter (one whose
environment has ``flwr[simulation]``), since Flower pins versions of protobuf and cryptography of its own.

The same recipe on both sides: the MedHeaven readmission MLP (``default_model``), the same per-hospital
patient-level train/validation split (``prepare_hospital_data``, validation share and seed as the hospital
node's), standardisation with the pooled training statistics (what MedHeaven's encrypted statistics phase
computes), ``--local-epochs`` epochs of Adam at ``--learning-rate`` with ``--batch-size`` per round. Flower's
clients are stateless, as in Flower's own examples (a fresh Adam per round); MedHeaven's hospitals keep theirs.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

VALIDATION_FRACTION = 0.1  # HospitalNode's default: the same train rows on both sides
REPO = Path(__file__).resolve().parents[1]


# -- measuring a child process tree ---------------------------------------------------------------------------
def run_measured(command: list[str], *, env: dict[str, str], log: Path) -> tuple[float, int, int]:
    """Run ``command`` (stdout to ``log``, stderr to ``log``.err); returns wall seconds, peak RSS of its process
    tree (bytes) and the exit code."""
    import psutil

    started = time.monotonic()
    with log.open("wb") as out, log.with_suffix(".err").open("wb") as err:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=err, cwd=REPO)
        peak = 0
        stop = threading.Event()

        def sample() -> None:
            nonlocal peak
            root = psutil.Process(process.pid)
            while not stop.is_set():
                try:
                    tree = [root, *root.children(recursive=True)]
                    peak = max(peak, sum(p.memory_info().rss for p in tree if p.is_running()))
                except psutil.Error:
                    pass
                stop.wait(0.1)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        code = process.wait()
        stop.set()
        sampler.join()
    return time.monotonic() - started, peak, code


# -- the shared recipe ----------------------------------------------------------------------------------------
def load_split(data_dir: Path) -> dict[str, Any]:
    """Hospitals' train/validation arrays, standardised with pooled training statistics, and the test set."""
    from medheaven.data import FeatureLayout, Standardiser, SufficientStats, encode_features, prepare_hospital_data
    from medheaven.federated.nodes import schema_reader

    layout = FeatureLayout.load(data_dir / "layout.json")
    reader = schema_reader("prepared", None)
    hospitals = sorted(p.stem for p in data_dir.glob("*.csv") if p.stem != "test")
    data = {
        h: prepare_hospital_data(reader(data_dir / f"{h}.csv"), layout, validation_fraction=VALIDATION_FRACTION)
        for h in hospitals
    }
    pooled = None
    for part in data.values():
        vector = SufficientStats.of(part.train_x).to_vector()
        pooled = vector if pooled is None else pooled + vector
    assert pooled is not None
    standardiser = Standardiser.from_stats(SufficientStats.from_vector(pooled, pooled.size // 3))
    test = reader(data_dir / "test.csv")
    return {
        "layout": layout,
        "hospitals": hospitals,
        "train": {h: (standardiser.apply(d.train_x), d.train_y.astype(np.float32)) for h, d in data.items()},
        "val": {h: (standardiser.apply(d.val_x), d.val_y) for h, d in data.items()},
        "test": (standardiser.apply(encode_features(test, layout)), test["label"].to_numpy()),
    }


def model_spec(layout: Any, seed: int) -> Any:
    from medheaven.model import ModelSpec

    # coordinator.simulation.default_model: the MLP of the centralised baseline
    return ModelSpec(n_features=layout.n_features, kind="mlp", hidden=(64, 32), dropout=0.3, l2=1e-3, seed=seed)


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    from medheaven.evaluation.metrics import binary_metrics

    return float(binary_metrics(labels, scores)["roc_auc"])


# -- the Flower side (runs under --flower-python) -------------------------------------------------------------
def flower_side(args: argparse.Namespace) -> dict[str, Any]:
    import flwr
    from flwr.client import ClientApp, NumPyClient
    from flwr.common import Context, ndarrays_to_parameters
    from flwr.server import ServerApp, ServerAppComponents, ServerConfig
    from flwr.server.strategy import FedAvg
    from flwr.simulation import run_simulation

    from medheaven.model import build_model, compile_model, predict_risk

    started = time.time()
    split = load_split(Path(args.data_dir))
    spec = model_spec(split["layout"], args.seed)
    hospitals = split["hospitals"]
    marks: list[float] = []
    test_auc: list[float] = []
    val_auc: list[float] = []

    class Hospital(NumPyClient):  # type: ignore[misc]
        def __init__(self, hospital: str) -> None:
            self.hospital = hospital
            self.model = build_model(spec)

        def fit(
            self, parameters: list[np.ndarray], config: dict[str, Any]
        ) -> tuple[list[np.ndarray], int, dict[str, Any]]:
            self.model.set_weights(parameters)
            compile_model(self.model, learning_rate=args.learning_rate)
            x, y = split["train"][self.hospital]
            self.model.fit(x, y, epochs=args.local_epochs, batch_size=args.batch_size, shuffle=True, verbose=0)
            return self.model.get_weights(), len(y), {}

    def client_fn(context: Context) -> Any:
        return Hospital(hospitals[int(context.node_config["partition-id"])]).to_client()

    scorer = build_model(spec)

    def evaluate(
        server_round: int, parameters: list[np.ndarray], config: dict[str, Any]
    ) -> tuple[float, dict[str, Any]]:
        marks.append(time.time())
        scorer.set_weights(parameters)
        x, y = split["test"]
        test_auc.append(roc_auc(y, predict_risk(scorer, x)))
        per_hospital = [roc_auc(vy, predict_risk(scorer, vx)) for vx, vy in split["val"].values()]
        val_auc.append(float(np.nanmean(per_hospital)))
        return 0.0, {"test_roc_auc": test_auc[-1]}

    def server_fn(context: Context) -> ServerAppComponents:
        strategy = FedAvg(
            fraction_fit=1.0,
            fraction_evaluate=0.0,
            min_fit_clients=len(hospitals),
            min_available_clients=len(hospitals),
            initial_parameters=ndarrays_to_parameters(build_model(spec).get_weights()),
            evaluate_fn=evaluate,
        )
        return ServerAppComponents(strategy=strategy, config=ServerConfig(num_rounds=args.rounds))

    run_simulation(
        server_app=ServerApp(server_fn=server_fn),
        client_app=ClientApp(client_fn=client_fn),
        num_supernodes=len(hospitals),
        backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}},
    )
    rounds = [b - a for a, b in itertools.pairwise(marks)]
    return {
        "flwr": flwr.__version__,
        "seconds_to_round_1": marks[1] - started if len(marks) > 1 else None,
        "round_seconds": rounds,
        "test_roc_auc_per_round": test_auc,  # index 0: the initial model
        "validation_roc_auc_per_round": val_auc,
    }


# -- the MedHeaven side ---------------------------------------------------------------------------------------
def medheaven_test_aucs(out: Path, run: str, rounds: int) -> list[float]:
    """Held-out ROC-AUC of every committed round's global model (a key holder decrypts each; benchmark only)."""
    from medheaven.crypto.codec import load_secret_keys
    from medheaven.data import encode_features
    from medheaven.federated.nodes import schema_reader
    from medheaven.model import build_model, predict_risk, set_flat_weights
    from medheaven.serving.export import decrypt_global_model, decrypt_standardiser
    from medheaven.store.local import LocalStore

    store, secret = LocalStore(out / "store"), load_secret_keys(out / "keys" / "context.secret")
    first = decrypt_global_model(store, secret, run, 0)
    standardiser = decrypt_standardiser(store, secret, first.description)
    layout = first.description.layout
    test = schema_reader("prepared", None)(out / "data" / "test.csv")
    x, y = standardiser.apply(encode_features(test, layout)), test["label"].to_numpy()
    model = build_model(first.description.model)
    aucs = []
    for r in range(rounds + 1):
        set_flat_weights(model, decrypt_global_model(store, secret, run, r).weights)
        aucs.append(roc_auc(y, predict_risk(model, x)))
    return aucs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=None, help="data file (default: the synthetic sample)")
    parser.add_argument("--hospitals", type=int, default=5)
    parser.add_argument("--scheme", default="column:admission_source_id")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--local-epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=None, help="default: the demo's default")
    parser.add_argument("--learning-rate", type=float, default=None, help="default: the demo's default")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--demo-args", default="", help="extra arguments for `medheaven demo` (e.g. server optimiser)")
    parser.add_argument("--flower-python", default=sys.executable, help="interpreter with flwr[simulation]")
    parser.add_argument("--out", type=Path, default=None, help="working folder (default: a temporary one)")
    parser.add_argument("--skip-flower", action="store_true")
    parser.add_argument("--flower-side", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--data-dir", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.flower_side:
        Path(args.result).write_text(json.dumps(flower_side(args)), encoding="utf-8")
        return

    out = args.out or Path(tempfile.mkdtemp(prefix="peer-flower-"))
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "2"}
    env.pop("MEDHEAVEN_BROKER_URL", None)  # the embedded demo: memory:// transport, one process
    demo_dir = out / "medheaven"
    command = [sys.executable, "-c", "from medheaven.cli import main; main()", "demo", "--hospitals", str(args.hospitals), "--scheme",
               args.scheme, "--rounds", str(args.rounds), "--local-epochs", str(args.local_epochs), "--seed",
               str(args.seed), "--out", str(demo_dir), "--json"]  # fmt: skip
    if args.data is not None:
        command += ["--data", str(args.data.resolve())]
    if args.batch_size is not None:
        command += ["--batch-size", str(args.batch_size)]
    if args.learning_rate is not None:
        command += ["--learning-rate", str(args.learning_rate)]
    command += args.demo_args.split()
    wall, peak, code = run_measured(command, env=env, log=out / "medheaven.log")
    if code != 0:
        raise SystemExit(f"medheaven demo failed (exit {code}); see {out / 'medheaven.err'}")
    report = json.loads((out / "medheaven.log").read_text(encoding="utf-8"))
    history = report["rounds"]
    rounds = [float(r["seconds"]) for r in history]
    batch = args.batch_size or int(_training(demo_dir, report["run"])["batch_size"])
    rate = args.learning_rate or float(_training(demo_dir, report["run"])["learning_rate"])
    result: dict[str, Any] = {
        "command": " ".join(command),
        "load_average_before": os.getloadavg(),
        "recipe": {
            "local_epochs": args.local_epochs,
            "batch_size": batch,
            "learning_rate": rate,
            "rounds": args.rounds,
        },
        "medheaven": {
            "encrypted": report["encrypted"],
            "server_optimiser": report.get("server_optimiser"),
            "wall_seconds": wall,
            "peak_rss_mib": peak / 2**20,
            "round_seconds": rounds,
            "median_round_seconds": float(np.median(rounds)),
            "test_roc_auc_per_round": medheaven_test_aucs(demo_dir, report["run"], args.rounds),
            "validation_roc_auc_per_round": [r["weighted"].get("roc_auc") for r in history],
            "selected_round": report["test"]["round"] if report.get("test") else None,
            "selected_test_roc_auc": report["test"]["metrics"]["roc_auc"] if report.get("test") else None,
        },
    }
    if not args.skip_flower:
        flower_out = out / "flower.json"
        flower_command = [args.flower_python, "-m", "benchmarks.peer_flower", "--flower-side", "--data-dir",
                          str(demo_dir / "data"), "--result", str(flower_out), "--rounds", str(args.rounds),
                          "--local-epochs", str(args.local_epochs), "--batch-size", str(batch), "--learning-rate",
                          str(rate), "--seed", str(args.seed)]  # fmt: skip
        wall, peak, code = run_measured(flower_command, env=env, log=out / "flower.log")
        if code != 0:
            raise SystemExit(f"the Flower side failed (exit {code}); see {out / 'flower.err'}")
        flower = json.loads(flower_out.read_text(encoding="utf-8"))
        flower.update(
            wall_seconds=wall,
            peak_rss_mib=peak / 2**20,
            median_round_seconds=float(np.median(flower["round_seconds"])) if flower["round_seconds"] else None,
            encrypted=False,
        )
        result["flower"] = flower
    result["load_average_after"] = os.getloadavg()
    print(json.dumps(result, indent=2))


def _training(demo_dir: Path, run: str) -> dict[str, Any]:
    config = json.loads((demo_dir / "store" / run / "run.json").read_text(encoding="utf-8"))
    return dict(config["training"])


if __name__ == "__main__":
    main()

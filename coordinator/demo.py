"""``medheaven demo``: a whole encrypted federation on this machine, with a readable per-round table."""

from __future__ import annotations

import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from coordinator.loop import LogObserver
from coordinator.options import LocalRecipe
from coordinator.progress import rounds_table
from coordinator.simulation import (
    SimulationResult,
    default_model,
    prepare_simulation,
    run_in_processes,
    run_in_threads,
    simulation_config,
)
from coordinator.status import RoundProgress
from medheaven.federated.fedavg import fedavg
from medheaven.federated.hospital import HospitalNode
from medheaven.federated.server_optimiser import ServerOptimiser
from medheaven.federated.wire import RoundSpec
from medheaven.privacy.config import DpConfig
from medheaven.settings import Settings

_err = Console(stderr=True)


class DemoObserver(LogObserver):
    """One line per event on stderr; the results table goes to stdout at the end."""

    def __init__(self, *, quiet: bool) -> None:
        self.quiet = quiet
        self._started = time.monotonic()

    def round_started(self, spec: RoundSpec) -> None:
        if not self.quiet:
            what = spec.kind.label(spec.round) if spec.kind.trains else "standardisation statistics"
            _err.print(
                f"[dim]{time.monotonic() - self._started:6.1f}s[/dim] {what}: sent to {', '.join(spec.hospitals)}"
            )

    def round_progress(self, progress: RoundProgress) -> None:
        return None

    def round_finished(self, record: dict[str, Any]) -> None:
        if not self.quiet:
            auc = record["weighted"].get("roc_auc", float("nan"))
            _err.print(
                f"[dim]{time.monotonic() - self._started:6.1f}s[/dim] round {record['round']} committed "
                f"({len(record['participants'])} hospitals, {record['seconds']:.1f}s); validation ROC-AUC of the "
                f"model it started from: {auc:.3f}"
            )

    def message(self, text: str) -> None:
        if not self.quiet:
            _err.print(f"[dim]{time.monotonic() - self._started:6.1f}s[/dim] {text}")


def audit_last_round(nodes: dict[str, HospitalNode], result: SimulationResult, rounds: int) -> dict[str, Any]:
    """HE result vs plaintext FedAvg of the very weights the hospitals encrypted in the last round."""
    first = next(iter(nodes.values()))
    he = first.averaged_weights(result.run, rounds)  # what the aggregator summed, before any server step
    updates = [
        (packed[:-1] / packed[-1], int(packed[-1]))
        for node in nodes.values()
        if (packed := node.audit_updates.get((result.run, rounds))) is not None
    ]
    reference = fedavg(updates)
    error = np.abs(he - reference)
    return {
        "round": rounds,
        "hospitals": len(updates),
        "parameters": int(he.size),
        "max_abs_error": float(error.max()),
        "mean_abs_error": float(error.mean()),
    }


def preload_tensorflow() -> threading.Thread:
    """Import TensorFlow and Keras on a thread while this one prepares the data and keys.

    The embedded demo's worker threads need them from the initial model on, and importing them costs 2-3 s (more
    under load) that were spent with nothing else running, after the statistics phase. A parallel import overlaps
    the parts of either that release the GIL (loading TensorFlow's shared libraries; pandas' CSV tokenizer, zlib,
    numpy). Only the embedded demo does this: a prefork worker's parent must not import TensorFlow before forking.
    """

    def load() -> None:
        import keras  # noqa: F401
        import tensorflow  # noqa: F401

    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    thread = threading.Thread(target=load, name="preload-tensorflow", daemon=True)
    thread.start()
    return thread


def run_demo(
    *,
    out: Path,
    data: Path | None,
    schema: str,
    schema_file: Path | None,
    hospitals: int,
    rounds: int,
    scheme: str,
    seed: int,
    synthetic_rows: int,
    plaintext: bool,
    quiet: bool,
    recipe: LocalRecipe | None = None,
    dp: DpConfig | None = None,
    server: ServerOptimiser | None = None,
) -> dict[str, Any]:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    settings = Settings()
    if out.exists():
        shutil.rmtree(out)
    started = time.monotonic()
    if settings.broker_url.startswith("memory://"):
        preload_tensorflow()
    simulation = prepare_simulation(
        out,
        data=data,
        schema=schema,
        schema_file=schema_file,
        hospitals=hospitals,
        scheme=scheme,
        seed=seed,
        synthetic_rows=synthetic_rows,
    )
    config = simulation_config(
        simulation,
        # one id per demo run, so separate runs do not mix in Flower's task list or in a shared store
        run=f"demo-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}",
        rounds=rounds,
        round_timeout=settings.round_timeout,
        training=(recipe or LocalRecipe()).training(rounds=rounds, dp=dp),
        plaintext=plaintext,
        server=server,
    )
    model = default_model(simulation, seed=seed)
    observer = DemoObserver(quiet=quiet)
    if not quiet:
        mode = (
            "worker processes over " + settings.broker_url
            if not settings.broker_url.startswith("memory")
            else ("one process (memory:// transport, worker threads)")
        )
        _err.print(
            f"{len(simulation.hospitals)} hospitals, {model.parameter_count()} parameters, {mode}"
            + ("  [bold red]PLAINTEXT COMPARISON MODE: NOT ENCRYPTED[/bold red]" if plaintext else "")
        )
    audit: dict[str, Any] | None = None
    # a demo rebuilds its folder on every start, so there is nothing to resume: say so instead of `resume`
    advice = "run `medheaven demo` again (a demo starts afresh; it cannot be resumed)"
    if settings.broker_url.startswith("memory://"):
        result, nodes = run_in_threads(
            simulation, config, model=model, observer=observer, audit=not plaintext, retry_advice=advice
        )
        if not plaintext:
            audit = audit_last_round(nodes, result, rounds)
    else:
        result = run_in_processes(
            simulation, config, model=model, broker_url=settings.broker_url, observer=observer, retry_advice=advice
        )
    report = {
        "run": result.run,
        "out": str(out),
        "hospitals": list(simulation.hospitals),
        "parameters": model.parameter_count(),
        "encrypted": not plaintext,
        "server_optimiser": config.server.to_dict(),
        "rounds": result.history,
        "test": result.test,
        "he_vs_plaintext": audit,
        "seconds": time.monotonic() - started,
    }
    if not quiet:
        console = Console()
        title = f"MedHeaven run {result.run}: per round (metrics of the incoming global model on local validation)"
        console.print(rounds_table(result.history, title=title))
        if result.test:
            metrics = result.test["metrics"]
            console.print(
                f"held-out test (base rate {metrics['base_rate']:.2f}) of the "
                f"global model of round {result.test['round']} (best mean validation ROC-AUC): "
                f"ROC-AUC {metrics['roc_auc']:.3f}, PR-AUC {metrics['pr_auc']:.3f}, "
                f"Brier {metrics['brier']:.4f}"
            )
        if audit:
            console.print(
                f"HE vs plaintext FedAvg of the same updates (round {audit['round']}, {audit['parameters']} weights): "
                f"max abs error {audit['max_abs_error']:.2e}, mean {audit['mean_abs_error']:.2e}"
            )
        console.print(f"store: {simulation.store_dir}  ({report['seconds']:.0f}s in all)")
    return report

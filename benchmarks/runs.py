"""What the federation benchmarks share: the data split options, the simulation and model they prepare, how a run
is driven and timed, and the retry rule.

Redis database 15 is shared with the test suite, whose fixtures flush it and whose workers consume the same queue
names: a measurement that loses its task messages fails its quorum (or times out) and is measured again from
scratch instead of aborting the benchmark. Every retry is printed to stderr and counted in the row (``retries``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from coordinator import simulation as federation
from coordinator.options import LR_DECAY, SERVER_OPTIMISER
from coordinator.run import RunConfig
from coordinator.simulation import Simulation, SimulationResult
from medheaven.crypto.codec import Parameters
from medheaven.federated.server_optimiser import ServerOptimiser
from medheaven.federated.wire import LocalTraining
from medheaven.model import ModelSpec

#: Where a benchmark's workers meet by default: database 13 of the local Redis, not the test suite's database 15
#: (``tests/conftest.py``), which the suite flushes; one beside the other would take each other's tasks.
BENCHMARK_BROKER_URL = "redis://127.0.0.1:6379/13"

# the options of add_split_arguments, by their argparse names, which are prepare_simulation's keywords
SPLIT_OPTIONS = ("data", "schema", "hospitals", "scheme", "seed", "synthetic_rows")


def add_schedule_arguments(parser: argparse.ArgumentParser) -> None:
    """What every row of a training benchmark shares with `medheaven-coordinator run`'s defaults: the learning-rate
    schedule and the server step."""
    parser.add_argument(
        "--lr-decay", type=float, default=LR_DECAY, help="every row: rate of round r = lr * decay^(r-1)"
    )
    parser.add_argument("--server-optimiser", default=SERVER_OPTIMISER, help="every row: fedavg | fedavgm | fedadam")


def add_split_arguments(parser: argparse.ArgumentParser, *, seed_help: str) -> None:
    """The data set and its split across hospitals: one split and key set serves every run of a benchmark."""
    parser.add_argument("--data", type=Path, default=None, help="data file (default: synthetic)")
    parser.add_argument("--schema", default="diabetes130")
    parser.add_argument("--hospitals", type=int, default=5)
    parser.add_argument("--scheme", default="column:admission_source_id")
    parser.add_argument("--seed", type=int, default=42, help=seed_help)
    parser.add_argument("--synthetic-rows", type=int, default=20000)


def split_simulation(args: argparse.Namespace, *, params: Parameters | None = None) -> Simulation:
    """The simulation the split options of :func:`add_split_arguments` describe, prepared under ``args.out``."""
    split: dict[str, Any] = {name: getattr(args, name) for name in SPLIT_OPTIONS}
    return federation.prepare_simulation(args.out, params=params, **split)


def fresh_split_and_model(
    args: argparse.Namespace, *, params: Parameters | None = None
) -> tuple[Simulation, ModelSpec]:
    """A new split under ``args.out`` (what an earlier benchmark left there is removed) and the model of the
    ``--hidden``, ``--dropout`` and ``--l2`` options; one of each serves every run of the benchmark."""
    shutil.rmtree(args.out, ignore_errors=True)
    simulation = split_simulation(args, params=params)
    hidden = tuple(int(w) for w in args.hidden.split(",") if w)
    return simulation, federation.default_model(simulation, hidden=hidden, dropout=args.dropout, l2=args.l2, seed=0)


def results_header(args: argparse.Namespace) -> dict[str, Any]:
    """The first keys of a benchmark's JSON: its arguments, and the machine's cores and load when it starts."""
    return {
        "args": {k: str(v) for k, v in vars(args).items()},
        "nproc": os.cpu_count(),
        "loadavg_start": os.getloadavg(),
    }


def timed_run(
    simulation: Simulation,
    args: argparse.Namespace,
    *,
    run: str,
    training: LocalTraining,
    model: ModelSpec,
    plaintext: bool = False,
    server: ServerOptimiser | None = None,
) -> tuple[RunConfig, SimulationResult, float]:
    """Run ``run`` of ``--rounds`` rounds (``--round-timeout`` each) to its end in worker threads, or on
    ``--broker-url`` with worker processes, as ``--mode`` says; its configuration, result and wall time in seconds."""
    config = federation.simulation_config(
        simulation, run=run, rounds=args.rounds, round_timeout=args.round_timeout, training=training,
        plaintext=plaintext, server=server,
    )  # fmt: skip
    started = time.perf_counter()
    if args.mode == "threads":
        result, _ = federation.run_in_threads(simulation, config, model=model)
    else:
        result = federation.run_in_processes(simulation, config, model=model, broker_url=args.broker_url)
    return config, result, time.perf_counter() - started


def with_retries(
    measure: Callable[[int], dict[str, Any]], *, retries: int, retry_on: tuple[type[Exception], ...]
) -> dict[str, Any]:
    """``measure(attempt)`` until it returns, at most ``retries`` times again after a ``retry_on`` failure."""
    for attempt in range(retries + 1):
        try:
            row = measure(attempt)
        except retry_on as exc:
            print(json.dumps({"failed": str(exc)[:300]}), file=sys.stderr)
            if attempt == retries:
                raise
        else:
            row["retries"] = attempt
            return row
    raise AssertionError("unreachable")

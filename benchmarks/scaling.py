"""How round time scales with the number of hospitals, and what a second worker process on one queue buys.

Part 1 (hospitals): the encrypted federation on real worker processes over Redis with 2, 4, 8, 16 hospitals, one
worker process each, the same synthetic rows per hospital (so each hospital's work is constant and the growth is
the cost of sharing the machine's cores and the single aggregator). Reported per K: median round time after the
first round and its critical-path breakdown (benchmarks.federation.round_breakdown).

Part 2 (shared queue): one committed run, then the same batch of scoring tasks sent to one hospital's queue served
by one worker process and by two (same total work). A federation round gives each hospital exactly one task, so
extra processes on a queue only pay when several tasks for that hospital are queued at once (scoring, validation,
several runs); part 2 measures that case, and also the round time of the federation itself with 1 vs 2 processes.

    python -m benchmarks.scaling [--hospitals 2,4,8,16] [--rows-per-hospital 800] [--rounds 3] [--tasks 6]

Prints one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

from celery.exceptions import TimeoutError as CeleryTimeoutError

from benchmarks.federation import round_breakdown
from benchmarks.runs import BENCHMARK_BROKER_URL, with_retries
from coordinator.loop import Coordinator
from coordinator.run import create_run
from coordinator.simulation import default_model, prepare_simulation, run_in_processes, simulation_config
from coordinator.transport import CeleryTransport
from medheaven.errors import MedHeavenError
from medheaven.federated.wire import LocalTraining
from medheaven.settings import Settings

# a measurement that loses its messages to the test suite sharing Redis database 15 fails one of these ways
RETRY_ON = (MedHeavenError, CeleryTimeoutError)


def _median_after_first(values: list[float]) -> float:
    return statistics.median(values[1:] or values)


def scale_hospitals(root: Path, *, count: int, args: argparse.Namespace) -> dict[str, Any]:
    simulation = prepare_simulation(
        root, hospitals=count, scheme="iid", synthetic_rows=count * args.rows_per_hospital, seed=0
    )
    model = default_model(simulation)
    config = simulation_config(
        simulation,
        run=f"scale-{count}",
        rounds=args.rounds,
        round_timeout=args.round_timeout,
        training=LocalTraining(epochs=1, batch_size=256),
        score_test=False,
    )
    started = time.perf_counter()
    result = run_in_processes(simulation, config, model=model, broker_url=args.broker_url, ready_timeout=600)
    wall = time.perf_counter() - started
    seconds = [float(r["seconds"]) for r in result.history]
    store = simulation.store()
    breakdown = [round_breakdown(store, config.run, int(r["round"])) for r in result.history]
    after_first = breakdown[1:] or breakdown
    return {
        "hospitals": count,
        "worker_processes": count,
        "parameters": model.parameter_count(),
        "round_seconds": seconds,
        "median_round_seconds_after_first": _median_after_first(seconds),
        "critical_path_median_after_first": {
            key: statistics.median(r[key] for r in after_first) for key in after_first[0]
        },
        "wall_seconds_including_startup": wall,
        "loadavg": os.getloadavg(),
    }


def shared_queue(root: Path, *, workers: int, args: argparse.Namespace) -> dict[str, Any]:
    """Two hospitals; the first one's queue is served by ``workers`` processes."""
    from workers.app import create_app
    from workers.cluster import ProcessCluster

    simulation = prepare_simulation(root, hospitals=2, scheme="iid", synthetic_rows=2 * args.rows_per_hospital)
    first, second = simulation.hospitals
    config = simulation_config(
        simulation, run=f"shared-{workers}", rounds=args.rounds, round_timeout=args.round_timeout, score_test=True
    )
    app = create_app(Settings(broker_url=args.broker_url, store=simulation.store_url()), hospitals=[first, second])
    store = simulation.store()
    create_run(store, config, model=default_model(simulation), layout=simulation.layout)
    with ProcessCluster(base_env={}, log_dir=root / "logs") as cluster:
        cluster.start_aggregator(simulation.aggregator_env(broker_url=args.broker_url))
        for _ in range(workers):
            cluster.start_hospital(first, simulation.hospital_env(first, broker_url=args.broker_url))
        cluster.start_hospital(second, simulation.hospital_env(second, broker_url=args.broker_url))
        cluster.wait_ready(app, timeout=600)
        history = Coordinator(store, CeleryTransport(app), config, poll_interval=0.1).run()
        started = time.perf_counter()
        results = [
            app.send_task(
                "medheaven.hospital.evaluate_test",
                args=(config.run, args.rounds, first),  # the test file's path is read from the run's config
                queue=f"hospital.{first}",
            )
            for _ in range(args.tasks)
        ]
        for result in results:
            result.get(timeout=args.round_timeout)
        drain = time.perf_counter() - started
        served_by = sorted({str(r.worker).split("@", 1)[0] for r in results})
    seconds = [float(r["seconds"]) for r in history]
    return {
        "processes_on_queue": workers,
        "round_seconds": seconds,
        "median_round_seconds_after_first": _median_after_first(seconds),
        "tasks": args.tasks,
        "drain_seconds": drain,
        "tasks_per_second": args.tasks / drain,
        "served_by": served_by,
        "loadavg": os.getloadavg(),
    }


def _scale_attempt(attempt: int, *, count: int, args: argparse.Namespace) -> dict[str, Any]:
    return scale_hospitals(args.out / f"k{count}-{attempt}", count=count, args=args)


def _shared_attempt(attempt: int, *, workers: int, args: argparse.Namespace) -> dict[str, Any]:
    return shared_queue(args.out / f"shared{workers}-{attempt}", workers=workers, args=args)


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hospitals", default="2,4,8,16")
    parser.add_argument("--rows-per-hospital", type=int, default=800)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tasks", type=int, default=6, help="scoring tasks queued for the shared-queue comparison")
    parser.add_argument("--skip-shared", action="store_true")
    parser.add_argument("--round-timeout", type=float, default=300.0)
    parser.add_argument("--retries", type=int, default=3)
    parser.add_argument("--broker-url", default=BENCHMARK_BROKER_URL)
    parser.add_argument("--out", type=Path, default=Path("benchmark-runs/scaling"))
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = _arguments(argv)
    shutil.rmtree(args.out, ignore_errors=True)
    results: dict[str, Any] = {
        "args": {k: str(v) for k, v in vars(args).items()},
        "nproc": os.cpu_count(),
        "loadavg_start": os.getloadavg(),
        "hospitals": [],
        "shared_queue": [],
    }
    for count in (int(k) for k in args.hospitals.split(",") if k):
        row = with_retries(partial(_scale_attempt, count=count, args=args), retries=args.retries, retry_on=RETRY_ON)
        results["hospitals"].append(row)
        print(f"K={count:2d}: median round {row['median_round_seconds_after_first']:.2f}s", file=sys.stderr)
    if not args.skip_shared:
        for workers in (1, 2):
            row = with_retries(
                partial(_shared_attempt, workers=workers, args=args), retries=args.retries, retry_on=RETRY_ON
            )
            results["shared_queue"].append(row)
            print(
                f"{workers} process(es) on one queue: {args.tasks} tasks in {row['drain_seconds']:.2f}s, "
                f"round {row['median_round_seconds_after_first']:.2f}s",
                file=sys.stderr,
            )
        one, two = results["shared_queue"]
        results["shared_queue_speedup_drain"] = one["drain_seconds"] / two["drain_seconds"]
        results["shared_queue_round_ratio"] = (
            two["median_round_seconds_after_first"] / one["median_round_seconds_after_first"]
        )
    base = results["hospitals"][0] if results["hospitals"] else None
    if base:
        for row in results["hospitals"]:
            row["round_time_vs_first"] = (
                row["median_round_seconds_after_first"] / base["median_round_seconds_after_first"]
            )
    results["loadavg_end"] = os.getloadavg()
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

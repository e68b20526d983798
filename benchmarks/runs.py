"""What the federation benchmarks share: the data split options, the simulation they prepare, and the retry rule.

Redis database 15 is shared with the test suite, whose fixtures flush it and whose workers consume the same queue
names: a measurement that loses its task messages fails its quorum (or times out) and is measured again from
scratch instead of aborting the benchmark. Every retry is printed to stderr and counted in the row (``retries``).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from coordinator.simulation import Simulation, prepare_simulation
from medheaven.crypto.codec import Parameters

# the options of add_split_arguments, by their argparse names, which are prepare_simulation's keywords
SPLIT_OPTIONS = ("data", "schema", "hospitals", "scheme", "seed", "synthetic_rows")


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
    return prepare_simulation(args.out, params=params, **split)


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

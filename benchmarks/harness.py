"""The set-up the federation benchmarks share: the split's command-line arguments, the split itself, and retries.

One definition each, so ``benchmarks.federation``, ``benchmarks.privacy`` and ``benchmarks.dp_grid`` split the same
data the same way from the same flags, and retry a lost run the same way.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from coordinator.simulation import Simulation, prepare_simulation
from medheaven.crypto.codec import Parameters
from medheaven.errors import MedHeavenError

T = TypeVar("T")


def add_split_arguments(
    parser: argparse.ArgumentParser, *, seed_help: str = "split seed (the baseline uses 42)"
) -> None:
    """--data, --schema, --hospitals, --scheme, --seed and --synthetic-rows: which data, split how."""
    parser.add_argument("--data", type=Path, default=None, help="data file (default: synthetic)")
    parser.add_argument("--schema", default="diabetes130")
    parser.add_argument("--hospitals", type=int, default=5)
    parser.add_argument("--scheme", default="column:admission_source_id")
    parser.add_argument("--seed", type=int, default=42, help=seed_help)
    parser.add_argument("--synthetic-rows", type=int, default=20000)


def split_from_arguments(args: argparse.Namespace, *, params: Parameters | None = None) -> Simulation:
    """One split and one key set in a fresh ``args.out`` (every run of a benchmark sees the same hospitals and rows)."""
    shutil.rmtree(args.out, ignore_errors=True)
    return prepare_simulation(
        args.out,
        data=args.data,
        schema=args.schema,
        hospitals=args.hospitals,
        scheme=args.scheme,
        seed=args.seed,
        synthetic_rows=args.synthetic_rows,
        params=params,
    )


def with_retries(
    measure: Callable[[int], T],
    *,
    retries: int,
    label: dict[str, Any],
    errors: tuple[type[BaseException], ...] = (MedHeavenError,),
) -> tuple[T, int]:
    """``measure(attempt)`` until it returns, at most ``retries + 1`` times; (its result, the attempt that returned).

    Redis database 15 is shared with the test suite, whose fixtures flush it: a run that loses its task messages
    fails its quorum and is started again under a fresh run id instead of aborting the benchmark."""
    for attempt in range(retries + 1):
        try:
            return measure(attempt), attempt
        except errors as exc:
            print(json.dumps({**label, "attempt": attempt, "error": str(exc)[:400]}), file=sys.stderr)
            if attempt == retries:
                raise
    raise AssertionError("unreachable")

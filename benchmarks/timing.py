"""The one timing rule of the micro-benchmarks: the best of ``repeat`` runs, which is the run least disturbed by
the rest of the machine (a mean would fold other processes' load into the number)."""

from __future__ import annotations

import time
from collections.abc import Callable


def best_time(action: Callable[[], object], repeat: int) -> float:
    """Seconds of the fastest of ``repeat`` calls of ``action``."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        action()
        times.append(time.perf_counter() - start)
    return min(times)

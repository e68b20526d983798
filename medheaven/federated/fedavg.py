"""Plaintext reference FedAvg (McMahan et al., 2017): the oracle every encrypted result is checked against."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def fedavg(updates: Sequence[tuple[np.ndarray, int]]) -> np.ndarray:
    """Weighted mean of flat weight vectors, weights = sample counts."""
    if not updates:
        raise ValueError("fedavg needs at least one update")
    total = sum(n for _, n in updates)
    if total <= 0:
        raise ValueError("fedavg needs a positive total sample count")
    acc = np.zeros_like(np.asarray(updates[0][0], dtype=np.float64))
    for weights, n in updates:
        acc += np.asarray(weights, dtype=np.float64) * n
    return acc / total


def weighted_mean(values: Sequence[tuple[float, float]]) -> float:
    """Mean of (value, weight) pairs, ignoring non-finite values (e.g. ROC-AUC of a single-class split)."""
    pairs = [(v, w) for v, w in values if np.isfinite(v) and w > 0]
    total = sum(w for _, w in pairs)
    return float(sum(v * w for v, w in pairs) / total) if total else float("nan")


def mean_metrics(
    per_hospital: dict[str, dict[str, float]], names: tuple[str, ...] = ("loss", "roc_auc", "pr_auc")
) -> dict[str, float]:
    """Validation metrics averaged over hospitals. Unweighted: hospitals do not report their validation sizes,
    which would reveal their sample counts (an ``examples`` value, when present, is used as the weight)."""
    return {
        name: weighted_mean([(m.get(name, float("nan")), m.get("examples", 1.0)) for m in per_hospital.values()])
        for name in names
    }

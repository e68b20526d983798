"""No hospital's validation-set size can be recovered from the metrics it releases (medheaven.federated.release)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from federation_support import small_simulation

from coordinator.simulation import default_model, run_in_threads, simulation_config
from medheaven.evaluation.metrics import binary_metrics
from medheaven.federated.release import RELEASE_DECIMALS, released_metrics
from medheaven.report import write_report

#: metrics that are ratios of row counts, k / n for the n validation rows
COUNT_RATIOS = ("accuracy", "base_rate")
SEARCH = range(20, 6001)


def _half_width(value: float) -> float:
    """Half the last decimal place of a value as stored or sent: what an attacker knows of its rounding."""
    exponent = Decimal(repr(float(value))).as_tuple().exponent
    assert isinstance(exponent, int)
    return 0.5 * 10.0**exponent


def consistent_sizes(values: list[float]) -> list[int]:
    """The attacker: every n in SEARCH for which each value is some k / n up to its printed precision."""
    bounds = [(v, _half_width(v) + 1e-12) for v in values]
    return [n for n in SEARCH if all(abs(round(v * n) / n - v) <= h for v, h in bounds)]


def _labels_and_scores(n: int, positives: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = np.zeros(n, dtype=np.int64)
    labels[:positives] = 1
    scores = np.clip(0.1 + 0.3 * labels + rng.normal(0, 0.2, n), 0.01, 0.99)
    return labels, scores


def test_release_attacker_recovers_size_from_full_precision_metrics() -> None:
    # the control: the attack of the issue (smallest common denominator) works on unrounded metrics
    rounds = [binary_metrics(*_labels_and_scores(527, 58, seed)) for seed in range(5)]
    values = [m[name] for m in rounds for name in COUNT_RATIOS]
    assert consistent_sizes(values)[0] == 527


@pytest.mark.parametrize("n", [120, 527, 2626])
def test_release_rounded_metrics_leave_every_size_above_100_consistent(n: int) -> None:
    rounds = [released_metrics(binary_metrics(*_labels_and_scores(n, n // 9, seed))) for seed in range(40)]
    assert all("examples" not in m for m in rounds)
    sizes = consistent_sizes([m[name] for m in rounds for name in COUNT_RATIOS])
    assert n in sizes
    assert set(range(100, SEARCH.stop)) <= set(sizes)


def test_release_drops_unlisted_and_non_finite_metrics() -> None:
    released = released_metrics({"roc_auc": float("nan"), "examples": 527.0, "accuracy": 0.884, "extra": 1.0})
    assert released == {"accuracy": 0.88}
    assert set(RELEASE_DECIMALS) == {"roc_auc", "pr_auc", "brier", "loss", "accuracy", "base_rate"}


def _metric_dicts(value: Any, hospital: str, owner: str | None = None) -> Iterator[dict[str, Any]]:
    """Every metrics mapping in a JSON tree attributed to ``hospital`` (by a "hospital" field or a hospital key)."""
    if isinstance(value, dict):
        here = value.get("hospital", owner) if isinstance(value.get("hospital", owner), str) else owner
        if here == hospital and any(name in value for name in COUNT_RATIOS):
            yield value
        for key, child in value.items():
            yield from _metric_dicts(child, hospital, key if key == hospital else here)
    elif isinstance(value, list):
        for child in value:
            yield from _metric_dicts(child, hospital, owner)


def test_release_federation_outputs_do_not_reveal_validation_sizes(tmp_path: Path) -> None:
    simulation = small_simulation(tmp_path, hospitals=3, rows=3000)
    config = simulation_config(simulation, run="release", rounds=3, round_timeout=240)
    result, nodes = run_in_threads(simulation, config, model=default_model(simulation))
    report = write_report(simulation.store(), result.run, tmp_path / "report")
    documents: list[Any] = [result.history, result.test]
    for path in sorted(simulation.store_dir.rglob("*.json")):
        documents.append(json.loads(path.read_text()))
    released_text = json.dumps(documents)
    assert '"examples"' not in released_text
    # the operator's run config names the test file; the hospital's task result does not
    assert str(simulation.test_file) not in json.dumps(result.test)
    report_text = report.report.read_text()
    for hospital, node in nodes.items():
        size = int(node._run(result.run).data.val_y.size)  # type: ignore[union-attr]
        metrics = [m for doc in documents for m in _metric_dicts(doc, hospital)]
        values = [float(m[name]) for m in metrics for name in COUNT_RATIOS if name in m]
        assert len(values) >= 6, f"{hospital}: the attacker found only {values}"
        sizes = consistent_sizes(values)
        assert size in sizes and set(range(100, SEARCH.stop)) <= set(sizes), (hospital, size, sizes[:5])
        assert not re.search(rf"\b{size}\b", report_text), f"{hospital}'s validation size {size} is in the report"

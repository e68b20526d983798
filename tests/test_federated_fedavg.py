"""Plaintext reference FedAvg: the oracle the encrypted fold is checked against, so it is checked by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from medheaven.federated.fedavg import fedavg, weighted_mean


def test_fedavg_hand_computed_example() -> None:
    # (1*[1, 2, -4] + 3*[3, 6, 0]) / 4 = [10, 20, -4] / 4
    result = fedavg([(np.array([1.0, 2.0, -4.0]), 1), (np.array([3.0, 6.0, 0.0]), 3)])
    np.testing.assert_array_equal(result, [2.5, 5.0, -1.0])


def test_fedavg_three_hospitals_hand_computed() -> None:
    # weights 2, 3, 5 (total 10): 0.2*10 + 0.3*(-10) + 0.5*4 = 1.0
    updates = [(np.array([10.0]), 2), (np.array([-10.0]), 3), (np.array([4.0]), 5)]
    assert fedavg(updates)[0] == pytest.approx(1.0, abs=1e-15)


def test_fedavg_single_update_is_its_weights() -> None:
    weights = np.array([0.25, -0.5, 0.125])
    np.testing.assert_array_equal(fedavg([(weights, 1234)]), weights)


def test_fedavg_equal_counts_is_the_plain_mean() -> None:
    rng = np.random.default_rng(0)
    vectors = [rng.normal(size=50) for _ in range(4)]
    np.testing.assert_allclose(fedavg([(v, 7) for v in vectors]), np.mean(vectors, axis=0), rtol=1e-12)


def test_fedavg_is_order_independent() -> None:
    rng = np.random.default_rng(1)
    updates = [(rng.normal(size=20), int(n)) for n in rng.integers(1, 1000, size=5)]
    np.testing.assert_allclose(fedavg(updates), fedavg(updates[::-1]), rtol=1e-12)


def test_fedavg_does_not_modify_its_inputs_and_accepts_float32() -> None:
    weights = np.array([1.0, 2.0], dtype=np.float32)
    result = fedavg([(weights, 2), (weights, 2)])
    assert result.dtype == np.float64
    np.testing.assert_array_equal(weights, [1.0, 2.0])


@pytest.mark.parametrize("updates", [[], [(np.zeros(2), 0)], [(np.zeros(2), 1), (np.zeros(2), -1)]])
def test_fedavg_refuses_no_updates_or_no_samples(updates: list[tuple[np.ndarray, int]]) -> None:
    with pytest.raises(ValueError, match="fedavg needs"):
        fedavg(updates)


def test_weighted_mean_hand_computed() -> None:
    # (0.8*10 + 0.6*30) / 40 = 26 / 40
    assert weighted_mean([(0.8, 10), (0.6, 30)]) == pytest.approx(0.65)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_weighted_mean_ignores_non_finite_values(bad: float) -> None:
    assert weighted_mean([(0.8, 10), (bad, 5), (0.6, 30)]) == pytest.approx(0.65)


def test_weighted_mean_ignores_zero_weights() -> None:
    assert weighted_mean([(0.8, 10), (0.1, 0), (0.6, 30)]) == pytest.approx(0.65)


@pytest.mark.parametrize("values", [[], [(math.nan, 5)], [(0.5, 0)]])
def test_weighted_mean_of_nothing_is_nan(values: list[tuple[float, float]]) -> None:
    assert math.isnan(weighted_mean(values))

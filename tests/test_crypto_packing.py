"""Packing: pre-scaling by n_k, the refusals that protect every hospital's result, and chunking across slots."""

from __future__ import annotations

import math

import numpy as np
import pytest
from crypto_fixtures import DEFAULT_PARAMS, WIDE_PARAMS, secret_context

from medheaven.crypto.context import SecretContext
from medheaven.crypto.packing import decrypt_chunks, encrypt_chunks, pack_update, stats_scale_bits, unpack_average
from medheaven.crypto.planning import CkksParameters
from medheaven.errors import PackingError

SLOTS = DEFAULT_PARAMS.slots


@pytest.fixture(scope="module")
def secret() -> SecretContext:
    return secret_context(DEFAULT_PARAMS)


@pytest.mark.parametrize("n_samples", [1, 7, 5000, DEFAULT_PARAMS.max_total_samples])
@pytest.mark.parametrize("length", [1, 3, 1000])
def test_packing_pack_unpack_round_trip(n_samples: int, length: int) -> None:
    weights = np.random.default_rng(length).normal(0.0, 0.3, size=length)
    packed = pack_update(weights, n_samples, params=DEFAULT_PARAMS)
    assert packed.shape == (length + 1,)
    assert packed[-1] == n_samples
    np.testing.assert_array_equal(packed[:-1], weights * n_samples)
    average, total = unpack_average(packed)
    assert total == n_samples
    np.testing.assert_allclose(average, weights, rtol=1e-15, atol=0)


def test_packing_pack_accepts_float32_and_lists() -> None:
    packed = pack_update(np.array([0.5, -0.25], dtype=np.float32), 4, params=DEFAULT_PARAMS)
    assert packed.dtype == np.float64
    np.testing.assert_array_equal(packed, [2.0, -1.0, 4.0])
    np.testing.assert_array_equal(pack_update([0.5], 2, params=DEFAULT_PARAMS), [1.0, 2.0])  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("index", [0, 1, 17, 999])
def test_packing_refuses_non_finite_weights_naming_the_index(bad: float, index: int) -> None:
    weights = np.zeros(1000)
    weights[index] = bad
    if index != 999:
        weights[999] = math.nan  # a later bad value must not hide the first one
    with pytest.raises(PackingError) as caught:
        pack_update(weights, 10, params=DEFAULT_PARAMS)
    assert f"weight {index} is {bad}" in str(caught.value)
    assert "refusing to encrypt" in str(caught.value)


@pytest.mark.parametrize("magnitude", [8.000001, 9.0, 1e6])
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_packing_refuses_weights_above_max_abs_weight(magnitude: float, sign: float) -> None:
    weights = np.zeros(50)
    weights[20] = sign * magnitude
    with pytest.raises(PackingError, match=r"exceeds the federation's bound max_abs_weight=8\.0"):
        pack_update(weights, 10, params=DEFAULT_PARAMS)


def test_packing_accepts_weights_exactly_at_max_abs_weight() -> None:
    weights = np.array([DEFAULT_PARAMS.max_abs_weight, -DEFAULT_PARAMS.max_abs_weight])
    packed = pack_update(weights, DEFAULT_PARAMS.max_total_samples, params=DEFAULT_PARAMS)
    assert packed[0] == DEFAULT_PARAMS.max_abs_weight * DEFAULT_PARAMS.max_total_samples


@pytest.mark.parametrize("n_samples", [0, -1, DEFAULT_PARAMS.max_total_samples + 1, 10**12])
def test_packing_refuses_sample_count_out_of_range(n_samples: int) -> None:
    with pytest.raises(PackingError, match=f"sample count {n_samples} is outside 1..1000000"):
        pack_update(np.zeros(5), n_samples, params=DEFAULT_PARAMS)


@pytest.mark.parametrize("weights", [np.zeros(0), np.zeros((2, 3)), np.float64(1.0)], ids=["empty", "2d", "scalar"])
def test_packing_refuses_non_flat_or_empty_weights(weights: np.ndarray) -> None:
    with pytest.raises(PackingError, match="non-empty flat vector"):
        pack_update(weights, 10, params=DEFAULT_PARAMS)


@pytest.mark.parametrize("length", [1, SLOTS - 1, SLOTS, SLOTS + 1, 3 * SLOTS + 5])
def test_packing_chunks_round_trip_across_slot_boundaries(secret: SecretContext, length: int) -> None:
    values = np.random.default_rng(length).uniform(-8e6, 8e6, size=length)
    chunks = encrypt_chunks(secret, values)
    assert len(chunks) == DEFAULT_PARAMS.chunk_count(length) == math.ceil(length / SLOTS)
    decrypted = decrypt_chunks(secret, chunks, length=length)
    assert decrypted.shape == (length,)
    # slot values are pre-scaled sums: the averaged error is the slot error over the sample total
    assert np.max(np.abs(decrypted - values)) <= DEFAULT_PARAMS.error_bound * DEFAULT_PARAMS.max_total_samples
    assert np.max(np.abs(decrypted - values)) < 1e-6


@pytest.mark.parametrize("params", [DEFAULT_PARAMS, WIDE_PARAMS], ids=["n4096", "n8192"])
def test_packing_encrypted_update_unpacks_to_the_weights(params: CkksParameters) -> None:
    secret = secret_context(params)
    weights = np.clip(np.random.default_rng(3).normal(0.0, 0.3, size=params.slots + 10), -1.0, 1.0)
    packed = pack_update(weights, 4321, params=params)
    chunks = encrypt_chunks(secret, packed)
    average, total = unpack_average(decrypt_chunks(secret, chunks, length=packed.size))
    assert total == 4321
    assert np.max(np.abs(average - weights)) <= params.error_bound


def test_packing_encrypt_chunks_uses_the_requested_scale(secret: SecretContext) -> None:
    values = np.array([123456.0, -0.5])
    chunk = encrypt_chunks(secret, values, scale_bits=20)[0]
    decrypted = decrypt_chunks(secret, (chunk,), length=2)
    # at 2**20 the fresh noise (~2**12 scaled units) is ~2**-8, far coarser than at the planned 2**35
    assert 1e-6 < np.max(np.abs(decrypted - values)) < 2.0**-4


@pytest.mark.parametrize("total", [0.0, 0.4, -3.0])
def test_packing_unpack_refuses_empty_total(total: float) -> None:
    with pytest.raises(PackingError, match="sample total"):
        unpack_average(np.array([1.0, 2.0, total]))


@pytest.mark.parametrize("total", [math.nan, math.inf, -math.inf])
def test_packing_unpack_refuses_non_finite_total_with_packing_error(total: float) -> None:
    """A corrupt aggregate must raise PackingError, not a bare ValueError/OverflowError from ``round(nan)``."""
    with pytest.raises(PackingError, match="sample total"):
        unpack_average(np.array([1.0, 2.0, total]))


def test_packing_unpack_rounds_the_noisy_total() -> None:
    average, total = unpack_average(np.array([10.0, -20.0, 10.0000003]))
    assert total == 10
    np.testing.assert_allclose(average, [1.0, -2.0])


@pytest.mark.parametrize(
    ("max_abs_feature", "expected"),
    [(1.0, DEFAULT_PARAMS.scale_bits), (0.5, DEFAULT_PARAMS.scale_bits), (100.0, 24), (1000.0, 18)],
)
def test_packing_stats_scale_bits(max_abs_feature: float, expected: int) -> None:
    bits = stats_scale_bits(DEFAULT_PARAMS, max_abs_feature=max_abs_feature)
    assert bits == expected
    # the sum of squares at its bound still fits the data prime with two bits to spare
    bound = DEFAULT_PARAMS.max_total_samples * max(max_abs_feature, 1.0) ** 2
    assert math.log2(bound) + bits <= DEFAULT_PARAMS.data_bits - 2


def test_packing_stats_scale_bits_refuses_features_that_cannot_fit() -> None:
    with pytest.raises(PackingError, match="max_abs_feature"):
        stats_scale_bits(DEFAULT_PARAMS, max_abs_feature=1e5)

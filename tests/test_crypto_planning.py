"""CKKS parameter planning: the plan is the cheapest secure one, and its overflow and noise bounds hold when measured."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import tenseal as ts
from crypto_fixtures import DEFAULT_PARAMS, WIDE_PARAMS, public_context, secret_context
from hypothesis import given, settings
from hypothesis import strategies as st

from medheaven.crypto import planning
from medheaven.crypto.context import create_key_material
from medheaven.crypto.packing import decrypt_chunks, encrypt_chunks
from medheaven.crypto.planning import NOISE_BITS, SECURITY_128_MAX_BITS, CkksParameters, plan_ckks_parameters
from medheaven.errors import ParameterPlanningError


def _sum_bound(params: CkksParameters) -> float:
    """The largest magnitude a slot of the encrypted sum may reach: max_total_samples x max(max_abs_weight, 1)."""
    return params.max_total_samples * max(params.max_abs_weight, 1.0)


def _security_ok(params: CkksParameters) -> bool:
    return sum(params.coeff_mod_bit_sizes) <= SECURITY_128_MAX_BITS[params.poly_modulus_degree]


def test_plan_default_is_n4096_single_data_prime() -> None:
    params = plan_ckks_parameters()
    assert params.poly_modulus_degree == 4096
    assert params.coeff_mod_bit_sizes == (60, 49)
    assert params.slots == 2048
    assert params.data_bits == 60
    assert params.wire_bytes_per_slot == 32
    assert params.error_bound <= 1e-6
    assert params.error_bound <= params.precision
    assert _security_ok(params)


@pytest.mark.parametrize(
    ("max_abs_weight", "max_total_samples"),
    [(1.0, 20 * 10**6), (8.0, 10**7), (64.0, 10**6)],
)
def test_plan_larger_bounds_move_to_n8192(max_abs_weight: float, max_total_samples: int) -> None:
    params = plan_ckks_parameters(max_abs_weight=max_abs_weight, max_total_samples=max_total_samples)
    assert params.poly_modulus_degree == 8192
    assert params.coeff_mod_bit_sizes == (60, 60, 60)
    assert params.wire_bytes_per_slot == 64
    assert params.error_bound <= 1e-6
    assert _security_ok(params)


def test_plan_is_cheapest_feasible_candidate() -> None:
    """Just inside the N=4096 overflow bound stays at 4096; just outside it moves up."""
    # N=4096 holds B * 2**34 < 2**58, i.e. B < 2**24 at the default precision (scale >= 14 + log2(1e6) -> 34)
    assert plan_ckks_parameters(max_abs_weight=1.0, max_total_samples=2**24 - 1).poly_modulus_degree == 4096
    assert plan_ckks_parameters(max_abs_weight=1.0, max_total_samples=2**24 + 1).poly_modulus_degree == 8192


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"max_total_samples": 2**150}, "max_total_samples=1427247692705959881058285969449495136382746624"),
        ({"max_abs_weight": 1e45, "max_total_samples": 10**6}, "max_abs_weight=1e+45"),
        ({"precision": 1e-20}, "precision 1e-20"),
    ],
)
def test_plan_impossible_bounds_raise_naming_the_bound(kwargs: dict[str, float], named: str) -> None:
    with pytest.raises(ParameterPlanningError) as caught:
        plan_ckks_parameters(**kwargs)  # type: ignore[arg-type]
    message = str(caught.value)
    assert "no 128-bit-secure CKKS parameters" in message
    assert named in message
    params = {"max_abs_weight": 8.0, "max_total_samples": 1_000_000, **kwargs}
    assert f"{params['max_total_samples'] * max(params['max_abs_weight'], 1.0):.3g}" in message


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"max_abs_weight": 0.0}, "max_abs_weight"),
        ({"max_abs_weight": -1.0}, "max_abs_weight"),
        ({"max_abs_weight": math.nan}, "max_abs_weight"),
        ({"max_abs_weight": math.inf}, "max_abs_weight"),
        ({"max_total_samples": 0}, "max_total_samples"),
        ({"max_total_samples": -5}, "max_total_samples"),
        ({"precision": 0.0}, "precision"),
        ({"precision": 1.0}, "precision"),
        ({"precision": -1e-6}, "precision"),
        ({"precision": math.nan}, "precision"),
    ],
)
def test_plan_invalid_inputs_refused(kwargs: dict[str, float], named: str) -> None:
    with pytest.raises(ParameterPlanningError, match=named):
        plan_ckks_parameters(**kwargs)  # type: ignore[arg-type]


def test_plan_candidates_respect_security_table() -> None:
    for degree, chain in planning._CANDIDATES:
        assert sum(chain) <= SECURITY_128_MAX_BITS[degree], (degree, chain)


@settings(max_examples=200, deadline=None)
@given(
    max_abs_weight=st.floats(min_value=1e-3, max_value=1e6, allow_nan=False),
    log2_samples=st.integers(min_value=0, max_value=160),
    precision=st.floats(min_value=1e-15, max_value=0.5),
)
def test_plan_every_plan_is_secure_and_meets_its_bounds(
    max_abs_weight: float, log2_samples: int, precision: float
) -> None:
    try:
        params = plan_ckks_parameters(
            max_abs_weight=max_abs_weight, max_total_samples=2**log2_samples, precision=precision
        )
    except ParameterPlanningError:
        return
    assert _security_ok(params)
    # overflow: the largest sum, encoded, stays below a quarter of the data modulus (one bit for sign, one for noise)
    assert math.log2(_sum_bound(params)) + params.scale_bits <= params.data_bits - 2
    assert params.error_bound <= precision
    assert params.scale_bits <= 58


def test_plan_parameters_round_trip_through_json() -> None:
    for params in (DEFAULT_PARAMS, WIDE_PARAMS):
        assert CkksParameters.from_dict(json.loads(json.dumps(params.to_dict()))) == params


@pytest.mark.parametrize("params", [DEFAULT_PARAMS, WIDE_PARAMS], ids=["n4096", "n8192"])
def test_plan_wire_size_and_chunk_bound_match_real_ciphertexts(params: CkksParameters) -> None:
    chunk = encrypt_chunks(secret_context(params), np.zeros(params.slots))[0]
    # zstd cannot compress uniformly random residues, so the estimate is within a header's size of the truth
    assert abs(len(chunk) / params.slots - params.wire_bytes_per_slot) < 0.5
    assert len(chunk) <= params.max_chunk_bytes()


@pytest.mark.parametrize("params", [DEFAULT_PARAMS, WIDE_PARAMS], ids=["n4096", "n8192"])
def test_plan_overflow_guard_holds_at_the_sum_bound(params: CkksParameters) -> None:
    """+-B in one slot and across a whole chunk decrypts to itself: no wrap-around modulo the data prime."""
    secret = secret_context(params)
    bound = _sum_bound(params)
    rng = np.random.default_rng(7)
    single = np.zeros(params.slots)
    single[5] = bound
    single[6] = -bound
    full = rng.choice([-bound, bound], size=params.slots)
    for values in (single, full):
        decrypted = decrypt_chunks(secret, encrypt_chunks(secret, values), length=values.size)
        error = float(np.max(np.abs(decrypted - values)))
        # a sum at B is divided by max_total_samples when averaged; a wrap-around would be off by ~2**(60 - scale)
        assert error / params.max_total_samples <= params.error_bound
        assert error <= 1e-9 * bound


@pytest.mark.parametrize(("extra_bits", "wraps"), [(0, False), (2, True)])
def test_plan_overflow_sum_of_quarters_wraps_only_above_the_planned_scale(extra_bits: int, wraps: bool) -> None:
    """Four hospitals at B/4 added under the public context: exact at the planned scale, garbage two bits above.

    The second case shows that the overflow check above can fail: the aggregator's additions wrap silently (each
    addend still encodes fine; only the sum leaves the data prime's range).
    """
    params = DEFAULT_PARAMS
    secret = secret_context(params)
    public = public_context(params)
    quarter = np.full(params.slots, _sum_bound(params) / 4)
    scale_bits = params.scale_bits + extra_bits
    total = ts.ckks_vector_from(public.tenseal, secret.encrypt(quarter, scale_bits=scale_bits))
    for _ in range(3):
        total.add_(ts.ckks_vector_from(public.tenseal, secret.encrypt(quarter, scale_bits=scale_bits)))
    error = float(np.max(np.abs(secret.decrypt(total.serialize()) - 4 * quarter)))
    assert (error > 1.0) is wraps


def _fresh_noise_log2(params: CkksParameters, chunks: int) -> float:
    """Largest fresh-encryption error over many slots, in log2 of scaled units."""
    secret = secret_context(params) if params in (DEFAULT_PARAMS, WIDE_PARAMS) else create_key_material(params)
    values = np.zeros(params.slots * chunks)
    decrypted = decrypt_chunks(secret, encrypt_chunks(secret, values), length=values.size)
    return math.log2(float(np.max(np.abs(decrypted))) * 2.0**params.scale_bits)


@pytest.mark.parametrize(("params", "chunks"), [(DEFAULT_PARAMS, 32), (WIDE_PARAMS, 2)], ids=["n4096", "n8192"])
def test_plan_fresh_noise_below_the_planned_bound(params: CkksParameters, chunks: int) -> None:
    """error_bound assumes a fresh encryption adds at most 2**NOISE_BITS scaled units to a slot: measure it."""
    largest = _fresh_noise_log2(params, chunks)
    assert 2.0**largest / 2.0**params.scale_bits < params.error_bound
    if params.poly_modulus_degree == 4096:
        assert largest < NOISE_BITS - 1  # the default plan keeps at least one bit of its documented margin


def test_plan_fresh_noise_below_the_planned_bound_at_n16384() -> None:
    """The third candidate: CKKS public-key encryption noise grows ~linearly in N, NOISE_BITS does not.

    Measured with TenSEAL 0.3.18: max ~2**12.8 at N=4096, ~2**13.9 at N=8192, ~2**14.6 at N=16384 (0.02% of
    slots above 2**14), so error_bound under-states the error at N=16384 and is within ~0.2 bit at N=8192.
    """
    params = plan_ckks_parameters(max_abs_weight=1.0, max_total_samples=2**90)
    assert params.poly_modulus_degree == 16384
    largest = _fresh_noise_log2(params, 8)
    assert 2.0**largest / 2.0**params.scale_bits < params.error_bound

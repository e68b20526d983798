"""The statistics phase's two-limb lanes (``bfv_planning.StatsLanes``): the plan at the key ceremony's defaults, the
bounds behind it, exact recombination (property-tested against integer arithmetic), and a masked encrypted sum."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from medheaven.crypto.bfv import BfvSecretKeys
from medheaven.crypto.bfv_planning import StatsLanes, plan_bfv_parameters, plan_stats_lanes, stats_min_scale_bits
from medheaven.crypto.codec import BfvMaskedCodec, Scheme, aggregator_codec, create_keys, hospital_codec
from medheaven.crypto.masks import MaskScope, pairwise_mask
from medheaven.crypto.packing import stats_scale_bits
from medheaven.data import Standardiser, SufficientStats
from medheaven.errors import PackingError, ParameterPlanningError

DEFAULTS = plan_bfv_parameters()  # what `medheaven keys init` makes: 100 hospitals, 10^6 samples, t = 2^47
LANES = plan_stats_lanes(DEFAULTS, max_abs_feature=1000.0)


def test_stats_lanes_plan_at_the_key_ceremony_defaults() -> None:
    assert DEFAULTS.plain_modulus_bits == 47 and DEFAULTS.max_hospitals == 100
    with pytest.raises(PackingError, match="do not fit"):  # one lane per statistic: what used to refuse the run
        stats_scale_bits(DEFAULTS, max_abs_feature=1000.0)
    assert stats_min_scale_bits(1000.0) == 33  # float32 resolution for sigma >= 1 at |mu| <= 1000
    assert (LANES.limb_bits, LANES.scale_bits) == (39, 45)
    assert LANES.error_bound == 2.0**-46
    assert StatsLanes.from_dict(LANES.to_dict()) == LANES


def test_stats_lanes_plan_holds_its_bounds_and_is_the_finest() -> None:
    """The worst cohort (K_max hospitals, totals at M A^2) stays inside a lane; one step finer would not."""
    t, k = DEFAULTS.plain_modulus, DEFAULTS.max_hospitals
    room = t // 2 - (k + 1) // 2 - 1
    bound = DEFAULTS.max_total_samples * 1000**2

    def high_sum(scale: int) -> int:  # |sum_k hi_k| <= (B 2^s + K/2) / 2^L + K, rounded up
        return math.ceil((bound * 2**scale + k / 2) / 2**LANES.limb_bits) + k

    assert k * (2**LANES.limb_bits - 1) < room  # the low lanes
    assert high_sum(LANES.scale_bits) < room
    assert high_sum(LANES.scale_bits + 1) >= room
    assert 2 ** (LANES.limb_bits + 1) * k > room  # and a wider limb would overflow the low lanes


def test_stats_lanes_refuse_a_feature_bound_the_key_set_cannot_standardise() -> None:
    with pytest.raises(ParameterPlanningError, match=r"standardising to float32 needs 2\^-40"):
        plan_stats_lanes(DEFAULTS, max_abs_feature=1e5)


def _exact_fixed_point(value: float, scale: int) -> int:
    """round-half-even(value * 2^s), in integers."""
    return round(Fraction(value) * 2**scale)


FEATURE = st.floats(min_value=-1000.0, max_value=1000.0, allow_nan=False, allow_subnormal=True)


@settings(max_examples=300, deadline=None)
@given(
    hospitals=st.lists(
        st.lists(FEATURE, min_size=1, max_size=6).map(np.array),  # one hospital's values of one feature
        min_size=1,
        max_size=12,
    ),
    rows=st.integers(min_value=1, max_value=80_000),
)
def test_stats_lanes_recombine_exactly(hospitals: list[np.ndarray], rows: int) -> None:
    """Each hospital's limbs are its fixed-point integer; the lane sums recombine to the cohort's exact integer
    total, correctly rounded to float64 once. ``rows`` repeats each hospital's values, reaching |total| ~ 2^36."""
    stats = [np.array([float(v.size * rows), float(v.sum() * rows), float((v * v).sum() * rows)]) for v in hospitals]
    lanes = [LANES.to_lanes(s) for s in stats]
    low_max = 2.0**LANES.limb_bits
    for hospital, lane in zip(stats, lanes, strict=True):
        count, sum_hi, sum_lo, sq_hi, sq_lo = lane
        assert count == hospital[0]
        for high, low, value in ((sum_hi, sum_lo, hospital[1]), (sq_hi, sq_lo, hospital[2])):
            assert high == math.floor(high) and 0 <= low < low_max and low == math.floor(low)
            assert int(high) * 2**LANES.limb_bits + int(low) == _exact_fixed_point(value, LANES.scale_bits)
    summed = np.sum(lanes, axis=0)  # the lanes' integer sums: what the decrypted cohort sum holds (exact < 2^53)
    assert np.all(np.abs(summed) < 2.0**46)
    recombined = LANES.from_lanes(summed)
    for index in (1, 2):
        exact = sum(_exact_fixed_point(float(s[index]), LANES.scale_bits) for s in stats)
        assert recombined[index] == float(Fraction(exact, 2**LANES.scale_bits))  # Python rounds half-even, once
        plain = sum(Fraction(float(s[index])) for s in stats)
        assert abs(Fraction(recombined[index]) - plain) <= Fraction(len(stats), 2 ** (LANES.scale_bits + 1)) + abs(
            plain
        ) * Fraction(1, 2**52)
    assert recombined[0] == sum(s[0] for s in stats)


@settings(max_examples=200, deadline=None)
@given(st.floats(min_value=-1e9, max_value=1e9, allow_nan=False), st.integers(min_value=0, max_value=60))
def test_stats_lanes_split_is_exact_at_every_scale(value: float, scale: int) -> None:
    """The split never forms the integer itself (it reaches 2^85 at the defaults), and carries a rounded-up low
    limb into the high one."""
    lanes = StatsLanes(scale_bits=scale, limb_bits=20)
    _, high, low, _, _ = lanes.to_lanes(np.array([1.0, value, 0.0]))
    assert 0 <= low < 2**20
    assert int(high) * 2**20 + int(low) == _exact_fixed_point(value, scale)


def test_stats_lanes_masked_sum_at_the_defaults_standardises_like_plaintext() -> None:
    """Three hospitals' statistics of features up to |x| = 1000, masked and encrypted under a default key set,
    summed by the aggregator and decrypted: the standardiser equals the pooled plaintext one to float32 resolution
    (one lane per statistic, this key set refuses the run: ``test_stats_lanes_plan_at_the_key_ceremony_defaults``)."""
    secret = create_keys(DEFAULTS)
    assert isinstance(secret, BfvSecretKeys)
    codec = hospital_codec(Scheme.BFV_MASKED, secret)
    assert isinstance(codec, BfvMaskedCodec)
    rng = np.random.default_rng(7)
    features = [
        np.column_stack([rng.normal(990.0, 1.0, n), rng.normal(-5.0, 300.0, n), rng.integers(0, 2, n)])
        for n in (4000, 7000, 2500)
    ]
    ids = ["a", "b", "c"]
    agreement = {h: X25519PrivateKey.generate() for h in ids}
    scope = MaskScope(run="r", phase="stats", round=0, attempt=1, cohort=tuple(ids))
    length = LANES.vector_length(3)
    accumulator = aggregator_codec(Scheme.BFV_MASKED, secret.public()).accumulator(length)
    for hospital, x in zip(ids, features, strict=True):
        values = LANES.to_lanes(SufficientStats.of(x).to_vector())
        assert values.size == length
        peers = {p: agreement[p].public_key() for p in ids if p != hospital}
        mask = pairwise_mask(hospital, agreement[hospital], peers, scope, length, DEFAULTS.plain_modulus)
        accumulator.add_chunks(codec.encode(values, scale_bits=0, mask=mask), source=hospital)
    summed = codec.decode_sum(accumulator.to_chunks(), length=length, scale_bits=0)
    federated = Standardiser.from_stats(SufficientStats.from_vector(LANES.from_lanes(summed), 3))
    pooled = Standardiser.from_stats(SufficientStats.of(np.vstack(features)))
    np.testing.assert_allclose(federated.mean, pooled.mean, rtol=2.0**-40, atol=0)
    np.testing.assert_allclose(federated.scale, pooled.scale, rtol=2.0**-24, atol=0)
    # the standardised float32 features differ by at most one float32 step (a rounding boundary; the pooled float64
    # statistics themselves depend on summation order at that level)
    sample = np.vstack(features)
    ours, theirs = federated.apply(sample), pooled.apply(sample)
    assert np.all(np.abs(ours - theirs) <= np.spacing(np.abs(theirs)))
    assert np.mean(ours == theirs) > 0.99

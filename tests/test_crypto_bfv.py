"""bfv-masked: sizes, exact masked sums, FedAvg equivalence, cross-decryption, coalitions, hostile chunks, old keys."""

from __future__ import annotations

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy import stats

from medheaven.crypto.bfv import BfvPublicKeys, BfvSecretKeys
from medheaven.crypto.bfv_planning import BfvParameters, max_hospitals_for, plan_bfv_parameters
from medheaven.crypto.codec import (
    BfvMaskedCodec,
    Scheme,
    aggregator_codec,
    create_keys,
    hospital_codec,
    key_file_scheme,
    public_keys_from_bytes,
    secret_keys_from_bytes,
)
from medheaven.crypto.context import PublicContext, SecretContext, create_key_material
from medheaven.crypto.masks import MaskScope, pair_stream, pairwise_mask
from medheaven.crypto.packing import pack_update, unpack_average
from medheaven.crypto.planning import plan_ckks_parameters
from medheaven.errors import CiphertextError, CryptoError, KeyCustodyError, PackingError, ParameterPlanningError

PARAMS = plan_bfv_parameters()


@pytest.fixture(scope="module")
def secret() -> BfvSecretKeys:
    keys = create_keys(PARAMS)
    assert isinstance(keys, BfvSecretKeys)
    return keys


@pytest.fixture(scope="module")
def codec(secret: BfvSecretKeys) -> BfvMaskedCodec:
    made = hospital_codec(Scheme.BFV_MASKED, secret)
    assert isinstance(made, BfvMaskedCodec)
    return made


class Cohort:
    """K hospitals with agreement keys, masking together in one scope."""

    def __init__(self, ids: list[str], *, attempt: int = 0) -> None:
        self.ids = sorted(ids)
        self.keys = {h: X25519PrivateKey.generate() for h in self.ids}
        self.scope = MaskScope(run="run-1", phase="update", round=1, attempt=attempt, cohort=tuple(self.ids))

    def mask(self, hospital: str, length: int, scope: MaskScope | None = None) -> np.ndarray:
        peers = {p: self.keys[p].public_key() for p in self.ids if p != hospital}
        return pairwise_mask(hospital, self.keys[hospital], peers, scope or self.scope, length, PARAMS.plain_modulus)


def test_plan_default_parameters_and_bounds() -> None:
    assert (PARAMS.plain_modulus_bits, PARAMS.scale_bits, PARAMS.max_hospitals) == (47, 23, 100)
    assert PARAMS.error_bound == pytest.approx(1.19e-7, rel=1e-2)
    # wrap bound: the largest unmasked cohort sum fits below t/2; noise bound: 100 ciphertexts below q/(2t)
    assert PARAMS.value_bound * 2**PARAMS.scale_bits + PARAMS.max_hospitals / 2 < PARAMS.plain_modulus / 2
    assert max_hospitals_for(47) >= 100 > max_hospitals_for(48)
    assert BfvParameters.from_dict(PARAMS.to_dict()) == PARAMS
    with pytest.raises(ParameterPlanningError, match="precision"):
        plan_bfv_parameters(max_total_samples=10**9, precision=1e-9)
    with pytest.raises(ParameterPlanningError, match="wrap"):
        BfvParameters.from_dict({**PARAMS.to_dict(), "scale_bits": 30})


def test_upload_and_sum_sizes_per_parameter(secret: BfvSecretKeys, codec: BfvMaskedCodec) -> None:
    length = 3 * PARAMS.slots
    cohort = Cohort(["a", "b"])
    uploads = [codec.encode(np.zeros(length), scale_bits=PARAMS.scale_bits, mask=cohort.mask(h, length)) for h in "ab"]
    assert sum(map(len, uploads[0])) / length <= 8.1
    accumulator = aggregator_codec(Scheme.BFV_MASKED, secret.public()).accumulator(length)
    for index, upload in enumerate(uploads):
        accumulator.add_chunks(upload, source=f"h{index}")
    assert sum(map(len, accumulator.to_chunks())) / length <= 16.1


def test_masked_sum_equals_quantised_sum_bit_for_bit(secret: BfvSecretKeys, codec: BfvMaskedCodec) -> None:
    rng = np.random.default_rng(7)
    cohort = Cohort([f"h{i}" for i in range(5)])
    length = 5000
    accumulator = aggregator_codec(Scheme.BFV_MASKED, secret.public()).accumulator(length)
    expected = np.zeros(length, dtype=np.int64)
    for hospital in cohort.ids:
        n_k = int(rng.integers(1, 200_000))
        packed = pack_update(rng.uniform(-8, 8, length - 1), n_k, params=PARAMS)
        expected += codec.quantise(packed, scale_bits=PARAMS.scale_bits)
        accumulator.add_chunks(
            codec.encode(packed, scale_bits=PARAMS.scale_bits, mask=cohort.mask(hospital, length)), source=hospital
        )
    summed = codec.decode_sum(accumulator.to_chunks(), length=length, scale_bits=PARAMS.scale_bits)
    assert np.array_equal(np.ldexp(summed, PARAMS.scale_bits).astype(np.int64), expected)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    hospitals=st.integers(1, 100),
    seed=st.integers(0, 2**32 - 1),
    weight=st.floats(0.01, 8.0),
)
def test_he_fedavg_equals_plaintext_fedavg_within_bound(
    secret: BfvSecretKeys, codec: BfvMaskedCodec, hospitals: int, seed: int, weight: float
) -> None:
    rng = np.random.default_rng(seed)
    length = 41
    cohort = Cohort([f"h{i:03d}" for i in range(hospitals)])
    budget = PARAMS.max_total_samples
    counts = rng.multinomial(budget - hospitals, np.ones(hospitals) / hospitals) + 1  # sum <= 10^6, each >= 1
    counts = np.minimum(counts, rng.integers(1, budget + 1, hospitals))
    weights = [rng.uniform(-weight, weight, length) for _ in range(hospitals)]
    accumulator = aggregator_codec(Scheme.BFV_MASKED, secret.public()).accumulator(length + 1)
    for hospital, n_k, w in zip(cohort.ids, counts, weights, strict=True):
        packed = pack_update(w, int(n_k), params=PARAMS)
        chunks = codec.encode(packed, scale_bits=PARAMS.scale_bits, mask=cohort.mask(hospital, length + 1))
        accumulator.add_chunks(chunks, source=hospital)
    summed = codec.decode_sum(accumulator.to_chunks(), length=length + 1, scale_bits=PARAMS.scale_bits)
    average, total = unpack_average(summed, exact=True)
    expected = sum(int(n) * w for n, w in zip(counts, weights, strict=True)) / int(counts.sum())
    assert total == int(counts.sum())
    assert float(np.max(np.abs(average - expected))) <= PARAMS.error_bound


def test_cross_decryption_sees_noise(secret: BfvSecretKeys, codec: BfvMaskedCodec) -> None:
    """Hospital A holds the shared key, decrypts B's upload: independent of B's update, uniform residues."""
    length = 100_000
    cohort = Cohort(["a", "b", "c"])
    update_b = np.random.default_rng(3).uniform(-8, 8, length) * 1000
    upload_b = codec.encode(update_b, scale_bits=PARAMS.scale_bits, mask=cohort.mask("b", length))
    seen = codec.decode_residues(upload_b, length=length)  # what A can read with the shared secret key
    assert abs(np.corrcoef(seen.astype(np.float64), update_b)[0, 1]) < 0.01
    signed = codec.decode_sum(upload_b, length=length, scale_bits=PARAMS.scale_bits)
    assert abs(np.corrcoef(signed, update_b)[0, 1]) < 0.01
    top = np.bincount((seen >> np.uint64(PARAMS.plain_modulus_bits - 8)).astype(np.int64), minlength=256)
    assert stats.chisquare(top).pvalue > 1e-4
    # the unmasked control: the same check sees B's update at once
    plain = codec.encode(update_b, scale_bits=PARAMS.scale_bits, mask=np.zeros(length, dtype=np.uint64))
    assert np.corrcoef(codec.decode_sum(plain, length=length, scale_bits=PARAMS.scale_bits), update_b)[0, 1] > 0.999


def test_coalition_of_aggregator_and_two_hospitals(secret: BfvSecretKeys, codec: BfvMaskedCodec) -> None:
    """Aggregator view + keys and masks of a, b reveal x_c + x_d, nothing about x_c or x_d alone."""
    length = 50_000
    cohort = Cohort(["a", "b", "c", "d"])
    rng = np.random.default_rng(11)
    updates = {h: rng.uniform(-8, 8, length) * 100 for h in cohort.ids}
    uploads = {
        h: codec.encode(updates[h], scale_bits=PARAMS.scale_bits, mask=cohort.mask(h, length)) for h in cohort.ids
    }
    t_mask = np.uint64(PARAMS.plain_modulus - 1)
    known = (cohort.mask("a", length) + cohort.mask("b", length)) & t_mask
    # the aggregator's view, decrypted with the shared key: c's and d's uploads, whose masks sum to -(m_a + m_b)
    both = codec.decode_residues(uploads["c"], length=length) + codec.decode_residues(uploads["d"], length=length)
    both = (both + known) & t_mask
    quantised = codec.quantise(updates["c"], scale_bits=PARAMS.scale_bits) + codec.quantise(
        updates["d"], scale_bits=PARAMS.scale_bits
    )
    assert np.array_equal(both, quantised.view(np.uint64) & t_mask)
    # c alone: remove every stream the coalition can derive (c's pairs with a and b); c's pair with d remains
    c_view = codec.decode_residues(uploads["c"], length=length)
    for peer in ("a", "b"):
        stream = pair_stream(peer, cohort.keys[peer], "c", cohort.keys["c"].public_key(), cohort.scope, length)
        c_view = (c_view + stream) & t_mask  # c subtracts the streams of lower ids: add them back
    signed = ((c_view + np.uint64(PARAMS.plain_modulus // 2)) & t_mask).astype(np.int64)
    assert abs(np.corrcoef(signed.astype(np.float64), updates["c"])[0, 1]) < 0.02
    top = np.bincount((c_view >> np.uint64(PARAMS.plain_modulus_bits - 8)).astype(np.int64), minlength=256)
    assert stats.chisquare(top).pvalue > 1e-4


def test_sum_noise_budget_after_max_hospitals(secret: BfvSecretKeys, codec: BfvMaskedCodec) -> None:
    upload = codec.encode(
        np.full(PARAMS.slots, 8.0e6), scale_bits=PARAMS.scale_bits, mask=None or np.zeros(PARAMS.slots, dtype=np.uint64)
    )
    accumulator = aggregator_codec(Scheme.BFV_MASKED, secret.public()).accumulator(PARAMS.slots)
    for index in range(PARAMS.max_hospitals):
        accumulator.add_chunks(upload, source=f"copy {index}")
    (summed,) = accumulator.to_chunks()
    assert secret.noise_budget(summed) >= 1
    residues = codec.decode_residues([summed], length=PARAMS.slots)
    expected = (int(8.0e6 * 2**PARAMS.scale_bits) * PARAMS.max_hospitals) % PARAMS.plain_modulus
    assert np.all(residues == np.uint64(expected))


def test_public_material_holds_no_key(secret: BfvSecretKeys) -> None:
    public = secret.public()
    data = public.to_bytes()
    assert len(data) < 1024 and secret.secret_raw not in data
    assert public_keys_from_bytes(data).fingerprint == secret.fingerprint
    with pytest.raises(KeyCustodyError):
        BfvPublicKeys.from_bytes(secret.to_bytes())
    with pytest.raises(KeyCustodyError):
        aggregator_codec(Scheme.BFV_MASKED, secret)  # type: ignore[arg-type]
    with pytest.raises(KeyCustodyError):
        BfvSecretKeys.from_bytes(data)
    loaded = secret_keys_from_bytes(secret.to_bytes())
    assert isinstance(loaded, BfvSecretKeys) and loaded.fingerprint == secret.fingerprint
    other = create_keys(PARAMS)
    assert other.fingerprint != secret.fingerprint


def test_old_ckks_key_sets_still_load_as_ckks() -> None:
    old = create_key_material(plan_ckks_parameters())  # files made before bfv-masked carry no scheme field
    assert key_file_scheme(old.to_bytes(), source="old") is Scheme.CKKS
    loaded = secret_keys_from_bytes(old.to_bytes())
    public = public_keys_from_bytes(old.public().to_bytes())
    assert isinstance(loaded, SecretContext) and isinstance(public, PublicContext)
    ckks = hospital_codec(Scheme.CKKS, loaded)
    values = np.linspace(-1, 1, 3000)
    accumulator = aggregator_codec(Scheme.CKKS, public).accumulator(3000)
    accumulator.add_chunks(ckks.encode(values, scale_bits=loaded.params.scale_bits, mask=None), source="old")
    decoded = ckks.decode_sum(accumulator.to_chunks(), length=3000, scale_bits=loaded.params.scale_bits)
    assert np.max(np.abs(decoded - values)) < 1e-5
    with pytest.raises(CryptoError, match="masks"):
        ckks.encode(values, scale_bits=loaded.params.scale_bits, mask=np.zeros(3000, dtype=np.uint64))
    with pytest.raises(Exception, match="scheme bfv-masked"):
        hospital_codec(Scheme.BFV_MASKED, loaded)


def test_hostile_chunks_refused_and_sum_untouched(secret: BfvSecretKeys, codec: BfvMaskedCodec) -> None:
    length = PARAMS.slots + 10
    cohort = Cohort(["a", "b"])
    accumulator = aggregator_codec(Scheme.BFV_MASKED, secret.public()).accumulator(length)
    good = codec.encode(np.ones(length), scale_bits=PARAMS.scale_bits, mask=cohort.mask("a", length))
    accumulator.add_chunks(good, source="a")
    before = accumulator.to_chunks()
    other = codec.encode(np.ones(length), scale_bits=PARAMS.scale_bits, mask=cohort.mask("b", length))
    bad_header = bytearray(other[1])
    bad_header[8] ^= 1  # the declared size
    full_size = accumulator.to_chunks()[1]  # a full (unseeded) ciphertext: twice an upload's size
    garbage = bytearray(other[1])
    garbage[1000:1040] = b"\xff" * 40  # coefficients >= q
    cases = {
        "wrong lane count": (other[:1], "chunks"),
        "bad seed header": ((other[0], bytes(bad_header)), "header"),
        "not seeded": ((other[0], full_size), "seeded"),
        "corrupt body": ((other[0], bytes(garbage)), "valid bfv-masked"),
    }
    for name, (chunks, message) in cases.items():
        with pytest.raises(CiphertextError, match=message):
            accumulator.add_chunks(chunks, source=name)
        assert accumulator.to_chunks() == before and accumulator.count == 1


def test_unmasked_or_foreign_mask_breaks_the_sum(secret: BfvSecretKeys, codec: BfvMaskedCodec) -> None:
    """Crypto cannot tell an unmasked upload or a mask of another attempt; the sum does, via the sample total."""
    length = 200
    cohort = Cohort(["a", "b", "c"])
    later = MaskScope(run="run-1", phase="update", round=1, attempt=1, cohort=cohort.scope.cohort)
    packed = pack_update(np.full(length - 1, 0.5), 10, params=PARAMS)
    for culprit_mask in ("unmasked", "attempt 1"):
        accumulator = aggregator_codec(Scheme.BFV_MASKED, secret.public()).accumulator(length)
        for hospital in cohort.ids:
            mask = cohort.mask(hospital, length)
            if hospital == "b":
                mask = (
                    np.zeros(length, dtype=np.uint64) if culprit_mask == "unmasked" else cohort.mask("b", length, later)
                )
            accumulator.add_chunks(codec.encode(packed, scale_bits=PARAMS.scale_bits, mask=mask), source=hospital)
        summed = codec.decode_sum(accumulator.to_chunks(), length=length, scale_bits=PARAMS.scale_bits)
        with pytest.raises(PackingError, match="sample total"):
            unpack_average(summed, exact=True)
    with pytest.raises(CryptoError, match="must carry"):
        codec.encode(packed, scale_bits=PARAMS.scale_bits, mask=None)


def test_quantise_refuses_values_that_could_wrap(codec: BfvMaskedCodec) -> None:
    with pytest.raises(PackingError, match="does not fit"):
        # a value that alone would wrap mod t (pack_update already bounds n_k * |w| by the plan's B below this)
        codec.quantise(np.array([-PARAMS.plain_modulus / 2 ** (PARAMS.scale_bits + 1) * 1.01]), scale_bits=23)
    with pytest.raises(PackingError, match="outside"):
        codec.quantise(np.array([1.0]), scale_bits=PARAMS.scale_bits + 1)
    with pytest.raises(PackingError, match="finite"):
        codec.quantise(np.array([np.nan]), scale_bits=PARAMS.scale_bits)


@pytest.mark.parametrize("count", [1, 100, 4096])
def test_encrypt_decrypt_residues_round_trip(secret: BfvSecretKeys, count: int) -> None:
    residues = np.random.default_rng(count).integers(0, PARAMS.plain_modulus, count, dtype=np.uint64)
    residues[-min(count, 7) :] = 0  # SEAL trims trailing zero coefficients; the lanes must still come back
    chunk = secret.encrypt(residues)
    assert np.array_equal(secret.decrypt(chunk, count=count), residues)
    with pytest.raises(CryptoError, match="residues"):
        secret.encrypt(np.full(4, PARAMS.plain_modulus, dtype=np.uint64))


def test_statistics_phase_scale_and_masked_sum(secret: BfvSecretKeys, codec: BfvMaskedCodec) -> None:
    """Counts, sums and sums of squares need range: a coarser step from the same wrap bound, and they are masked too."""
    from medheaven.crypto.packing import stats_scale_bits

    bits = stats_scale_bits(PARAMS, max_abs_feature=10.0)
    assert 10 <= bits < PARAMS.scale_bits
    assert PARAMS.max_total_samples * 100.0 * 2**bits + PARAMS.max_hospitals / 2 < PARAMS.plain_modulus / 2
    cohort = Cohort(["a", "b"])
    stats_scope = MaskScope(run="run-1", phase="stats", round=0, attempt=0, cohort=cohort.scope.cohort)
    rows = {"a": np.array([3.0, 12.5, 80.25]), "b": np.array([5.0, -2.0, 40.0])}
    accumulator = aggregator_codec(Scheme.BFV_MASKED, secret.public()).accumulator(3)
    for hospital, values in rows.items():
        mask = cohort.mask(hospital, 3, stats_scope)
        accumulator.add_chunks(codec.encode(values, scale_bits=bits, mask=mask), source=hospital)
    summed = codec.decode_sum(accumulator.to_chunks(), length=3, scale_bits=bits)
    assert np.array_equal(summed, rows["a"] + rows["b"])  # dyadic values: exact
    with pytest.raises(PackingError, match="do not fit"):
        stats_scale_bits(PARAMS, max_abs_feature=1e6)

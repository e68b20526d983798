"""Envelopes: every rejection has its own error type and says what was wrong; no input escapes the error tree."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from functools import cache
from typing import Any

import msgpack
import numpy as np
import pytest
from crypto_fixtures import (
    BASE,
    DEFAULT_PARAMS,
    EARLIER_BASE,
    ROUND,
    WIDE_PARAMS,
    RoundSetup,
    public_context,
    registry_of,
    secret_context,
    signing_key,
    update_envelope,
)
from fuzz_support import CUTS, INSERTS, byte_edits, msgpack_values, mutate
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from medheaven import errors
from medheaven.crypto.context import SecretContext
from medheaven.crypto.envelope import Envelope, EnvelopeLimits, check_envelope
from medheaven.crypto.packing import encrypt_chunks, pack_update
from medheaven.crypto.signing import HospitalRegistry
from medheaven.federated.fold import EncryptedAccumulator, fold_update

WEIGHTS = DEFAULT_PARAMS.slots + 451  # packed length 2500: two chunks, the second one partly filled
LENGTH = WEIGHTS + 1
SETUP = RoundSetup(DEFAULT_PARAMS, secret_context(DEFAULT_PARAMS).fingerprint, LENGTH)
HOSPITAL = "st-mary"
OTHER_HOSPITAL = "general"

#: examples run by the hypothesis fuzzers, per strategy; asserted by each fuzz test so a silent no-op fails
FUZZ_EXAMPLES: Counter[str] = Counter()


@cache
def _weights() -> np.ndarray:
    return np.clip(np.random.default_rng(11).normal(0.0, 0.3, size=WEIGHTS), -1.0, 1.0)


@cache
def _valid() -> tuple[Envelope, bytes]:
    envelope = update_envelope(secret_context(DEFAULT_PARAMS), _weights(), 1234, hospital=HOSPITAL)
    return envelope, envelope.to_bytes()


@cache
def _registry() -> HospitalRegistry:
    return registry_of(HOSPITAL, OTHER_HOSPITAL)


def _decode(data: bytes, limits: EnvelopeLimits | None = None) -> Envelope:
    return Envelope.from_bytes(data, limits=limits or SETUP.limits())


def _receive(data: bytes) -> Envelope:
    """What the aggregator does with the bytes of an update: decode with bounds, then check header and signature."""
    envelope = _decode(data)
    check_envelope(envelope, expect=SETUP.expectation(), registry=_registry())
    return envelope


def _receive_decoded(envelope: Envelope) -> Envelope:
    """Send an envelope through the wire format first, so what is checked is what the aggregator would decode."""
    return _decode(envelope.to_bytes())


def _check(envelope: Envelope) -> None:
    check_envelope(envelope, expect=SETUP.expectation(), registry=_registry())


def _payload() -> dict[str, Any]:
    payload: dict[str, Any] = msgpack.unpackb(_valid()[1], raw=False)
    return payload


def _pack(payload: object) -> bytes:
    data: bytes = msgpack.packb(payload, use_bin_type=True)
    return data


def _with(**fields: object) -> bytes:
    return _pack({**_payload(), **fields})


def _resigned(envelope: Envelope, hospital: str = HOSPITAL) -> Envelope:
    return replace(envelope, signature=b"").signed_by(signing_key(hospital))


@pytest.fixture(scope="module")
def secret() -> SecretContext:
    return secret_context(DEFAULT_PARAMS)


@pytest.fixture(scope="module")
def envelope() -> Envelope:
    return _valid()[0]


# -- accepted ------------------------------------------------------------------------------------------------


def test_envelope_round_trip_and_acceptance(envelope: Envelope) -> None:
    data = envelope.to_bytes()
    assert _receive(data) == envelope
    assert len(envelope.chunks) == DEFAULT_PARAMS.chunk_count(LENGTH) == 2
    assert _decode(bytearray(data)) == envelope
    assert _decode(memoryview(data)) == envelope  # type: ignore[arg-type]


@pytest.mark.parametrize("kind", ["update", "stats", "global"])
def test_envelope_round_trip_every_kind(envelope: Envelope, kind: str) -> None:
    other = _resigned(replace(envelope, kind=kind))
    assert _decode(other.to_bytes()) == other


def test_envelope_unsigned_global_model_accepted_without_registry(envelope: Envelope) -> None:
    global_model = replace(envelope, kind="global", hospital="", signature=b"")
    decoded = _decode(global_model.to_bytes())
    check_envelope(decoded, expect=replace(SETUP.expectation(), kind="global"), registry=None)


# -- version and kind ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", [0, 3, -1, 255, "2", None, True, b"\x02", [2]])
def test_envelope_wrong_version_refused(version: object) -> None:
    with pytest.raises(errors.EnvelopeVersionError, match=r"envelope format .* is not supported \(expected 2, or 1\)"):
        _decode(_with(v=version))


def test_envelope_float_version_refused() -> None:
    """``1.0 != 1`` is False in Python: a float version passes the check unless its type is checked too."""
    with pytest.raises(errors.EnvelopeVersionError, match="not supported"):
        _decode(_with(v=1.0))


def test_envelope_missing_version_refused() -> None:
    payload = _payload()
    del payload["v"]
    with pytest.raises(errors.EnvelopeVersionError, match="envelope format None is not supported"):
        _decode(_pack(payload))


@pytest.mark.parametrize("kind", ["upload", "", "UPDATE", "update "])
def test_envelope_unknown_kind_refused(kind: str) -> None:
    with pytest.raises(errors.EnvelopeVersionError, match=f"envelope kind {kind!r} is unknown"):
        _decode(_with(kind=kind))


def test_envelope_kind_other_than_expected_refused(envelope: Envelope) -> None:
    stats = _resigned(replace(envelope, kind="stats"))
    with pytest.raises(errors.EnvelopeVersionError, match="expected a 'update' envelope, got 'stats'"):
        _check(stats)


# -- undecodable ---------------------------------------------------------------------------------------------


def test_envelope_empty_refused() -> None:
    with pytest.raises(errors.EnvelopeFormatError, match=r"envelope is empty \(0 bytes\)"):
        _decode(b"")


@pytest.mark.parametrize("keep", [1, 2, 9, 40, 150, 1000, -65, -1])
def test_envelope_truncated_refused(keep: int) -> None:
    data = _valid()[1]
    with pytest.raises(errors.EnvelopeFormatError, match="not valid msgpack"):
        _decode(data[:keep])


def test_envelope_trailing_bytes_refused() -> None:
    with pytest.raises(errors.EnvelopeFormatError, match="1 bytes after its end"):
        _decode(_valid()[1] + b"\x00")


@pytest.mark.parametrize("payload", [[1, 2], 5, "update", b"bytes", None, 1.5], ids=str)
def test_envelope_not_a_map_refused(payload: object) -> None:
    with pytest.raises(errors.EnvelopeFormatError, match="must be a msgpack map"):
        _decode(_pack(payload))


@pytest.mark.parametrize(
    ("data", "error", "message"),
    [
        (b"\xc1", errors.EnvelopeFormatError, "not valid msgpack"),
        (b"\x81\x01\x02", errors.EnvelopeFormatError, "not valid msgpack"),  # an int map key
        (b"\xd4\x01\x02", errors.EnvelopeSizeError, "max_ext_len"),  # extension types are never part of an envelope
        (b"\xdf\xff\xff\xff\xff", errors.EnvelopeSizeError, "max_map_len"),  # a map declaring 2**32-1 entries
        (b"\xdd\xff\xff\xff\xff", errors.EnvelopeSizeError, "max_array_len"),
    ],
    ids=["never-used", "int-key", "ext", "huge-map", "huge-array"],
)
def test_envelope_invalid_msgpack_refused(data: bytes, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message) as caught:
        _decode(data)
    assert type(caught.value) is error


def test_envelope_not_bytes_refused() -> None:
    with pytest.raises(errors.EnvelopeFormatError, match="must be bytes, got str"):
        _decode("v1")  # type: ignore[arg-type]


# -- fields --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("field", ["kind", "run", "round", "hosp", "fp", "base", "len", "scale", "chunks", "sig"])
def test_envelope_missing_field_refused(field: str) -> None:
    payload = _payload()
    del payload[field]
    with pytest.raises(errors.EnvelopeFormatError, match=rf"missing \['{field}'\], unexpected \[\]"):
        _decode(_pack(payload))


def test_envelope_unknown_field_in_place_of_a_known_one_refused() -> None:
    payload = _payload()
    del payload["base"]
    payload["parent"] = BASE
    with pytest.raises(errors.EnvelopeFormatError, match=r"missing \['base'\], unexpected \['parent'\]"):
        _decode(_pack(payload))


def test_envelope_extra_field_refused_naming_it() -> None:
    """A complete envelope plus one field: the message should name the field, not report a 'too large' map."""
    with pytest.raises(errors.EnvelopeFormatError, match=r"unexpected \['extra'\]"):
        _decode(_with(extra=1))


WRONG_TYPES: list[tuple[str, object, type[errors.EnvelopeError], str]] = [
    ("run", 5, errors.EnvelopeFormatError, "field 'run' must be str, got int"),
    ("run", b"run-1", errors.EnvelopeFormatError, "field 'run' must be str, got bytes"),
    ("run", None, errors.EnvelopeFormatError, "field 'run' must be str, got NoneType"),
    ("run", "../etc", errors.EnvelopeFormatError, "run id '../etc' is malformed"),
    ("run", "", errors.EnvelopeFormatError, "run id '' is malformed"),
    ("run", "r" * 65, errors.EnvelopeFormatError, "is malformed"),
    ("round", True, errors.EnvelopeFormatError, "field 'round' must be int, got bool"),
    ("round", False, errors.EnvelopeFormatError, "field 'round' must be int, got bool"),
    ("round", -1, errors.EnvelopeFormatError, "envelope round -1 is negative"),
    ("round", "3", errors.EnvelopeFormatError, "field 'round' must be int, got str"),
    ("round", 3.0, errors.EnvelopeFormatError, "field 'round' must be int, got float"),
    ("round", None, errors.EnvelopeFormatError, "field 'round' must be int, got NoneType"),
    ("hosp", 5, errors.EnvelopeFormatError, "field 'hosp' must be str, got int"),
    ("hosp", b"st-mary", errors.EnvelopeFormatError, "field 'hosp' must be str, got bytes"),
    ("hosp", ["st-mary"], errors.EnvelopeFormatError, "field 'hosp' must be str, got list"),
    ("fp", 5, errors.EnvelopeFormatError, "field 'fp' must be str, got int"),
    ("fp", b"\x00" * 32, errors.EnvelopeFormatError, "field 'fp' must be str, got bytes"),
    ("fp", "A" * 64, errors.EnvelopeFormatError, "fingerprint or base digest is not a lower-case sha256 hex string"),
    ("fp", "0" * 63, errors.EnvelopeFormatError, "fingerprint or base digest is not a lower-case sha256 hex string"),
    ("fp", "", errors.EnvelopeFormatError, "fingerprint or base digest is not a lower-case sha256 hex string"),
    ("base", 5, errors.EnvelopeFormatError, "field 'base' must be str, got int"),
    ("base", "xyz", errors.EnvelopeFormatError, "fingerprint or base digest is not a lower-case sha256 hex string"),
    ("base", "0" * 65, errors.EnvelopeFormatError, "fingerprint or base digest is not a lower-case sha256 hex string"),
    ("len", "2500", errors.EnvelopeFormatError, "field 'len' must be int, got str"),
    ("len", True, errors.EnvelopeFormatError, "field 'len' must be int, got bool"),
    ("len", 2500.0, errors.EnvelopeFormatError, "field 'len' must be int, got float"),
    ("len", 0, errors.EnvelopeSizeError, "declares vector length 0; this model allows 1..2500"),
    ("len", -1, errors.EnvelopeSizeError, "declares vector length -1; this model allows 1..2500"),
    ("scale", "35", errors.EnvelopeFormatError, "field 'scale' must be int, got str"),
    ("scale", True, errors.EnvelopeFormatError, "field 'scale' must be int, got bool"),
    ("scale", 35.0, errors.EnvelopeFormatError, "field 'scale' must be int, got float"),
    ("chunks", b"x", errors.EnvelopeFormatError, "field 'chunks' must be list, got bytes"),
    ("chunks", {"0": b"x"}, errors.EnvelopeFormatError, "field 'chunks' must be list, got dict"),
    ("chunks", [], errors.EnvelopeFormatError, "chunks must be a non-empty list of non-empty byte strings"),
    ("chunks", [1, 2], errors.EnvelopeFormatError, "chunks must be a non-empty list of non-empty byte strings"),
    ("chunks", [b"x", "y"], errors.EnvelopeFormatError, "chunks must be a non-empty list of non-empty byte strings"),
    ("chunks", [b"x", b""], errors.EnvelopeFormatError, "chunks must be a non-empty list of non-empty byte strings"),
    ("chunks", [[b"x"]], errors.EnvelopeFormatError, "chunks must be a non-empty list of non-empty byte strings"),
    ("sig", "0" * 64, errors.EnvelopeFormatError, "field 'sig' must be bytes, got str"),
    ("sig", 5, errors.EnvelopeFormatError, "field 'sig' must be bytes, got int"),
    ("sig", None, errors.EnvelopeFormatError, "field 'sig' must be bytes, got NoneType"),
    ("sig", b"\x00" * 10, errors.SignatureError, "signature is 10 bytes, an Ed25519 signature is 64"),
    ("sig", b"\x00" * 65, errors.SignatureError, "signature is 65 bytes, an Ed25519 signature is 64"),
]


@pytest.mark.parametrize(
    ("field", "value", "error", "message"), WRONG_TYPES, ids=[f"{f}-{v!r:.20}" for f, v, _, _ in WRONG_TYPES]
)
def test_envelope_wrong_header_field_refused(field: str, value: object, error: type[Exception], message: str) -> None:
    with pytest.raises(error) as caught:
        _decode(_with(**{field: value}))
    assert type(caught.value) is error
    assert message in str(caught.value)


@pytest.mark.parametrize("field", ["run", "fp", "base"])
def test_envelope_header_string_with_trailing_newline_refused(field: str) -> None:
    """``^...$`` with ``re.match`` accepts a trailing newline: the format check must use ``fullmatch``."""
    with pytest.raises(errors.EnvelopeFormatError):
        _decode(_with(**{field: _payload()[field] + "\n"}))


# -- sizes ---------------------------------------------------------------------------------------------------


def test_envelope_declared_length_beyond_limit_refused() -> None:
    with pytest.raises(errors.EnvelopeSizeError, match=r"declares vector length 2501; this model allows 1\.\.2500"):
        _decode(_with(len=LENGTH + 1))


def test_envelope_chunk_count_beyond_limit_refused() -> None:
    chunks = _payload()["chunks"]
    with pytest.raises(errors.EnvelopeSizeError, match="max_array_len"):
        _decode(_with(chunks=[*chunks, chunks[0]]))


def test_envelope_chunk_bigger_than_max_chunk_bytes_refused() -> None:
    too_big = b"\x00" * (DEFAULT_PARAMS.max_chunk_bytes() + 1)
    with pytest.raises(errors.EnvelopeSizeError, match="max_bin_len"):
        _decode(_with(chunks=[too_big, b"x"]))


def test_envelope_total_bytes_beyond_limit_refused() -> None:
    limits = SETUP.limits()
    data = _valid()[1] + b"\x00" * (limits.max_total_bytes - len(_valid()[1]) + 1)
    with pytest.raises(errors.EnvelopeSizeError, match=f"envelope is {limits.max_total_bytes + 1} bytes, more than"):
        _decode(data)


def test_envelope_limits_admit_real_envelopes_of_both_plans() -> None:
    for params in (DEFAULT_PARAMS, WIDE_PARAMS):
        secret = secret_context(params)
        length = 3 * params.slots + 5
        setup = RoundSetup(params, secret.fingerprint, length)
        envelope = update_envelope(secret, np.zeros(length - 1), 10, hospital=HOSPITAL)
        assert len(envelope.to_bytes()) <= setup.limits().max_total_bytes
        assert _decode(envelope.to_bytes(), setup.limits()) == envelope


# -- expectation ---------------------------------------------------------------------------------------------


def test_envelope_length_disagreeing_with_expectation_refused(secret: SecretContext) -> None:
    shorter = update_envelope(secret, _weights()[:-1], 1234, hospital=HOSPITAL)
    assert len(shorter.chunks) == 2
    with pytest.raises(
        errors.ShapeMismatchError, match="holds 2499 values in 2 chunks; the model needs 2500 values in 2"
    ):
        _check(_receive_decoded(shorter))


def test_envelope_chunk_count_disagreeing_with_expectation_refused(envelope: Envelope) -> None:
    one_chunk = _resigned(replace(envelope, chunks=envelope.chunks[:1]))
    with pytest.raises(
        errors.ShapeMismatchError, match="holds 2500 values in 1 chunks; the model needs 2500 values in 2"
    ):
        _check(_receive_decoded(one_chunk))


def test_envelope_scale_disagreeing_with_expectation_refused(envelope: Envelope) -> None:
    coarse = _resigned(replace(envelope, scale_bits=30))
    with pytest.raises(errors.ShapeMismatchError, match=r"encoded at scale 2\^30, expected 2\^35"):
        _check(_receive_decoded(coarse))


def test_envelope_wrong_context_fingerprint_refused() -> None:
    other = update_envelope(secret_context(DEFAULT_PARAMS, "other"), _weights(), 1234, hospital=HOSPITAL)
    with pytest.raises(errors.ContextMismatchError, match="the sender has another key set"):
        _check(_receive_decoded(other))


def test_envelope_wrong_run_refused(secret: SecretContext) -> None:
    other = update_envelope(secret, _weights(), 1234, hospital=HOSPITAL, run="run-2")
    with pytest.raises(errors.RunMismatchError, match="envelope is for run 'run-2', not 'run-1'"):
        _check(_receive_decoded(other))


def test_envelope_wrong_round_refused(secret: SecretContext) -> None:
    later = update_envelope(secret, _weights(), 1234, hospital=HOSPITAL, round_number=ROUND + 1)
    with pytest.raises(errors.RoundMismatchError, match="is for round 4, expected round 3"):
        _check(_receive_decoded(later))


def test_envelope_wrong_base_refused(secret: SecretContext) -> None:
    other_base = update_envelope(secret, _weights(), 1234, hospital=HOSPITAL, base=EARLIER_BASE)
    with pytest.raises(errors.RoundMismatchError, match="stale or replayed update"):
        _check(_receive_decoded(other_base))


def test_envelope_replay_from_earlier_round_refused(secret: SecretContext) -> None:
    earlier = update_envelope(secret, _weights(), 1234, hospital=HOSPITAL, round_number=ROUND - 1, base=EARLIER_BASE)
    # accepted in its own round ...
    check_envelope(earlier, expect=SETUP.expectation(round_number=ROUND - 1, base=EARLIER_BASE), registry=_registry())
    # ... refused when replayed into the next one, and relabelling the round breaks the signature
    with pytest.raises(errors.RoundMismatchError, match="round 2, expected round 3"):
        _check(earlier)
    relabelled = replace(earlier, round=ROUND)
    with pytest.raises(errors.RoundMismatchError, match="stale or replayed"):
        _check(relabelled)
    with pytest.raises(errors.SignatureError, match="does not verify"):
        _check(replace(relabelled, base=BASE))


# -- identity and signature ----------------------------------------------------------------------------------


def test_envelope_unknown_hospital_refused(secret: SecretContext) -> None:
    stranger = update_envelope(secret, _weights(), 1234, hospital="stranger")
    with pytest.raises(errors.UnknownHospitalError, match="hospital 'stranger' is not registered"):
        _check(_receive_decoded(stranger))


def test_envelope_signature_by_another_hospital_refused(envelope: Envelope) -> None:
    forged = replace(envelope, signature=signing_key(OTHER_HOSPITAL).sign(envelope.signed_message()))
    with pytest.raises(errors.SignatureError, match="does not verify with hospital 'st-mary'"):
        _check(_receive_decoded(forged))


def test_envelope_sign_with_another_hospitals_key_refused(envelope: Envelope) -> None:
    with pytest.raises(errors.SignatureError, match="key of 'general' cannot sign an envelope of 'st-mary'"):
        envelope.signed_by(signing_key(OTHER_HOSPITAL))


def test_envelope_missing_signature_refused(envelope: Envelope) -> None:
    unsigned = replace(envelope, signature=b"")
    with pytest.raises(errors.SignatureError, match="claiming to be from 'st-mary' carries no signature"):
        _check(_receive_decoded(unsigned))


@pytest.mark.parametrize("edit", ["swap-chunks", "drop-and-duplicate", "other-weights", "hospital"])
def test_envelope_edit_after_signing_refused(envelope: Envelope, secret: SecretContext, edit: str) -> None:
    if edit == "swap-chunks":
        edited = replace(envelope, chunks=envelope.chunks[::-1])
    elif edit == "drop-and-duplicate":
        edited = replace(envelope, chunks=(envelope.chunks[0], envelope.chunks[0]))
    elif edit == "other-weights":
        edited = replace(envelope, chunks=encrypt_chunks(secret, pack_update(-_weights(), 1234, params=secret.params)))
    else:
        edited = replace(envelope, hospital=OTHER_HOSPITAL)
    with pytest.raises(errors.SignatureError, match="does not verify"):
        _check(_receive_decoded(edited))


# -- bit flips -----------------------------------------------------------------------------------------------


def _flip_positions(data: bytes, envelope: Envelope) -> list[int]:
    """Bit positions: most of the header, chunk length prefixes, spread over the ciphertexts, the signature."""
    header_end = data.index(envelope.chunks[0][:32])
    positions = list(range(0, header_end * 8, 3))
    for chunk in envelope.chunks:
        start = data.index(chunk[:32])
        positions += [(start - 5) * 8 + bit for bit in range(0, 40, 4)]  # bin32 marker and length
        positions += [(start + offset) * 8 + 5 for offset in np.linspace(0, len(chunk) - 1, 30, dtype=int)]
    positions += list(range((len(data) - 66) * 8, len(data) * 8, 13))
    return sorted(set(positions))


def test_envelope_bit_flip_anywhere_is_rejected() -> None:
    envelope, data = _valid()
    positions = _flip_positions(data, envelope)
    assert len(positions) >= 200
    outcomes: Counter[str] = Counter()
    for position in positions:
        flipped = bytearray(data)
        flipped[position // 8] ^= 1 << (position % 8)
        with pytest.raises(errors.EnvelopeError) as caught:
            _receive(bytes(flipped))
        outcomes[type(caught.value).__name__] += 1
    # the sweep reaches the decoder, the header checks and the signature, not one of them only
    assert outcomes["SignatureError"] > 0
    assert outcomes["EnvelopeFormatError"] > 0
    assert sum(outcomes.values()) == len(positions)


# -- ciphertexts that are not ours ---------------------------------------------------------------------------


def _signed_with_chunks(envelope: Envelope, chunks: tuple[bytes, ...]) -> Envelope:
    return _resigned(replace(envelope, chunks=chunks))


def test_envelope_chunks_of_other_parameters_with_valid_signature_fail_the_fold(envelope: Envelope) -> None:
    """A hospital holding an N=8192 key claims this run's fingerprint and signs: nothing may be added."""
    wide = secret_context(WIDE_PARAMS)
    packed = pack_update(_weights(), 1234, params=DEFAULT_PARAMS)
    slots = DEFAULT_PARAMS.slots
    chunks = (wide.encrypt(packed[:slots]), wide.encrypt(packed[slots:]))
    alien = _signed_with_chunks(envelope, chunks)
    # the decoder already refuses it: N=8192 ciphertexts are larger than any N=4096 envelope can be
    with pytest.raises(errors.EnvelopeSizeError, match=r"envelope is \d+ bytes, more than the \d+ this model can need"):
        _decode(alien.to_bytes())
    # and the fold refuses it even when the decoder is bypassed
    accumulator = EncryptedAccumulator(public_context(DEFAULT_PARAMS), length=LENGTH)
    with pytest.raises(errors.CiphertextError, match="chunk 0 of update of 'st-mary' is not a valid ciphertext"):
        fold_update(accumulator, alien, expect=SETUP.expectation(), registry=_registry())
    assert accumulator.count == 0
    assert accumulator.sums == []


@pytest.mark.parametrize(
    "garbage",
    [b"\x00" * 100, b"garbage", msgpack.packb({"ckks": [1, 2, 3]}), bytes(range(256)) * 40],
    ids=["zeros", "text", "msgpack-map", "pattern"],
)
def test_envelope_garbage_chunk_with_valid_signature_fails_the_fold(envelope: Envelope, garbage: bytes) -> None:
    tampered = _signed_with_chunks(envelope, (envelope.chunks[0], garbage))
    decoded = _receive(tampered.to_bytes())  # well-formed and properly signed: only the fold can tell
    accumulator = EncryptedAccumulator(public_context(DEFAULT_PARAMS), length=LENGTH)
    with pytest.raises(errors.CiphertextError, match="chunk 1 of update of 'st-mary' is not a valid ciphertext"):
        fold_update(accumulator, decoded, expect=SETUP.expectation(), registry=_registry())
    assert accumulator.count == 0


# -- fuzzing -------------------------------------------------------------------------------------------------


def _fuzz_receive(data: bytes, strategy: str) -> None:
    FUZZ_EXAMPLES[strategy] += 1
    try:
        received = _receive(data)
    except errors.EnvelopeError:
        FUZZ_EXAMPLES[f"{strategy}:rejected"] += 1
        return
    # anything accepted must be the genuine envelope (a mutation may leave the bytes or their meaning unchanged)
    assert received == _valid()[0]


FUZZ_SETTINGS = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@FUZZ_SETTINGS
@given(data=st.binary(max_size=4096))
def _fuzz_random_bytes(data: bytes) -> None:
    _fuzz_receive(data, "random-bytes")


@FUZZ_SETTINGS
@given(edits=byte_edits(min_size=1, max_size=8), cut=CUTS, insert=INSERTS, near_header=st.booleans())
def _fuzz_mutations(
    edits: list[tuple[float, int]], cut: float | None, insert: tuple[float, bytes] | None, near_header: bool
) -> None:
    _fuzz_receive(mutate(_valid()[1], edits, cut, insert, near_header=near_header), "mutations")


MSGPACK_VALUES = msgpack_values(max_size=80, max_leaves=12)
FIELD_NAMES = st.sampled_from(["v", "kind", "run", "round", "hosp", "fp", "base", "len", "scale", "chunks", "sig", "x"])


@FUZZ_SETTINGS
@given(changes=st.dictionaries(FIELD_NAMES, MSGPACK_VALUES, min_size=1, max_size=4), drop=st.sets(FIELD_NAMES))
def _fuzz_fields(changes: dict[str, object], drop: set[str]) -> None:
    payload = _payload()
    for name in drop:
        payload.pop(name, None)
    payload.update(changes)
    _fuzz_receive(_pack(payload), "fields")


@pytest.mark.parametrize(
    ("strategy", "fuzzer"),
    [("random-bytes", _fuzz_random_bytes), ("mutations", _fuzz_mutations), ("fields", _fuzz_fields)],
)
def test_envelope_fuzz_only_envelope_errors(
    strategy: str, fuzzer: Any, record_property: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    before = FUZZ_EXAMPLES[strategy]
    fuzzer()
    run = FUZZ_EXAMPLES[strategy] - before
    record_property(f"fuzz_examples_{strategy}", run)
    with capsys.disabled():
        print(f"\n[fuzz] {strategy}: {run} examples, {FUZZ_EXAMPLES[f'{strategy}:rejected']} rejected")
    assert run >= 100, f"hypothesis ran only {run} examples of {strategy}"
    assert FUZZ_EXAMPLES[f"{strategy}:rejected"] > 0


# -- memory: zero-copy decode, streaming pack ------------------------------------------------------------------


def test_envelope_decoded_chunks_are_views_of_the_envelope_bytes_not_copies() -> None:
    """The aggregator's peak is the running sum plus one envelope only because decoding copies no chunk."""
    envelope, data = _valid()
    decoded = _receive(data)
    assert len(decoded.chunks) == len(envelope.chunks) > 1
    for view, original in zip(decoded.chunks, envelope.chunks, strict=True):
        assert isinstance(view, memoryview)
        assert view.obj is data
        assert view.tobytes() == original


def test_envelope_streaming_pack_gives_the_same_bytes_as_to_bytes() -> None:
    envelope, data = _valid()
    header = replace(envelope, chunks=())
    streamed = header.pack_streaming(iter(envelope.chunks), len(envelope.chunks))
    assert isinstance(streamed, bytearray)
    assert bytes(streamed) == data
    assert _receive(bytes(streamed)).chunks[0].tobytes() == envelope.chunks[0]


@pytest.mark.parametrize("promised", [0, 1, 3])
def test_envelope_streaming_pack_refuses_a_chunk_count_it_was_not_given(promised: int) -> None:
    envelope, _ = _valid()
    assert len(envelope.chunks) == 2
    with pytest.raises(ValueError, match=f"promised {promised} chunks and given 2"):
        replace(envelope, chunks=()).pack_streaming(iter(envelope.chunks), promised)


@pytest.mark.parametrize("into_header", [0, 1, 3, 5, 6], ids=lambda n: f"cut-{n}-bytes-into-chunk-1")
def test_envelope_cut_at_a_chunk_boundary_is_incomplete_input(into_header: int) -> None:
    envelope, data = _valid()
    start = data.index(envelope.chunks[1]) - 5  # a 64 KB chunk is a msgpack bin 32: 0xc6 and a 4-byte length
    assert data[start] == 0xC6
    with pytest.raises(errors.EnvelopeFormatError, match="incomplete input"):
        _decode(data[: start + into_header])


# -- format 2: one digest pass, scheme field; format 1 still read ---------------------------------------------


def test_envelope_v2_one_digest_pass_covers_receipt_and_signature(
    envelope: Envelope, monkeypatch: pytest.MonkeyPatch
) -> None:
    import hashlib

    from medheaven.crypto import envelope as envelope_module

    data = envelope.to_bytes()
    hashed: list[int] = []
    real = hashlib.sha256

    class Counting:
        def __init__(self, first: bytes | memoryview = b"") -> None:
            self.inner = real()
            self.update(first)

        def update(self, part: bytes | memoryview) -> None:
            hashed.append(len(part))
            self.inner.update(part)

        def copy(self) -> Any:
            return self.inner.copy()

        def hexdigest(self) -> str:
            return self.inner.hexdigest()

        def digest(self) -> bytes:
            return self.inner.digest()

    monkeypatch.setattr(envelope_module.hashlib, "sha256", Counting)
    decoded, digest = envelope_module.read_envelope(data, limits=SETUP.limits())
    check_envelope(decoded, expect=SETUP.expectation(), registry=_registry())
    monkeypatch.undo()
    assert digest == hashlib.sha256(data).hexdigest()  # what receipts and manifests carry
    assert sum(hashed) == len(data)  # every byte hashed exactly once, signature check included
    assert decoded.version == 2 and decoded.scheme == "ckks"


def test_envelope_v2_sig_must_be_last_and_body_is_signed(envelope: Envelope) -> None:
    payload = _payload()
    reordered = {"sig": payload.pop("sig"), **payload}
    with pytest.raises(errors.EnvelopeFormatError, match="must end with its 'sig' field"):
        _decode(_pack(reordered))
    data = bytearray(envelope.to_bytes())
    data[data.index(b"st-mary")] ^= 0x20  # the hospital id, inside the signed body
    with pytest.raises((errors.SignatureError, errors.UnknownHospitalError)):
        _receive(bytes(data))


def test_envelope_v2_scheme_checked(envelope: Envelope) -> None:
    with pytest.raises(errors.EnvelopeVersionError, match="scheme 'bfv' is unknown"):
        _decode(_with(scheme="bfv"))
    with pytest.raises(errors.ContextMismatchError, match="scheme 'ckks'"):
        check_envelope(envelope, expect=replace(SETUP.expectation(), scheme="bfv-masked"), registry=_registry())


def test_envelope_v1_still_read_and_verified(envelope: Envelope) -> None:
    legacy = replace(envelope, version=1, signature=b"").signed_by(signing_key(HOSPITAL))
    data = legacy.to_bytes()
    assert b"scheme" not in data[:200]
    decoded = _receive(data)
    assert decoded.version == 1 and decoded.scheme == "ckks"
    with pytest.raises(errors.EnvelopeFormatError, match="unexpected"):
        _decode(_pack({**msgpack.unpackb(data, raw=False), "scheme": "ckks"}))

"""Fuzzing the decoders that face the network: envelopes, receipts, the aggregator's fold path and Celery's bounded
msgpack decoder. The only exceptions allowed out of the MedHeaven decoders are MedHeavenError subclasses (which the
aggregator turns into logged rejections); anything else would be an unhandled crash of the aggregator's task.

Examples are derandomised (the same inputs every run) and counted; the counts are printed and recorded as test
properties (``--junitxml`` shows them)."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import msgpack
import numpy as np
import pytest
from crypto_fixtures import BASE, DEFAULT_PARAMS, ROUND, RUN, RoundSetup, public_context, registry_of, secret_context
from crypto_fixtures import update_envelope as signed_update
from federation_support import small_simulation
from fuzz_support import CUTS, INSERTS, byte_edits, msgpack_values, mutate
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from coordinator.run import create_run
from coordinator.simulation import default_model, simulation_config
from medheaven.crypto.bfv import create_bfv_key_material
from medheaven.crypto.bfv_planning import plan_bfv_parameters
from medheaven.crypto.envelope import Envelope
from medheaven.errors import MedHeavenError
from medheaven.federated.aggregator import AggregatorNode
from medheaven.federated.fold import BfvAccumulator, EncryptedAccumulator, fold_update
from medheaven.federated.paths import RunPaths
from medheaven.federated.protocol import sha256_hex
from medheaven.federated.wire import Receipt, RoundSpec
from workers.config import _bounded_msgpack_loads

pytestmark = pytest.mark.slow

COUNTS: Counter[str] = Counter()


def fuzz_settings(examples: int) -> Any:
    return settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
    )


# -- envelopes, decoded and checked exactly as the aggregator does before folding ----------------------------------
HOSPITAL = "h01"
SECRET = secret_context(DEFAULT_PARAMS)
PUBLIC = public_context(DEFAULT_PARAMS)
REGISTRY = registry_of(HOSPITAL, "h02")
WEIGHTS = np.linspace(-0.5, 0.5, 3000)
SETUP = RoundSetup(DEFAULT_PARAMS, SECRET.fingerprint, WEIGHTS.size + 1)
VALID = signed_update(SECRET, WEIGHTS, 123, hospital=HOSPITAL).to_bytes()
VALID_PAYLOAD: dict[str, Any] = msgpack.unpackb(VALID, raw=False)


def receive_envelope(data: bytes, strategy: str) -> None:
    COUNTS[strategy] += 1
    try:
        envelope = Envelope.from_bytes(data, limits=SETUP.limits())
        accumulator = EncryptedAccumulator(PUBLIC, length=SETUP.length)
        fold_update(accumulator, envelope, expect=SETUP.expectation(), registry=REGISTRY)
    except MedHeavenError:
        COUNTS[f"{strategy}:rejected"] += 1
        return
    # only an unmodified envelope may pass: every header byte and chunk is covered by the signature
    assert data == VALID, "a modified envelope was accepted"


@fuzz_settings(600)
@given(data=st.binary(min_size=0, max_size=4096))
def _fuzz_envelope_random_bytes(data: bytes) -> None:
    receive_envelope(data, "envelope-random-bytes")


@fuzz_settings(1000)
@given(edits=byte_edits(min_size=0, max_size=6), cut=CUTS, insert=INSERTS, header=st.booleans())
def _fuzz_envelope_mutations(
    edits: list[tuple[float, int]], cut: float | None, insert: tuple[float, bytes] | None, header: bool
) -> None:
    receive_envelope(mutate(VALID, edits, cut, insert, near_header=header), "envelope-mutations")


MSGPACK_VALUES = msgpack_values(max_size=70, max_leaves=10)
ENVELOPE_FIELDS = st.sampled_from([*VALID_PAYLOAD, "extra"])


@fuzz_settings(800)
@given(changes=st.dictionaries(ENVELOPE_FIELDS, MSGPACK_VALUES, min_size=1, max_size=4), drop=st.sets(ENVELOPE_FIELDS))
def _fuzz_envelope_fields(changes: dict[str, Any], drop: set[str]) -> None:
    payload = dict(VALID_PAYLOAD)
    for name in drop:
        payload.pop(name, None)
    payload.update(changes)
    receive_envelope(msgpack.packb(payload, use_bin_type=True), "envelope-fields")


# -- ciphertext chunks: the TenSEAL deserialiser behind the accumulator ----------------------------------------------
CHUNK = VALID_PAYLOAD["chunks"][0]


@fuzz_settings(300)
@given(edits=st.lists(st.tuples(st.integers(0, 400), st.integers(0, 255)), min_size=1, max_size=6), cut=st.floats(0, 1))
def _fuzz_ciphertext_chunk(edits: list[tuple[int, int]], cut: float) -> None:
    COUNTS["ciphertext-chunk"] += 1
    data = bytearray(CHUNK)
    for where, value in edits:  # the serialised header of a ciphertext sits in its first few hundred bytes
        data[where] = value
    del data[max(1, int(cut * len(data))) :]
    accumulator = EncryptedAccumulator(PUBLIC, length=2048)
    try:
        accumulator.add_chunks((bytes(data),), source="fuzz")
    except MedHeavenError:
        COUNTS["ciphertext-chunk:rejected"] += 1


# -- receipts ----------------------------------------------------------------------------------------------------------
VALID_RECEIPT = Receipt(RUN, ROUND, 1, "update", HOSPITAL, f"{RUN}/updates/{ROUND}/a1/{HOSPITAL}.ckks", "0" * 64, 10)
RECEIPT_FIELDS = st.sampled_from([*VALID_RECEIPT.to_dict(), "extra"])


@fuzz_settings(1000)
@given(
    whole=st.none() | MSGPACK_VALUES,
    changes=st.dictionaries(RECEIPT_FIELDS, MSGPACK_VALUES, max_size=4),
    drop=st.sets(RECEIPT_FIELDS, max_size=2),
)
def _fuzz_receipts(whole: Any, changes: dict[str, Any], drop: set[str]) -> None:
    COUNTS["receipt"] += 1
    if whole is not None:
        value = whole
    else:
        value = {k: v for k, v in VALID_RECEIPT.to_dict().items() if k not in drop} | changes
    try:
        Receipt.from_dict(value)
    except MedHeavenError:
        COUNTS["receipt:rejected"] += 1


# -- Celery's bounded msgpack decoder (kombu turns its exceptions into a refused message) ------------------------------
@fuzz_settings(500)
@given(data=st.binary(max_size=2048) | MSGPACK_VALUES.map(lambda v: msgpack.packb(v, use_bin_type=True)))
def _fuzz_celery_msgpack(data: bytes) -> None:
    COUNTS["celery-msgpack"] += 1
    started = time.perf_counter()
    try:
        _bounded_msgpack_loads(data)
    except (ValueError, msgpack.UnpackException):
        COUNTS["celery-msgpack:rejected"] += 1
    assert time.perf_counter() - started < 1.0


# -- bfv-masked chunks: SEAL's own loader behind BfvAccumulator (header, metadata, zstd frame, seed, coefficients) -----
BFV_PARAMS = plan_bfv_parameters()
BFV_SECRET = create_bfv_key_material(BFV_PARAMS)
BFV_CHUNK = BFV_SECRET.encrypt(np.arange(2048, dtype=np.uint64))


@fuzz_settings(300)
@given(
    edits=st.lists(st.tuples(st.integers(0, 600), st.integers(0, 255)), min_size=1, max_size=6),
    cut=st.floats(0, 1),
    tail=st.booleans(),
)
def _fuzz_bfv_chunk(edits: list[tuple[int, int]], cut: float, tail: bool) -> None:
    COUNTS["bfv-chunk"] += 1
    data = bytearray(BFV_CHUNK)
    for where, value in edits:  # SEAL's header and the ciphertext metadata sit in the first bytes; the seed at the end
        data[len(data) - 1 - where if tail else where] = value
    del data[max(1, int(cut * len(data))) if cut < 0.9 else len(data) :]
    accumulator = BfvAccumulator(BFV_SECRET.public(), length=2048)
    try:
        accumulator.add_chunks((bytes(data),), source="fuzz")
    except MedHeavenError:
        COUNTS["bfv-chunk:rejected"] += 1


FUZZERS = {
    "envelope-random-bytes": _fuzz_envelope_random_bytes,
    "envelope-mutations": _fuzz_envelope_mutations,
    "envelope-fields": _fuzz_envelope_fields,
    "ciphertext-chunk": _fuzz_ciphertext_chunk,
    "bfv-chunk": _fuzz_bfv_chunk,
    "receipt": _fuzz_receipts,
    "celery-msgpack": _fuzz_celery_msgpack,
}


def _report(strategy: str, before: int, record_property: Any, capsys: pytest.CaptureFixture[str]) -> int:
    ran = COUNTS[strategy] - before
    record_property(f"fuzz_examples_{strategy}", ran)
    with capsys.disabled():
        print(f"\n[fuzz] {strategy}: {ran} examples, {COUNTS[f'{strategy}:rejected']} rejected, no other exception")
    return ran


@pytest.mark.parametrize("strategy", list(FUZZERS))
def test_fuzz_decoder_raises_only_medheaven_errors(
    strategy: str, record_property: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    before = COUNTS[strategy]
    FUZZERS[strategy]()
    ran = _report(strategy, before, record_property, capsys)
    assert ran >= 200, f"hypothesis ran only {ran} examples of {strategy}"
    assert COUNTS[f"{strategy}:rejected"] > 0


# -- the whole fold path of a real aggregator over a real open round -----------------------------------------------
@dataclass
class OpenRound:
    node: AggregatorNode
    spec: RoundSpec
    paths: RunPaths


@pytest.fixture(scope="module")
def open_round(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpenRound]:
    simulation = small_simulation(tmp_path_factory.mktemp("fuzz"), hospitals=2, rows=400)
    store = simulation.store()
    config = simulation_config(simulation, run="fuzz", rounds=1, score_test=False)
    create_run(store, config, model=default_model(simulation, hidden=(4,)), layout=simulation.layout)
    spec = RoundSpec("fuzz", 1, 1, "update", simulation.hospitals, 2, time.time() + 3600, BASE)
    paths = RunPaths("fuzz")
    store.put_json(paths.spec("update", 1), spec.to_dict())
    yield OpenRound(AggregatorNode(store, expected_fingerprint=simulation.keys.fingerprint), spec, paths)


def test_fuzz_aggregator_fold_path(
    open_round: OpenRound, record_property: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """Random receipts pointing at random bytes planted in the store: the node returns a rejection or raises a
    MedHeavenError, never anything else, never folds, and keeps serving."""
    node, spec, paths = open_round.node, open_round.spec, open_round.paths
    before = COUNTS["aggregator-fold"]

    @fuzz_settings(400)
    @given(
        hospital=st.sampled_from([*spec.hospitals, "h9", "", "../x"]),
        body=st.binary(max_size=3000)
        | st.just(VALID)
        | MSGPACK_VALUES.map(lambda v: msgpack.packb(v, use_bin_type=True)),
        changes=st.dictionaries(RECEIPT_FIELDS, MSGPACK_VALUES, max_size=2),
        honest_digest=st.booleans(),
    )
    def fold_anything(hospital: str, body: bytes, changes: dict[str, Any], honest_digest: bool) -> None:
        COUNTS["aggregator-fold"] += 1
        key = paths.update("update", 1, 1, hospital) if hospital in spec.hospitals else f"fuzz/elsewhere/{len(body)}"
        if hospital in spec.hospitals:
            node.store.put(key, body)
        receipt = {
            "run": "fuzz", "round": 1, "attempt": 1, "kind": "update", "hospital": hospital, "key": key,
            "sha256": sha256_hex(body) if honest_digest else "f" * 64, "size": len(body),
        }  # fmt: skip
        receipt.update(changes)
        try:
            result = node.fold(receipt)
        except MedHeavenError:
            COUNTS["aggregator-fold:rejected"] += 1
            return
        assert result["status"] in {"rejected", "noise", "closed"}, result
        COUNTS["aggregator-fold:rejected"] += 1

    fold_anything()
    ran = _report("aggregator-fold", before, record_property, capsys)
    assert ran >= 200
    key = paths.ledger("update", 1, 1)
    ledger = node.store.get_json(key) if node.store.exists(key) else {"folded": []}
    assert ledger["folded"] == [], "a fuzzed update was folded"
    total = sum(v for k, v in COUNTS.items() if ":" not in k)
    with capsys.disabled():
        print(f"[fuzz] total so far in this session: {total} examples")

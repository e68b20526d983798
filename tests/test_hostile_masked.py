"""Hostile inputs of the bfv-masked default, end to end through the aggregator and a key holder's decryption.

Each case is a correctly *signed* upload by a registered hospital (so only the crypto layer and the round protocol
stand between it and the global model): the wrong lane count and a corrupt seeded-ciphertext header are refused
at the fold with the hospital named; an unmasked upload and a mask of another attempt cannot be told from a good
upload under encryption, so they fold, but the committed sum does not unmask, and every key holder's decryption
refuses it (the sample-count lane is not a positive integer) instead of training on garbage.
"""

from __future__ import annotations

import hashlib
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest
from federation_support import small_simulation

from coordinator.run import create_run
from coordinator.simulation import Simulation, default_model, hospital_nodes, simulation_config
from medheaven.crypto.codec import HospitalCodec, hospital_codec, load_secret_keys
from medheaven.crypto.envelope import Envelope
from medheaven.crypto.masks import MaskScope, pairwise_mask
from medheaven.crypto.packing import pack_update
from medheaven.errors import PackingError
from medheaven.federated.aggregator import AggregatorNode
from medheaven.federated.hospital import HospitalNode
from medheaven.federated.paths import RunPaths
from medheaven.federated.protocol import sha256_hex
from medheaven.federated.results import committed_average
from medheaven.federated.wire import Receipt, RoundSpec, RunDescription


@dataclass
class Masked:
    simulation: Simulation
    nodes: dict[str, HospitalNode]
    codec: HospitalCodec


@pytest.fixture(scope="module")
def masked(tmp_path_factory: pytest.TempPathFactory) -> Masked:
    simulation = small_simulation(tmp_path_factory.mktemp("hostile-masked"), hospitals=3, rows=600)
    secret = load_secret_keys(simulation.keys.secret)
    return Masked(simulation, hospital_nodes(simulation), hospital_codec(simulation_scheme(simulation), secret))


def simulation_scheme(simulation: Simulation):  # type: ignore[no-untyped-def]
    from medheaven.crypto.codec import Scheme

    assert "bfv" in simulation.keys.secret.read_bytes().decode("latin-1")
    return Scheme.BFV_MASKED


def _open_round(world: Masked, run: str) -> tuple[RunDescription, RoundSpec]:
    store = world.simulation.store()
    config = simulation_config(world.simulation, run=run, rounds=1, min_hospitals=2, score_test=False)
    description = create_run(
        store, config, model=default_model(world.simulation, hidden=(8,)), layout=world.simulation.layout
    )
    hospitals = world.simulation.hospitals
    spec = RoundSpec(
        run=run, round=1, attempt=1, kind="update", hospitals=hospitals, quorum=2, deadline=time.time() + 3600,
        base_sha256=hashlib.sha256(run.encode()).hexdigest(), opened_at=time.time(), cohort=hospitals,
    )  # fmt: skip
    store.put_json(RunPaths(run).spec("update", 1), spec.to_dict())
    return description, spec


def _upload(
    world: Masked, description: RunDescription, spec: RoundSpec, hospital: str, mask: np.ndarray | None
) -> dict[str, object]:
    """A signed envelope of ``hospital`` with ``mask`` (None: its correct mask for the attempt), and its receipt."""
    rng = np.random.default_rng(len(hospital) + sum(map(ord, hospital)))
    packed = pack_update(rng.uniform(-1, 1, description.model.parameter_count()), 100, params=description.params)
    node = world.nodes[hospital]
    if mask is None:
        mask = node._mask(spec, length=packed.size, modulus=world.codec.mask_modulus or 0)
    envelope = Envelope(
        kind="update", run=spec.run, round=1, hospital=hospital, fingerprint=description.fingerprint,
        base=spec.base_sha256, length=packed.size, scale_bits=description.params.scale_bits,
        chunks=world.codec.encode(packed, scale_bits=description.params.scale_bits, mask=mask), scheme="bfv-masked",
    )  # fmt: skip
    return _plant(world, spec, hospital, envelope)


def _plant(world: Masked, spec: RoundSpec, hospital: str, envelope: Envelope) -> dict[str, object]:
    node = world.nodes[hospital]
    data = envelope.signed_by(node.signing_key).to_bytes()
    key = RunPaths(spec.run).update("update", 1, 1, hospital)
    world.simulation.store().put(key, data)
    receipt = Receipt(spec.run, 1, 1, "update", hospital, key, sha256_hex(data), len(data), completed_at=time.time())
    return receipt.signed_by(node.signing_key).to_dict()


def _corrupt_header(chunk: bytes) -> bytes:
    header = bytearray(chunk)
    declared = struct.unpack_from("<Q", header, 8)[0]
    struct.pack_into("<Q", header, 8, declared + 7)  # SEAL's declared size no longer matches the bytes
    return bytes(header)


REFUSED: list[tuple[str, Callable[[Envelope], Envelope], str, str]] = [
    ("wrong-lane-count", lambda e: replace(e, length=e.length - 1), "shape", "values in"),
    ("bad-seed-header", lambda e: replace(e, chunks=(_corrupt_header(bytes(e.chunks[0])), *e.chunks[1:])),
     "ciphertext", "corrupt header"),
]  # fmt: skip


@pytest.mark.parametrize(("name", "spoil", "reason", "match"), REFUSED, ids=[c[0] for c in REFUSED])
def test_hostile_masked_upload_refused_at_the_fold(
    masked: Masked, name: str, spoil: Callable[[Envelope], Envelope], reason: str, match: str
) -> None:
    description, spec = _open_round(masked, f"hm-{name}")
    honest = _upload(masked, description, spec, "h1", None)
    store = masked.simulation.store()
    envelope = Envelope.from_bytes(store.get(str(honest["key"])), limits=_limits(description))
    spoiled = replace(spoil(envelope), signature=b"")
    outcome = AggregatorNode(store).fold(_plant(masked, spec, "h1", spoiled))
    assert outcome["status"] == "rejected" and outcome["reason"] == reason, outcome
    assert match.lower() in str(outcome["message"]).lower() and "h1" in str(outcome["message"])


@pytest.mark.parametrize("fault", ["unmasked", "mask-of-another-attempt"])
def test_hostile_masked_sum_that_does_not_unmask_is_refused_by_every_key_holder(masked: Masked, fault: str) -> None:
    description, spec = _open_round(masked, f"hm-{fault}")
    store = masked.simulation.store()
    length = description.vector_length
    modulus = masked.codec.mask_modulus or 0
    if fault == "unmasked":
        bad = np.zeros(length, dtype=np.uint64)
    else:
        node = masked.nodes["h1"]
        scope = MaskScope(spec.run, "update", 1, 2, tuple(sorted(spec.cohort)))  # attempt 2's mask in attempt 1
        peers = {h: k for h, k in _peers(masked, spec).items()}
        assert node.agreement_key is not None
        bad = pairwise_mask("h1", node.agreement_key, peers, scope, length, modulus)
    aggregator = AggregatorNode(store)
    receipts = [_upload(masked, description, spec, "h1", bad)]
    receipts += [_upload(masked, description, spec, h, None) for h in ("h2", "h3")]
    assert [aggregator.fold(r)["status"] for r in receipts] == ["folded"] * 3  # indistinguishable under encryption
    assert aggregator.finalise(spec.run, "update", 1, 1)["status"] == "committed"
    secret = load_secret_keys(masked.simulation.keys.secret)
    with pytest.raises(PackingError, match=r"masks did not cancel|empty or corrupt"):
        committed_average(store, description, secret, 1)
    # the same three uploads with h1's correct mask unmask exactly: the refusal is the fault's, not the protocol's
    good_description, good_spec = _open_round(masked, f"hm-{fault}-control")
    good = [_upload(masked, good_description, good_spec, h, None) for h in masked.simulation.hospitals]
    control = AggregatorNode(store)
    assert [control.fold(r)["status"] for r in good] == ["folded"] * 3
    control.finalise(good_spec.run, "update", 1, 1)
    _, total, _ = committed_average(store, good_description, secret, 1)
    assert total == 300


def _peers(masked: Masked, spec: RoundSpec):  # type: ignore[no-untyped-def]
    from medheaven.federated.setup import load_registry

    return load_registry(masked.simulation.store()).require_agreement_keys(h for h in spec.cohort if h != "h1")


def _limits(description: RunDescription):  # type: ignore[no-untyped-def]
    from medheaven.federated.protocol import envelope_limits

    return envelope_limits(description)


def test_hostile_masked_old_registry_cannot_start_a_masked_run(masked: Masked, tmp_path: Path) -> None:
    from medheaven.crypto.signing import HospitalRegistry
    from medheaven.errors import ConfigurationError
    from medheaven.federated.paths import REGISTRY_KEY

    store = masked.simulation.store()
    registry = HospitalRegistry.from_dict(store.get_json(REGISTRY_KEY))
    store.put_json(REGISTRY_KEY, HospitalRegistry(registry.keys, {}).to_dict())  # as written before masking
    try:
        with pytest.raises(ConfigurationError, match=r"no agreement key for h1, h2, h3.*medheaven hospital init"):
            _open_round(masked, "hm-old-registry")
    finally:
        store.put_json(REGISTRY_KEY, registry.to_dict())

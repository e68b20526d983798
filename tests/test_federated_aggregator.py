"""The aggregator's finalise: the streamed result, and a failed commit that a retry completes.

The finalise writes the running sum chunk by chunk into an anonymous file and streams that to the store
(``federated/result_spool.py``); the in-memory sum is only read, so a store write that fails, before or after the
result lands, leaves nothing committed and a retry commits the same bytes.
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from federation_support import small_simulation

from coordinator.run import create_run
from coordinator.simulation import Simulation, default_model, hospital_nodes, simulation_config
from medheaven.crypto.codec import hospital_codec, load_secret_keys, scheme_of
from medheaven.crypto.envelope import Envelope
from medheaven.crypto.packing import pack_update
from medheaven.errors import StoreError
from medheaven.federated.aggregator import AggregatorNode
from medheaven.federated.paths import RunPaths
from medheaven.federated.protocol import sha256_hex
from medheaven.federated.result_spool import spool_result
from medheaven.federated.results import committed_average
from medheaven.federated.verify import verify_round
from medheaven.federated.wire import Manifest, Receipt, RoundSpec


@pytest.fixture(scope="module")
def simulation(tmp_path_factory: pytest.TempPathFactory) -> Simulation:
    return small_simulation(tmp_path_factory.mktemp("finalise"), hospitals=3, rows=600)


def _folded_round(simulation: Simulation, run: str) -> AggregatorNode:
    """A bfv-masked round whose three masked, signed uploads are folded by a fresh aggregator."""
    store = simulation.store()
    config = simulation_config(simulation, run=run, rounds=1, min_hospitals=2, score_test=False)
    description = create_run(store, config, model=default_model(simulation, hidden=(8,)), layout=simulation.layout)
    hospitals = simulation.hospitals
    spec = RoundSpec(
        run=run, round=1, attempt=1, kind="update", hospitals=hospitals, quorum=3, deadline=time.time() + 3600,
        base_sha256=hashlib.sha256(run.encode()).hexdigest(), opened_at=time.time(), cohort=hospitals,
    )  # fmt: skip
    store.put_json(RunPaths(run).spec("update", 1), spec.to_dict())
    secret = load_secret_keys(simulation.keys.secret)
    codec = hospital_codec(scheme_of(secret), secret)
    nodes = hospital_nodes(simulation)
    aggregator = AggregatorNode(store)
    for index, hospital in enumerate(hospitals):
        weights = np.random.default_rng(index).uniform(-1, 1, description.model.parameter_count())
        packed = pack_update(weights, 100 * (index + 1), params=description.params)
        mask = nodes[hospital]._mask(spec, length=packed.size, modulus=codec.mask_modulus or 0)
        envelope = Envelope(
            kind="update", run=run, round=1, hospital=hospital, fingerprint=description.fingerprint,
            base=spec.base_sha256, length=packed.size, scale_bits=description.params.scale_bits,
            chunks=codec.encode(packed, scale_bits=description.params.scale_bits, mask=mask), scheme="bfv-masked",
        )  # fmt: skip
        data = envelope.signed_by(nodes[hospital].signing_key).to_bytes()
        key = RunPaths(run).update("update", 1, 1, hospital)
        store.put(key, data)
        receipt = Receipt(run, 1, 1, "update", hospital, key, sha256_hex(data), len(data), completed_at=time.time())
        assert aggregator.fold(receipt.signed_by(nodes[hospital].signing_key).to_dict())["status"] == "folded"
    return aggregator


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _fail_once(target: Any, name: str) -> list[str]:
    """Make ``target.name`` raise a store error on its first call only; returns the keys it was called with."""
    real = getattr(target, name)
    calls: list[str] = []

    def flaky(key: str, *args: Any) -> None:
        calls.append(key)
        if len(calls) == 1:
            raise StoreError(f"injected: the store refused {key}")
        real(key, *args)

    setattr(target, name, flaky)
    return calls


@pytest.mark.parametrize("failing", ["put_file", "create_json"], ids=["result-write-fails", "manifest-write-fails"])
def test_aggregator_finalise_retried_after_a_failed_store_write_commits_the_same_sum(
    simulation: Simulation, failing: str
) -> None:
    run = f"finalise-retry-{failing.replace('_', '-')}"
    aggregator = _folded_round(simulation, run)
    store = aggregator.store
    paths = RunPaths(run)
    calls = _fail_once(store, failing)
    fds = _open_fds()
    with pytest.raises(StoreError, match="injected"):
        aggregator.finalise(run, "update", 1, 1)
    assert _open_fds() == fds, "the spool file of the failed finalise is still open"
    assert not store.exists(paths.manifest("update", 1)), "a failed finalise committed"
    left = store.get(paths.global_model(1)) if store.exists(paths.global_model(1)) else None
    assert (left is None) == (failing == "put_file")  # the result lands before the manifest, never after
    committed = aggregator.finalise(run, "update", 1, 1)
    assert committed["status"] == "committed" and len(calls) == 2
    manifest = Manifest.from_dict(store.get_json(paths.manifest("update", 1)))
    data = store.get(paths.global_model(1))
    assert manifest.result_sha256 == sha256_hex(data) == committed["sha256"] and manifest.result_size == len(data)
    if left is not None:
        assert data == left, "the retry serialised another sum than the failed attempt"
    # the committed sum is the FedAvg of the three folded uploads, exactly as verify recomputes it
    secret = load_secret_keys(simulation.keys.secret)
    description = aggregator.run(run)
    _, total, _ = committed_average(store, description, secret, 1)
    assert total == 100 + 200 + 300
    report = verify_round(store, secret, run, 1)
    assert report["total_samples_match"] and report["max_abs_error"] <= description.params.error_bound
    assert aggregator.finalise(run, "update", 1, 1) == committed  # idempotent once committed


def test_aggregator_spooled_result_is_the_streamed_envelope(tmp_path: Path) -> None:
    """The spool holds exactly ``pack_streaming``'s bytes, with their digest and size, and is gone once closed."""
    header = Envelope(
        kind="global", run="r", round=2, hospital="", fingerprint="f" * 64, base="b" * 64, length=10, scale_bits=3,
        chunks=(), scheme="bfv-masked",
    )  # fmt: skip
    chunks = [bytes([i]) * (70_000 + i) for i in range(3)]
    expected = bytes(header.pack_streaming(iter(chunks), 3))
    with spool_result(header, iter(chunks), 3, folder=tmp_path) as spooled:
        spooled.file.seek(0)
        assert spooled.file.read() == expected
        assert (spooled.sha256, spooled.size) == (sha256_hex(expected), len(expected))
        assert list(tmp_path.iterdir()) == [], "the spool file has a name somebody could open"
    assert spooled.file.closed
    with pytest.raises(ValueError, match="promised 4 chunks and given 3"), spool_result(header, iter(chunks), 4):
        pass

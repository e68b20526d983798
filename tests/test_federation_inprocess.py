"""The embedded federation (memory:// transport, worker threads): protocol correctness against plaintext FedAvg."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from federation_support import assert_store_is_public_only, small_simulation

from coordinator.simulation import default_model, run_in_threads, simulation_config
from medheaven.crypto.codec import hospital_codec, load_secret_keys
from medheaven.crypto.envelope import Envelope
from medheaven.federated.fedavg import fedavg
from medheaven.federated.paths import RunPaths
from medheaven.federated.verify import verify_round


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    simulation = small_simulation(tmp_path_factory.mktemp("inprocess"))
    config = simulation_config(simulation, run="threads", rounds=2, round_timeout=120)
    result, nodes = run_in_threads(simulation, config, model=default_model(simulation), audit=True)
    return simulation, result, nodes


def test_inprocess_every_round_committed(finished) -> None:  # type: ignore[no-untyped-def]
    simulation, result, _ = finished
    store = simulation.store()
    assert [r["round"] for r in result.history] == [1, 2]
    for round_number in (0, 1, 2):
        assert store.exists(RunPaths("threads").manifest("update", round_number))
    assert all(len(r["participants"]) == 3 for r in result.history)
    assert result.test is not None and 0.0 <= result.test["metrics"]["roc_auc"] <= 1.0


@pytest.mark.parametrize("round_number", [1, 2])
def test_inprocess_global_equals_plaintext_fedavg_of_encrypted_weights(finished, round_number: int) -> None:  # type: ignore[no-untyped-def]
    _, result, nodes = finished
    he = next(iter(nodes.values())).global_weights(result.run, round_number)
    updates = [
        (packed[:-1] / packed[-1], int(packed[-1]))
        for node in nodes.values()
        if (packed := node.audit_updates[(result.run, round_number)]) is not None
    ]
    assert len(updates) == 3
    assert np.max(np.abs(he - fedavg(updates))) <= 1e-6


def test_inprocess_verify_round_reports_agreement(finished) -> None:  # type: ignore[no-untyped-def]
    simulation, result, _ = finished
    report = verify_round(simulation.store(), load_secret_keys(simulation.keys.secret), result.run, 2)
    assert report["scheme"] == "bfv-masked"  # the default for new key sets
    assert report["total_samples_match"] and report["mismatched_lanes"] == 0  # exact: the masks cancel bit for bit
    assert report["max_abs_error"] <= 1e-6
    assert report["hospitals"] == sorted(report["hospitals"]) or len(report["hospitals"]) == 3


def test_inprocess_key_holder_decrypting_one_upload_sees_its_mask_not_its_update(finished) -> None:  # type: ignore[no-untyped-def]
    """Every hospital holds the secret key; what it can read of another hospital's stored upload is noise."""
    from medheaven.federated.protocol import envelope_limits
    from medheaven.federated.wire import RoundSpec, RunDescription

    simulation, result, nodes = finished
    store = simulation.store()
    paths = RunPaths(result.run)
    description = RunDescription.from_dict(store.get_json(paths.model))
    spec = RoundSpec.from_dict(store.get_json(paths.spec("update", 2)))
    assert spec.cohort == spec.hospitals == simulation.hospitals  # fixed when the attempt opened
    assert RoundSpec.from_dict(store.get_json(paths.spec("stats", 0))).cohort == simulation.hospitals  # stats too
    codec = hospital_codec(description.scheme, load_secret_keys(simulation.keys.secret))
    victim = simulation.hospitals[1]
    envelope = Envelope.from_bytes(
        store.get(paths.update("update", 2, spec.attempt, victim)), limits=envelope_limits(description)
    )
    seen = codec.decode_sum(envelope.chunks, length=envelope.length, scale_bits=envelope.scale_bits)
    update = nodes[victim].audit_updates[(result.run, 2)]
    assert np.max(np.abs(seen - update)) > 1e3  # not the update plus noise: the mask is uniform mod t
    assert abs(float(np.corrcoef(seen, update)[0, 1])) < 0.1  # a few thousand parameters: loose, still decisive


def test_inprocess_store_holds_only_public_material(finished) -> None:  # type: ignore[no-untyped-def]
    simulation, result, nodes = finished
    weights = next(iter(nodes.values())).global_weights(result.run, 2)
    checked = assert_store_is_public_only(simulation.store_dir, simulation.keys.secret, weights)
    assert checked > 10


def test_inprocess_plaintext_mode_runs_the_same_protocol(tmp_path: Path) -> None:
    simulation = small_simulation(tmp_path, rows=2000)
    config = simulation_config(simulation, run="plain", rounds=1, plaintext=True, score_test=False)
    result, _ = run_in_threads(simulation, config, model=default_model(simulation))
    assert [r["round"] for r in result.history] == [1]
    description = simulation.store().get_json(RunPaths("plain").model)
    assert description["plaintext"] is True

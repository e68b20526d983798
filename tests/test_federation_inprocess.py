"""The embedded federation (memory:// transport, worker threads): protocol correctness against plaintext FedAvg."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from federation_support import assert_store_is_public_only, small_simulation

from coordinator.simulation import default_model, run_in_threads, simulation_config
from medheaven.crypto.context import load_secret_context
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
    report = verify_round(simulation.store(), load_secret_context(simulation.keys.secret), result.run, 2)
    assert report["total_samples_match"]
    assert report["max_abs_error"] <= 1e-6
    assert report["hospitals"] == sorted(report["hospitals"]) or len(report["hospitals"]) == 3


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

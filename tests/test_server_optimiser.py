"""Server-side optimisers applied by the hospitals: the aggregator stays add-only, every key holder derives the same
model bit for bit, and a restart or an export re-derives it from the committed rounds."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from federation_support import small_simulation

from coordinator.simulation import default_model, hospital_nodes, run_in_threads, simulation_config
from medheaven.crypto.codec import load_secret_keys
from medheaven.errors import ConfigurationError
from medheaven.federated.paths import RunPaths
from medheaven.federated.server_optimiser import (
    ServerOptimiser,
    ServerOptimiserKind,
    ServerState,
    Trajectory,
    server_step,
)
from medheaven.federated.verify import verify_round
from medheaven.federated.wire import RunDescription
from medheaven.serving.export import decrypt_global_model

ROUNDS = 3
FEDADAM = ServerOptimiser.parse("fedadam", learning_rate=0.02)


def _digest(weights: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(weights, dtype="<f8").tobytes()).hexdigest()


def test_fedadam_step_is_reddi_et_al_algorithm_2() -> None:
    rng = np.random.default_rng(1)
    x, m, v = rng.normal(size=50), rng.normal(size=50) * 0.1, rng.random(50) * 0.01
    average = x + rng.normal(size=50) * 0.05
    new = server_step(FEDADAM, ServerState(4, x, m, v), average)
    delta = average - x
    m1 = 0.9 * m + (1 - 0.9) * delta
    v1 = 0.99 * v + (1 - 0.99) * (delta * delta)
    assert new.round == 5
    np.testing.assert_array_equal(new.first, m1)
    np.testing.assert_array_equal(new.second, v1)
    np.testing.assert_array_equal(new.model, x + 0.02 * m1 / (np.sqrt(v1) + 1e-3))


def test_fedavgm_and_plain_fedavg_steps() -> None:
    x, average = np.array([1.0, -2.0, 0.5]), np.array([1.5, -2.5, 0.5])
    momentum = ServerOptimiser.parse("fedavgm", learning_rate=1.0, momentum=0.5)
    state = server_step(momentum, ServerState(0, x, np.array([0.2, 0.0, -0.2]), np.zeros(3)), average)
    np.testing.assert_array_equal(state.first, [0.6, -0.5, -0.1])
    np.testing.assert_array_equal(state.model, x + state.first)
    plain = server_step(ServerOptimiser(), ServerState(0, x, np.zeros(3), np.zeros(3)), average)
    np.testing.assert_array_equal(plain.model, average)  # FedAvg: the decrypted average, unchanged


def test_trajectory_replays_and_rewinds() -> None:
    averages = {r: np.full(4, float(r)) for r in range(5)}
    calls: list[int] = []

    def average_of(r: int) -> np.ndarray:
        calls.append(r)
        return averages[r]

    trajectory = Trajectory(FEDADAM, average_of)
    fourth = trajectory.model(4)
    assert calls == [0, 1, 2, 3, 4]
    again = Trajectory(FEDADAM, average_of).model(4)
    assert _digest(fourth) == _digest(again)
    assert _digest(trajectory.model(2)) == _digest(Trajectory(FEDADAM, average_of).model(2))  # rewinds by replaying


def test_description_carries_the_optimiser_and_plain_runs_read_unchanged() -> None:
    with pytest.raises(ConfigurationError, match="--server-optimiser 'adam'"):
        ServerOptimiser.parse("adam")
    with pytest.raises(ConfigurationError, match="--server-lr"):
        ServerOptimiser.parse("fedavgm", learning_rate=0.0)
    assert FEDADAM.kind is ServerOptimiserKind.FEDADAM
    assert ServerOptimiser.from_dict(FEDADAM.to_dict()) == FEDADAM


@pytest.fixture(scope="module")
def adam_run(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    simulation = small_simulation(tmp_path_factory.mktemp("server-opt"), hospitals=2, rows=1500)
    config = simulation_config(simulation, run="adam", rounds=ROUNDS, round_timeout=120, server=FEDADAM)
    result, nodes = run_in_threads(simulation, config, model=default_model(simulation))
    return simulation, result, nodes


def test_run_description_in_the_store_is_format_2_with_the_optimiser(adam_run) -> None:  # type: ignore[no-untyped-def]
    simulation, result, _ = adam_run
    stored = simulation.store().get_json(RunPaths(result.run).model)
    assert stored["format"] == 2 and stored["server_optimiser"]["kind"] == "fedadam"
    assert RunDescription.from_dict(stored).server == FEDADAM
    plain = dict(stored, format=1)
    plain.pop("server_optimiser")
    assert RunDescription.from_dict(plain).server.is_plain
    with pytest.raises(ConfigurationError, match="format 3"):
        RunDescription.from_dict(dict(stored, format=3))


def test_every_hospital_derives_the_same_model_bit_for_bit(adam_run) -> None:  # type: ignore[no-untyped-def]
    simulation, result, nodes = adam_run
    derived = {h: _digest(node.global_weights(result.run, ROUNDS)) for h, node in nodes.items()}
    assert len(set(derived.values())) == 1, derived
    # the server step was applied: the model is not the plain average the aggregator summed
    node = next(iter(nodes.values()))
    average = node.averaged_weights(result.run, ROUNDS)
    assert np.max(np.abs(node.global_weights(result.run, ROUNDS) - average)) > 1e-4
    # fresh nodes (a restarted hospital) re-derive it from the store by replaying the committed rounds
    fresh = hospital_nodes(simulation)
    assert {_digest(n.global_weights(result.run, ROUNDS)) for n in fresh.values()} == set(derived.values())


def test_another_process_and_export_re_derive_the_same_model(adam_run) -> None:  # type: ignore[no-untyped-def]
    simulation, result, nodes = adam_run
    expected = _digest(next(iter(nodes.values())).global_weights(result.run, ROUNDS))
    secret = load_secret_keys(simulation.keys.secret)
    exported = decrypt_global_model(simulation.store(), secret, result.run, ROUNDS)
    assert _digest(exported.weights) == expected
    script = (
        "import hashlib, sys, numpy as np\n"
        "from medheaven.crypto.codec import load_secret_keys\n"
        "from medheaven.serving.export import decrypt_global_model\n"
        "from pathlib import Path\n"
        "from medheaven.store.local import LocalStore\n"
        "m = decrypt_global_model(LocalStore(Path(sys.argv[1])), load_secret_keys(Path(sys.argv[2])), sys.argv[3], int(sys.argv[4]))\n"
        "print(hashlib.sha256(np.ascontiguousarray(m.weights, dtype='<f8').tobytes()).hexdigest())\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    args = [str(simulation.store_dir), str(simulation.keys.secret), result.run, str(ROUNDS)]
    out = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == expected


def test_verify_still_checks_the_homomorphic_sum(adam_run) -> None:  # type: ignore[no-untyped-def]
    simulation, result, _ = adam_run
    report = verify_round(simulation.store(), load_secret_keys(simulation.keys.secret), result.run, ROUNDS)
    assert report["total_samples_match"]
    assert report["max_abs_error"] <= 1e-6

"""(ε, δ) per hospital where operators and clinicians read it: `medheaven report`, `medheaven-coordinator status`,
and the exported model's metadata (`medheaven export`, `medheaven predict`). One tiny real DP-SGD run (2 hospitals,
2 rounds, encrypted, worker threads) feeds every check; the expected ε is what each hospital signed in its receipts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from federation_support import small_simulation
from typer.testing import CliRunner

from coordinator.cli import app as coordinator_app
from coordinator.simulation import Simulation, default_model, run_in_threads, simulation_config
from medheaven.cli.root import app as medheaven_app
from medheaven.federated.paths import RunPaths
from medheaven.federated.wire import LocalTraining
from medheaven.privacy import DpConfig
from medheaven.privacy.spent import model_privacy, spent_by_hospital
from medheaven.serving.export import Preprocessing, preprocessing_path

RUN = "dp-report"
ROUNDS = 2
DP = DpConfig(target_epsilon=3.0, delta=1e-5, clip=1.0)


@pytest.fixture(scope="module")
def dp_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Simulation, list[dict[str, Any]]]:
    simulation = small_simulation(tmp_path_factory.mktemp("dp-report"), hospitals=2, rows=1200)
    training = LocalTraining(batch_size=32, learning_rate=1e-3, dp=DP, planned_rounds=ROUNDS)
    config = simulation_config(simulation, run=RUN, rounds=ROUNDS, round_timeout=120, training=training)
    result, _ = run_in_threads(simulation, config, model=default_model(simulation, hidden=(8,)))
    assert [r["round"] for r in result.history] == [1, 2]
    return simulation, result.history


def _signed(history: list[dict[str, Any]], round_number: int) -> dict[str, float]:
    """ε each hospital signed in its receipt of that round."""
    record = next(r for r in history if r["round"] == round_number)
    return {h: float(p["epsilon"]) for h, p in record["privacy"].items()}


def test_spent_by_hospital_takes_each_hospitals_last_report_up_to_the_model_round() -> None:
    rounds = [
        (2, {"h1": {"epsilon": 2.0, "delta": 1e-5, "noise_multiplier": 1.1}}),  # h2 missed round 2
        (1, {"h1": {"epsilon": 1.0, "delta": 1e-5}, "h2": {"epsilon": 1.5, "delta": 1e-5}}),
        (3, {"h2": {"epsilon": 2.5, "delta": 1e-5}}),
    ]
    spent = spent_by_hospital(rounds, up_to=2)
    assert {h: (s.epsilon, s.round) for h, s in spent.items()} == {"h1": (2.0, 2), "h2": (1.5, 1)}
    last = model_privacy(DP, rounds)
    assert last is not None and last.model_round == 3 and last.max_epsilon == 2.5
    assert model_privacy(None, rounds) is None  # no DP, no (ε, δ) claimed


def test_report_shows_epsilon_and_delta_per_hospital(
    dp_run: tuple[Simulation, list[dict[str, Any]]], tmp_path: Path
) -> None:
    simulation, history = dp_run
    result = CliRunner().invoke(
        medheaven_app, ["report", RUN, "--store", simulation.store_url(), "--out", str(tmp_path)]
    )
    assert result.exit_code == 0, result.output
    report = (tmp_path / "report.md").read_text()
    section = report[report.index("## Differential privacy") :]
    assert "target ε = 3 per patient at δ = 1e-05" in section and "C = 1" in section
    for hospital, epsilon in _signed(history, ROUNDS).items():
        assert f"| {hospital} | {epsilon:.3f} | 1e-05 |" in section
    assert "not** covered by this bound" in section  # metrics were released in this run


def test_status_shows_epsilon_per_hospital(
    dp_run: tuple[Simulation, list[dict[str, Any]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    simulation, history = dp_run
    monkeypatch.setenv("MEDHEAVEN_STORE", simulation.store_url())
    runner = CliRunner()
    as_json = runner.invoke(coordinator_app, ["status", "--run-id", RUN, "--json"])
    assert as_json.exit_code == 0, as_json.output
    privacy = json.loads(as_json.stdout)["privacy"]
    signed = _signed(history, ROUNDS)
    assert {h: s["epsilon"] for h, s in privacy["per_hospital"].items()} == pytest.approx(signed)
    assert privacy["delta"] == 1e-5 and privacy["unit"] == "patient"
    text = runner.invoke(coordinator_app, ["status", "--run-id", RUN])
    assert "target ε=3, δ=1e-05" in text.stdout
    for hospital, epsilon in signed.items():
        assert f"{hospital}: ε={epsilon:.3f}, δ=1e-05" in text.stdout


def test_exported_model_metadata_carries_epsilon_of_its_round(
    dp_run: tuple[Simulation, list[dict[str, Any]]], tmp_path: Path
) -> None:
    simulation, history = dp_run
    base = ["export", RUN, "--store", simulation.store_url(), "--secret-context", str(simulation.keys.secret)]
    for round_number in (1, ROUNDS):
        model = tmp_path / f"round{round_number}.keras"
        result = CliRunner().invoke(medheaven_app, [*base, "--round", str(round_number), "--out", str(model)])
        assert result.exit_code == 0, result.output
        assert "privacy        patient-level DP-SGD, δ=1e-05" in result.stdout
        privacy = Preprocessing.load(preprocessing_path(model)).privacy
        assert privacy is not None and privacy.model_round == round_number
        # the model of round 1 owes its hospitals only round 1's spend, less than after round 2
        assert {h: s.epsilon for h, s in privacy.per_hospital.items()} == pytest.approx(_signed(history, round_number))
    assert max(_signed(history, 1).values()) < max(_signed(history, ROUNDS).values()) <= 3.0 * 1.001
    scored = CliRunner().invoke(
        medheaven_app, ["predict", "--model", str(tmp_path / "round1.keras"), "--data", str(simulation.test_file)]
    )
    assert scored.exit_code == 0, scored.output
    first = _signed(history, 1)
    assert "privacy: patient-level DP-SGD" in scored.stderr
    assert all(f"{h} ε={e:.3f}" in scored.stderr for h, e in first.items())
    assert simulation.store().exists(RunPaths(RUN).config)


def test_no_dp_metrics_withholds_every_validation_metric_of_the_hospitals(tmp_path: Path) -> None:
    simulation = small_simulation(tmp_path, hospitals=2, rows=800)
    quiet = DpConfig(target_epsilon=3.0, delta=1e-5, clip=1.0, release_metrics=False)
    training = LocalTraining(batch_size=32, learning_rate=1e-3, dp=quiet, planned_rounds=1)
    assert not training.releases_metrics and LocalTraining().releases_metrics
    config = simulation_config(simulation, run="quiet", rounds=1, round_timeout=120, training=training)
    result, _ = run_in_threads(simulation, config, model=default_model(simulation, hidden=(8,)))
    store, paths = simulation.store(), RunPaths("quiet")
    manifest = store.get_json(paths.manifest("update", 1))
    assert sorted(e["hospital"] for e in manifest["folded"]) == list(simulation.hospitals)
    assert all(not e.get("metrics") for e in manifest["folded"])  # the receipts carried none
    assert all(not m for m in result.history[0]["metrics"].values())
    final = store.get_json(paths.final_validation)  # nor does validating the final model release any
    assert set(final["metrics"]) == set(simulation.hospitals) and not any(final["metrics"].values())
    # with no validation signal the selected model is the last one; the held-out test file is not hospital data
    assert result.test is not None and result.test["round"] == 1

"""`medheaven export` and `medheaven predict`: the decrypted global model, saved and reloaded in a fresh process,
scores exactly like the federation's own key holder did."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from federation_support import small_simulation
from typer.testing import CliRunner

from coordinator.simulation import Simulation, default_model, hospital_nodes, run_in_threads, simulation_config
from medheaven.cli.root import app as medheaven_app
from medheaven.data import FeatureLayout, encode_features, generate_synthetic, get_schema, load_dataset
from medheaven.evaluation.metrics import binary_metrics
from medheaven.federated.paths import RunPaths
from medheaven.federated.release import released_metrics
from medheaven.serving.predict import read_prediction_input

RUN = "exported"
ROUNDS = 2

# the real `medheaven` console script in a fresh interpreter (no TensorFlow loaded yet)
FRESH_CLI = "import sys; sys.argv[0] = 'medheaven'; from medheaven.cli import main; main()"


def _fresh(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.run(
        [sys.executable, "-c", FRESH_CLI, *args], capture_output=True, text=True, timeout=120, env=env, check=False
    )


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Simulation, Path]:
    simulation = small_simulation(tmp_path_factory.mktemp("export"), rows=2000)
    config = simulation_config(simulation, run=RUN, rounds=ROUNDS, round_timeout=120)
    run_in_threads(simulation, config, model=default_model(simulation))
    model = simulation.root / "out" / "model.keras"
    model.parent.mkdir()
    args = ["export", RUN, "--store", simulation.store_url(), "--secret-context", str(simulation.keys.secret)]
    result = CliRunner().invoke(medheaven_app, [*args, "--out", str(model), "--json"])
    assert result.exit_code == 0, result.output
    return simulation, model


@pytest.fixture(scope="module")
def fresh_scores(exported: tuple[Simulation, Path]) -> pd.DataFrame:
    simulation, model = exported
    out = model.parent / "scores.csv"
    done = _fresh("predict", "--model", str(model), "--data", str(simulation.test_file), "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert "labels present: ROC-AUC" in done.stderr
    return pd.read_csv(out, dtype={"group": str})


def test_export_writes_owner_only_model_and_preprocessing(exported: tuple[Simulation, Path]) -> None:
    simulation, model = exported
    side = model.with_suffix(".preprocessing.json")
    for path in (model, side):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, f"{path} must be readable by its owner only"
    pre = json.loads(side.read_text())
    selected = simulation.store().get_json(RunPaths(RUN).test_scores())["round"]
    manifest = simulation.store().get_json(RunPaths(RUN).manifest("update", selected))
    assert (pre["run"], pre["round"], pre["global_sha256"]) == (RUN, selected, manifest["result_sha256"])
    assert pre["layout"] == simulation.layout
    assert len(pre["standardiser"]["mean"]) == FeatureLayout.from_dict(simulation.layout).n_features
    assert pre["schema"]["name"] == "prepared" and pre["source_schema"]["target"] == "readmitted"
    assert "readmitted within 30 days" in pre["target"]
    assert not list(model.parent.glob(".export-*")), "the staging folder was left behind"


def test_export_refuses_to_follow_planted_symlinks_at_output_or_temporary_paths(
    exported: tuple[Simulation, Path], tmp_path: Path
) -> None:
    simulation, _ = exported
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    model = out_dir / "planted.keras"
    side = model.with_suffix(".preprocessing.json")
    planted = {
        model: tmp_path / "victim-model",
        side: tmp_path / "victim-side",
        out_dir / f".{model.name}.tmp": tmp_path / "victim-model-tmp",
        out_dir / f".{side.name}.tmp": tmp_path / "victim-side-tmp",
    }
    for link, victim in planted.items():
        victim.write_text("untouched")
        link.symlink_to(victim)
    args = ["export", RUN, "--store", simulation.store_url(), "--secret-context", str(simulation.keys.secret)]
    result = CliRunner().invoke(medheaven_app, [*args, "--out", str(model), "--json"])
    assert result.exit_code == 0, result.output
    for victim in planted.values():
        assert victim.read_text() == "untouched", f"export wrote through a symlink into {victim}"
    for path in (model, side):
        assert not path.is_symlink(), f"{path} is still the planted link"
        assert stat.S_IMODE(path.lstat().st_mode) == 0o600


def test_exported_model_in_fresh_process_scores_like_the_decrypted_global_model(
    exported: tuple[Simulation, Path], fresh_scores: pd.DataFrame
) -> None:
    simulation, model = exported
    frame = load_dataset(simulation.test_file, get_schema("prepared"))
    layout = FeatureLayout.from_dict(simulation.layout)
    node = hospital_nodes(simulation)[simulation.hospitals[-1]]
    exported_round = json.loads(model.with_suffix(".preprocessing.json").read_text())["round"]
    expected = node.score(RUN, exported_round, encode_features(frame, layout))
    assert fresh_scores["row"].tolist() == list(range(len(frame)))
    assert fresh_scores["group"].tolist() == frame["group"].tolist()
    assert np.max(np.abs(fresh_scores["risk"].to_numpy() - expected)) <= 1e-6


def test_predict_on_test_file_reproduces_reported_test_roc_auc(
    exported: tuple[Simulation, Path], fresh_scores: pd.DataFrame
) -> None:
    simulation, _ = exported
    reported = simulation.store().get_json(RunPaths(RUN).test_scores())
    labels = load_dataset(simulation.test_file, get_schema("prepared"))["label"].to_numpy()
    # the hospital released its test metrics rounded (medheaven.federated.release): ours, rounded alike, must match
    ours = released_metrics(binary_metrics(labels, fresh_scores["risk"].to_numpy()))
    assert ours["roc_auc"] == reported["metrics"]["roc_auc"]
    assert ours["pr_auc"] == reported["metrics"]["pr_auc"]


def test_predict_file_missing_columns_fails_naming_them(exported: tuple[Simulation, Path], tmp_path: Path) -> None:
    simulation, model = exported
    data = tmp_path / "incomplete.csv"
    pd.read_csv(simulation.test_file, dtype=str).drop(columns=["age", "A1Cresult"]).to_csv(data, index=False)
    result = CliRunner().invoke(medheaven_app, ["predict", "--model", str(model), "--data", str(data)])
    assert result.exit_code == 2, result.output
    assert "error:" in result.output and "age, A1Cresult" in result.output
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_predict_input_for_raw_file_with_or_without_label_matches_training_pipeline(
    exported: tuple[Simulation, Path], tmp_path: Path
) -> None:
    simulation, _ = exported
    layout = FeatureLayout.from_dict(simulation.layout)
    schema = get_schema("diabetes130")
    raw = generate_synthetic(600, seed=5)
    labelled, unlabelled = tmp_path / "labelled.csv", tmp_path / "new.csv"
    raw.to_csv(labelled, index=False)
    raw.drop(columns=["readmitted"]).to_csv(unlabelled, index=False)
    reference = load_dataset(labelled, schema)
    with_label = read_prediction_input(labelled, schema, layout)
    without = read_prediction_input(unlabelled, schema, layout)
    expected = encode_features(reference, layout)
    for got in (with_label, without):
        np.testing.assert_array_equal(got.features, expected)
        assert got.rows.tolist() == reference.index.tolist()
        assert got.groups is not None and got.groups.tolist() == reference["group"].tolist()
        assert got.excluded == len(raw) - len(reference)
    assert with_label.labels is not None and with_label.labels.tolist() == reference["label"].tolist()
    assert without.labels is None


def test_export_round_option_picks_that_committed_model(exported: tuple[Simulation, Path], tmp_path: Path) -> None:
    simulation, _ = exported
    out = tmp_path / "round1.keras"
    args = ["export", RUN, "--store", simulation.store_url(), "--secret-context", str(simulation.keys.secret)]
    result = CliRunner().invoke(medheaven_app, [*args, "--out", str(out), "--round", "1", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    manifest = simulation.store().get_json(RunPaths(RUN).manifest("update", 1))
    assert (summary["round"], summary["global_sha256"]) == (1, manifest["result_sha256"])


def test_export_refuses_public_context_and_uncommitted_round(exported: tuple[Simulation, Path], tmp_path: Path) -> None:
    simulation, _ = exported
    public = simulation.keys.secret.with_name("context.public")
    base = ["export", RUN, "--store", simulation.store_url(), "--out", str(tmp_path / "m.keras")]
    cases = (
        ([*base, "--secret-context", str(public)], "not a secret context"),
        ([*base, "--secret-context", str(simulation.keys.secret), "--round", "9"], "no committed round 9"),
    )
    for args, expected in cases:
        result = CliRunner().invoke(medheaven_app, args)
        assert result.exit_code == 2, result.output
        assert "error:" in result.output and expected in result.output
        assert "Traceback" not in result.output
    assert not (tmp_path / "m.keras").exists()


def test_predict_refuses_a_model_that_is_not_its_preprocessing_files(
    exported: tuple[Simulation, Path], tmp_path: Path
) -> None:
    simulation, model = exported
    other = tmp_path / "model.keras"
    other.write_bytes(model.read_bytes() + b"\0")
    other.with_suffix(".preprocessing.json").write_text(model.with_suffix(".preprocessing.json").read_text())
    result = CliRunner().invoke(medheaven_app, ["predict", "--model", str(other), "--data", str(simulation.test_file)])
    assert result.exit_code == 2, result.output
    assert "is not the model its preprocessing file was exported with" in result.output

"""`medheaven report`: records read from a real (small) encrypted run, readable PNGs, a report that embeds them."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from federation_support import small_simulation
from typer.testing import CliRunner

from coordinator.simulation import Simulation, default_model, run_in_threads, simulation_config
from medheaven.cli.root import app as medheaven_app
from medheaven.errors import DataFileError
from medheaven.federated.paths import RunPaths
from medheaven.federated.wire import Manifest
from medheaven.report import load_baseline, load_run_records
from medheaven.report.document import to_markdown
from medheaven.report.records import OTHER_PHASE, round_row
from medheaven.report.render import PLOT_FILES
from medheaven.report.threat_model import threat_model_outline

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
RUN = "report"


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Simulation:
    simulation = small_simulation(tmp_path_factory.mktemp("report"), rows=2000)
    config = simulation_config(simulation, run=RUN, rounds=2, round_timeout=120)
    run_in_threads(simulation, config, model=default_model(simulation))
    return simulation


@pytest.fixture
def baseline_file(tmp_path: Path) -> Path:
    """The shape `medheaven baseline --json` prints (values made up: the report only draws them)."""
    scores = {"roc_auc": 0.61, "pr_auc": 0.16, "brier": 0.1, "accuracy": 0.88, "base_rate": 0.11}
    data = {
        "schema": "diabetes130",
        "split": {"seed": 0, "test_fraction": 0.2, "hospitals": 3, "scheme": "iid"},
        "centralised": {**scores, "train_rows": 1000},
        "local": {f"h{i}": {**scores, "roc_auc": 0.55 + 0.01 * i, "train_rows": 300} for i in (1, 2, 3)},
        "local_mean_roc_auc": 0.57,
        "data": "synthetic",
    }
    path = tmp_path / "baseline.json"
    path.write_text(json.dumps(data))
    return path


def _assert_readable_png(path: Path) -> None:
    from matplotlib.image import imread

    assert path.read_bytes()[:8] == PNG_SIGNATURE, f"{path} is not a PNG"
    pixels = imread(path)
    assert pixels.shape[0] > 200 and pixels.shape[1] > 300
    assert float(np.var(pixels)) > 0.0, f"{path} is blank"


def test_report_writes_readable_plots_and_markdown_embedding_them(
    finished: Simulation, baseline_file: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    args = ["report", RUN, "--store", finished.store_url(), "--out", str(out), "--baseline", str(baseline_file)]
    args += ["--secret-context", str(finished.keys.secret), "--json"]
    result = CliRunner().invoke(medheaven_app, args)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert set(summary["plots"]) == set(PLOT_FILES)
    report = (out / "report.md").read_text()
    for name in PLOT_FILES.values():
        _assert_readable_png(out / name)
        assert f"]({name})" in report, f"report.md does not embed {name}"
    test = finished.store().get_json(RunPaths(RUN).test_scores())
    assert f"{test['metrics']['roc_auc']:.4f}" in report
    assert "centralised baseline" in report and "local-only h2" in report
    assert summary["verification"]["within_bound"] is True
    assert "| within bound | yes |" in report
    assert f"The model scored on the held-out test set is round {test['round']}" in report
    assert "What each party saw" in report and "n_k" in report
    # the threat model from its one source (tests/test_report_threat_model.py keeps README.md equal to it)
    assert to_markdown([threat_model_outline()]) in report and "This run used scheme `bfv-masked`" in report


def test_report_without_secret_context_explains_how_to_verify(finished: Simulation, tmp_path: Path) -> None:
    result = CliRunner().invoke(medheaven_app, ["report", RUN, "--store", finished.store_url(), "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    report = (tmp_path / "report.md").read_text()
    assert "Not computed" in report
    assert f"medheaven verify --run {RUN} --round 2 --secret-context" in report
    assert "Pass `--baseline baseline.json`" in report


def test_report_html_embeds_every_plot(finished: Simulation, tmp_path: Path) -> None:
    args = ["report", RUN, "--store", finished.store_url(), "--out", str(tmp_path), "--format", "html"]
    result = CliRunner().invoke(medheaven_app, args)
    assert result.exit_code == 0, result.output
    page = (tmp_path / "report.html").read_text()
    assert page.startswith("<!DOCTYPE html>")
    assert set(re.findall(r'<img src="([^"]+)"', page)) == set(PLOT_FILES.values())


def test_report_records_agree_with_history_and_phases_add_up(finished: Simulation) -> None:
    store = finished.store()
    records = load_run_records(store, RUN)
    history = store.get_json(RunPaths(RUN).history)
    assert [row.round for row in records.rounds] == [r["round"] for r in history] == [1, 2]
    for row, record in zip(records.rounds, history, strict=True):
        assert row.evaluated_round == row.round - 1
        assert row.weighted["roc_auc"] == pytest.approx(record["weighted"]["roc_auc"], abs=1e-12)
        assert set(row.metrics) == set(record["participants"])
        assert row.phase_source.startswith("critical path")
        assert row.phases[OTHER_PHASE] >= 0.0
        assert sum(row.phases.values()) == pytest.approx(row.seconds, rel=1e-9)
        assert row.bytes_up > row.global_bytes > 0
    assert records.last_round == 2 and records.test is not None
    assert records.test_round in (1, 2)
    curve = records.validation
    assert [point.model_round for point in curve] == [0, 1, 2]
    assert curve[-1].final and set(curve[-1].metrics) == set(finished.hospitals)


def _manifest(**overrides: Any) -> Manifest:
    entry = {
        "hospital": "a",
        "size": 100,
        "metrics": {"roc_auc": 0.6, "loss": 0.4, "examples": 10.0},
        "timings": {"train": 3.0, "evaluate": 1.0, "fold": 0.5},
        "folded_at": 104.5,
    }
    data: dict[str, Any] = {
        "run": "x",
        "round": 3,
        "attempt": 2,
        "kind": "update",
        "base_sha256": "",
        "result_key": "x/rounds/3/global.ckks",
        "result_sha256": "0" * 64,
        "result_size": 80,
        "selected": ["a", "b", "c"],
        "folded": [entry],
        "rejected": [{"hospital": "b", "reason": "signature", "message": "bad"}],
        "quorum": 1,
        "opened_at": 100.0,
        "deadline": 110.0,
        "finalised_at": 110.0,
        **overrides,
    }
    return Manifest.from_dict(data)


def test_round_row_marks_rejected_late_and_unselected_hospitals() -> None:
    row = round_row(_manifest(), {}, hospitals=("a", "b", "c", "d"))
    assert row.states == {"a": "folded", "b": "rejected", "c": "late", "d": "not selected"}
    assert row.rejected == {"b": "signature"}
    assert row.weighted["roc_auc"] == pytest.approx(0.6)
    assert row.phases["train"] == 3.0 and row.phases[OTHER_PHASE] == pytest.approx(10.0 - 4.5)
    failed = round_row(_manifest(), {"statuses": {"c": "failed"}}, hospitals=("a", "b", "c"))
    assert failed.states["c"] == "failed"
    assert math.isnan(failed.weighted["pr_auc"])


def test_report_refuses_public_context_and_unknown_run(finished: Simulation, tmp_path: Path) -> None:
    public = finished.keys.secret.with_name("context.public")
    args = ["report", RUN, "--store", finished.store_url(), "--out", str(tmp_path), "--secret-context", str(public)]
    for arguments, expected in (
        (args, "not a secret context"),
        (["report", "nope", "--store", finished.store_url()], "'nope' does not exist"),
    ):
        result = CliRunner().invoke(medheaven_app, arguments)
        assert result.exit_code == 2, result.output
        assert "error:" in result.output and expected in result.output
        assert "Traceback" not in result.output


def test_load_baseline_rejects_a_file_that_is_not_baseline_output(tmp_path: Path) -> None:
    path = tmp_path / "b.json"
    path.write_text(json.dumps({"roc_auc": 0.6}))
    with pytest.raises(DataFileError, match="medheaven baseline --json"):
        load_baseline(path)

"""A hospital's failure reaches the operator: the error, the live table's data, `status`, --json and the store's
record of failed attempts; a hospital worker with an unusable data file does not start; data above the default
feature bound runs once the bound is planned or set."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest
from federation_support import small_simulation
from generic_support import SCHEMA_YAML, write_tumour_data
from typer.testing import CliRunner

from coordinator.cli import app as coordinator_app
from coordinator.demo import run_demo
from coordinator.options import LocalRecipe
from medheaven.errors import ConfigurationError, QuorumNotReachedError
from medheaven.federated.paths import RunPaths
from medheaven.store.local import LocalStore
from workers.cluster import ProcessCluster


def _demo(out: Path, data: Path, schema: Path) -> dict[str, object]:
    return run_demo(
        out=out,
        data=data,
        schema="generic",
        schema_file=schema,
        hospitals=3,
        rounds=1,
        scheme="iid",
        recipe=LocalRecipe(local_epochs=1, batch_size=64, learning_rate=1e-3),
        seed=0,
        synthetic_rows=0,
        plaintext=False,
        quiet=True,
    )


def test_demo_feature_bound_planned_from_data_above_the_old_default(tmp_path: Path) -> None:
    data, schema = write_tumour_data(tmp_path / "in")
    report = _demo(tmp_path / "demo", data, schema)
    assert len(report["rounds"]) == 1 and report["test"] is not None  # type: ignore[arg-type]
    description = LocalStore(tmp_path / "demo" / "store").get_json(RunPaths(str(report["run"])).model)
    largest = float(pd.read_csv(data)["area"].max())
    assert largest > 1000.0  # the old hard-coded bound would have failed every hospital
    bound = description["max_abs_feature"]
    assert 2 * largest <= bound <= 5 * largest and f"{bound:.0e}"[0] in "125"  # planned: 1, 2 or 5 x 10^k


def test_demo_failure_names_each_hospitals_reason_and_no_resume(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data, schema = write_tumour_data(tmp_path / "in")
    schema.write_text(SCHEMA_YAML + "max_abs_feature: 1000\n", encoding="utf-8")  # too small for the areas
    out = tmp_path / "demo"
    with pytest.raises(QuorumNotReachedError) as info:
        _demo(out, data, schema)
    message = str(info.value)
    for hospital in ("h1", "h2", "h3"):
        assert f"{hospital}: PackingError: hospital '{hospital}'" in message
    assert re.search(r"--max-abs-feature [125]000", message) and "MEDHEAVEN_MAX_ABS_FEATURE" in message
    assert "coordinator resume" not in message and "--run-id demo" not in message and "medheaven demo" in message
    assert "Traceback" not in message

    store = LocalStore(out / "store")
    (run,) = [p.name for p in (out / "store").iterdir() if (p / "model.json").exists()]  # each demo has its own id
    failed = store.get_json(RunPaths(run).failed_attempts)
    assert [(r["kind"], r["status"]) for r in failed] == [("stats", "failed")]
    assert set(failed[0]["reasons"]) == {"h1", "h2", "h3"}
    assert all("exceeds the run's max_abs_feature=1000" in why for why in failed[0]["reasons"].values())

    monkeypatch.setenv("MEDHEAVEN_STORE", f"file://{(out / 'store').resolve()}")
    runner = CliRunner()
    as_json = runner.invoke(coordinator_app, ["status", "--run-id", run, "--json"])
    assert as_json.exit_code == 0, as_json.output
    assert json.loads(as_json.stdout)["failed_attempts"][0]["reasons"] == failed[0]["reasons"]
    text = runner.invoke(coordinator_app, ["status", "--run-id", run])
    assert "statistics attempt 1 failed" in text.stdout and "h2: PackingError" in text.stdout


def test_create_run_refuses_a_bound_the_key_set_cannot_hold(tmp_path: Path) -> None:
    from coordinator.run import create_run
    from coordinator.simulation import default_model, simulation_config

    simulation = small_simulation(tmp_path, hospitals=1, rows=300)
    config = simulation_config(simulation, run="big", rounds=1)
    with pytest.raises(ConfigurationError, match="--max-abs-feature 1e\\+06 \\(MEDHEAVEN_MAX_ABS_FEATURE\\)"):
        create_run(simulation.store(), config, model=default_model(simulation), layout=simulation.layout,
                   max_abs_feature=1e6)  # fmt: skip
    assert not simulation.store().exists(RunPaths("big").model)  # nothing written by the refused run


@pytest.mark.slow
def test_hospital_process_refuses_a_data_file_its_schema_rejects(tmp_path: Path, redis_url: str) -> None:
    simulation = small_simulation(tmp_path, hospitals=1, rows=500)
    hospital = simulation.hospitals[0]
    data = simulation.data_files[hospital]
    lines = data.read_text(encoding="utf-8").splitlines()
    header = lines[0].split(",")
    drop = header.index("label")
    data.write_text(
        "\n".join(",".join(c for i, c in enumerate(line.split(",")) if i != drop) for line in lines) + "\n",
        encoding="utf-8",
    )
    with ProcessCluster(base_env={}, log_dir=tmp_path / "logs") as cluster:
        worker = cluster.start_hospital(hospital, simulation.hospital_env(hospital, broker_url=redis_url))
        code = worker.process.wait(timeout=180)
    assert code != 0
    log = worker.log_path.read_text()
    assert f"hospital {hospital!r} refuses to start" in log and "no target column 'label'" in log and str(data) in log

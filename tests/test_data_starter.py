"""`medheaven data schema` writes a starter schema that loads; the docs' schema example, copied verbatim, runs the
demo; the exported preprocessing and `predict` name the target and its positive class."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import typer
import yaml
from generic_support import tumour_frame, write_tumour_data
from typer.testing import CliRunner

from coordinator.demo import run_demo
from coordinator.options import LocalRecipe
from medheaven.cli.data import data_app
from medheaven.cli.results import export_command, predict_command
from medheaven.data import get_schema, load_dataset

DOCS = Path(__file__).resolve().parents[1] / "docs" / "schema.md"


def test_data_schema_command_writes_a_starter_that_loads(tmp_path: Path) -> None:
    data = tmp_path / "riverside.csv"
    frame = tumour_frame(200)
    frame[["diagnosis", "area", "patient_id", "clinic", "admission_date", "radius", "texture"]].to_csv(
        data, index=False, sep=";", decimal=","
    )
    out = tmp_path / "schema.yaml"
    result = CliRunner().invoke(data_app, ["schema", "--from", str(data), "--out", str(out)])
    assert result.exit_code == 0, result.output
    written = yaml.safe_load(out.read_text(encoding="utf-8"))
    assert written["target"] == "diagnosis" and written["positive_values"] == ["Malignant"]
    assert written["negative_values"] == ["Benign"] and written["group_column"] == "patient_id"
    assert written["identifier_columns"] == ["admission_date"] and written["delimiter"] == ";"
    assert written["decimal"] == "," and written["categorical"] == ["clinic"]
    assert sorted(written["numeric"]) == ["area", "radius", "texture"]
    loaded = load_dataset(data, get_schema("generic", schema_file=out))
    assert int(loaded["label"].sum()) == int((frame["diagnosis"].head(200) == "Malignant").sum())

    again = CliRunner().invoke(data_app, ["schema", "--from", str(data), "--out", str(out)])
    assert again.exit_code == 2 and "--force" in again.output  # an edited schema is never overwritten by accident


def _docs_example() -> str:
    text = DOCS.read_text(encoding="utf-8")
    match = re.search(r"<!-- schema-example[^>]*-->\n```yaml\n(.*?)```", text, flags=re.DOTALL)
    assert match is not None, f"{DOCS} lost its marked schema example"
    return match.group(1)


@pytest.mark.slow
def test_docs_schema_example_runs_the_demo_and_export_names_the_target(tmp_path: Path) -> None:
    data, _ = write_tumour_data(tmp_path / "in", rows=900)
    schema = tmp_path / "in" / "tumours.yaml"
    schema.write_text(_docs_example(), encoding="utf-8")  # verbatim
    out = tmp_path / "demo"
    report = run_demo(out=out, data=data, schema="generic", schema_file=schema, hospitals=3, rounds=2,
                      scheme="iid", recipe=LocalRecipe(local_epochs=1, batch_size=32, learning_rate=1e-2), seed=0, synthetic_rows=0,
                      plaintext=False, quiet=True)  # fmt: skip
    assert [r["round"] for r in report["rounds"]] == [1, 2]
    assert report["test"]["metrics"]["roc_auc"] > 0.7  # radius drives the diagnosis: a model that learnt it

    cli = typer.Typer(pretty_exceptions_enable=False)
    cli.command("export")(export_command)
    cli.command("predict")(predict_command)
    model = tmp_path / "model.keras"
    store = f"file://{(out / 'store').resolve()}"
    args = ["export", str(report["run"]), "--store", store, "--secret-context", str(out / "keys" / "context.secret")]
    exported = CliRunner().invoke(cli, [*args, "--out", str(model)])
    assert exported.exit_code == 0, exported.output
    preprocessing = yaml.safe_load(model.with_suffix(".preprocessing.json").read_text(encoding="utf-8"))
    assert preprocessing["target_column"] == "diagnosis" and preprocessing["positive_values"] == ["Malignant"]
    scored = CliRunner().invoke(cli, ["predict", "--model", str(model), "--data", str(out / "data" / "test.csv")])
    assert scored.exit_code == 0, scored.output
    assert "risk = probability that 'diagnosis' is 'Malignant'" in scored.output

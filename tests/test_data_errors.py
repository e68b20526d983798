"""Bad input fails with the specific error, naming the file and the column; the CLI exits 2 without a traceback."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pandas as pd
import pytest
import typer
from typer.testing import CliRunner

from medheaven.cli.data import baseline_command, data_app
from medheaven.data import generate_synthetic, get_schema, load_dataset
from medheaven.errors import DataFileError, SchemaError, TargetError


@pytest.fixture(scope="module")
def raw() -> pd.DataFrame:
    return generate_synthetic(400, seed=2)


def _write(frame: pd.DataFrame, path: Path) -> Path:
    frame.to_csv(path, index=False)
    return path


def _cli() -> typer.Typer:
    app = typer.Typer()
    app.add_typer(data_app, name="data")
    app.command("baseline")(baseline_command)
    return app


def test_load_dataset_missing_file_raises_data_file_error(tmp_path: Path) -> None:
    path = tmp_path / "nowhere.csv"
    with pytest.raises(DataFileError, match=str(path)):
        load_dataset(path, get_schema("diabetes130"))


@pytest.mark.parametrize("content", [b"", b"readmitted,patient_nbr\n"])
def test_load_dataset_empty_file_raises_data_file_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "empty.csv"
    path.write_bytes(content)
    with pytest.raises(DataFileError, match=str(path)):
        load_dataset(path, get_schema("diabetes130"))


def test_load_dataset_empty_gzip_raises_data_file_error(tmp_path: Path) -> None:
    path = tmp_path / "empty.csv.gz"
    with gzip.open(path, "wb"):
        pass
    with pytest.raises(DataFileError, match=str(path)):
        load_dataset(path, get_schema("diabetes130"))


def test_load_dataset_missing_target_raises_target_error(raw: pd.DataFrame, tmp_path: Path) -> None:
    path = _write(raw.drop(columns=["readmitted"]), tmp_path / "no_target.csv")
    with pytest.raises(TargetError) as info:
        load_dataset(path, get_schema("diabetes130"))
    assert str(path) in str(info.value) and "'readmitted'" in str(info.value)


def test_load_dataset_missing_feature_column_raises_schema_error(raw: pd.DataFrame, tmp_path: Path) -> None:
    path = _write(raw.drop(columns=["num_medications"]), tmp_path / "no_feature.csv")
    with pytest.raises(SchemaError) as info:
        load_dataset(path, get_schema("diabetes130"))
    assert str(path) in str(info.value) and "num_medications" in str(info.value)


def test_load_dataset_missing_group_column_raises_schema_error(raw: pd.DataFrame, tmp_path: Path) -> None:
    path = _write(raw.drop(columns=["patient_nbr"]), tmp_path / "no_group.csv")
    with pytest.raises(SchemaError, match="patient_nbr"):
        load_dataset(path, get_schema("diabetes130"))


def test_load_dataset_unparseable_numeric_names_column_value_and_row(raw: pd.DataFrame, tmp_path: Path) -> None:
    bad = raw.astype({"num_lab_procedures": object})
    row = int(raw.index[raw["discharge_disposition_id"] == "1"][5])  # a row that cleaning keeps
    bad.loc[row, "num_lab_procedures"] = "forty-two"
    path = _write(bad, tmp_path / "bad_numeric.csv")
    with pytest.raises(DataFileError) as info:
        load_dataset(path, get_schema("diabetes130"))
    message = str(info.value)
    assert str(path) in message and "'num_lab_procedures'" in message and "'forty-two'" in message
    assert f"row {row + 1}" in message and f"line {row + 2}" in message


def test_load_dataset_single_class_target_raises_target_error(raw: pd.DataFrame, tmp_path: Path) -> None:
    path = _write(raw.assign(readmitted="NO"), tmp_path / "one_class.csv")
    with pytest.raises(TargetError) as info:
        load_dataset(path, get_schema("diabetes130"))
    assert str(path) in str(info.value) and "'readmitted'" in str(info.value) and "single class" in str(info.value)


def test_load_dataset_empty_target_cell_raises_target_error(raw: pd.DataFrame, tmp_path: Path) -> None:
    path = _write(raw.assign(readmitted=["?", *raw["readmitted"][1:]]), tmp_path / "blank_target.csv")
    with pytest.raises(TargetError, match="readmitted"):
        load_dataset(path, get_schema("diabetes130"))


def test_get_schema_generic_bad_schema_file_raises_schema_error(tmp_path: Path) -> None:
    path = tmp_path / "schema.json"
    path.write_text("{not json", encoding="utf-8")
    with pytest.raises(SchemaError, match=str(path)):
        get_schema("generic", schema_file=path)
    path.write_text(json.dumps({"positive_values": ["1"]}), encoding="utf-8")
    with pytest.raises(SchemaError, match="target"):
        get_schema("generic", schema_file=path)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["data", "split", "--data", "{missing}", "--out", "{out}"], "does not exist"),
        (["data", "split", "--data", "{no_target}", "--out", "{out}"], "readmitted"),
        (["data", "split", "--schema", "mimic4", "--out", "{out}"], "unknown schema"),
        (["data", "split", "--scheme", "random", "--out", "{out}"], "scheme"),
        (["data", "split", "--schema", "johns", "--out", "{out}"], "--data"),
        (["baseline", "--data", "{empty}"], "empty"),
    ],
)
def test_cli_bad_input_exits_2_without_traceback(
    raw: pd.DataFrame, tmp_path: Path, args: list[str], expected: str
) -> None:
    files = {
        "missing": str(tmp_path / "missing.csv"),
        "no_target": str(_write(raw.drop(columns=["readmitted"]), tmp_path / "no_target.csv")),
        "empty": str(_write(pd.DataFrame(), tmp_path / "empty.csv")),
        "out": str(tmp_path / "out"),
    }
    result = CliRunner().invoke(_cli(), [a.format(**files) for a in args])
    assert result.exit_code == 2, result.output
    assert "error:" in result.output and expected in result.output
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_cli_split_writes_files_and_prints_json(tmp_path: Path) -> None:
    out = tmp_path / "split"
    args = ["data", "split", "--hospitals", "3", "--scheme", "dirichlet:0.5", "--seed", "1", "--out", str(out)]
    result = CliRunner().invoke(_cli(), [*args, "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert set(summary["partitions"]) == {"h1", "h2", "h3", "test"}
    assert (out / "h3.csv").is_file() and (out / "layout.json").is_file()
    table = CliRunner().invoke(_cli(), args)
    assert table.exit_code == 0 and "positive rate" in table.output

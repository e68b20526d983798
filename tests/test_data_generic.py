"""Schema files for a user's own CSV: refused keys, declared labels, no imputation, CSV dialects."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from medheaven.data import FeatureLayout, encode_features, get_schema, load_dataset
from medheaven.errors import DataFileError, SchemaError, TargetError

BASE = {"target": "diagnosis", "positive_values": ["Malignant"], "negative_values": ["Benign"]}


def _frame(rows: int = 60, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "patient_id": [f"p{i}" for i in range(rows)],
            "area": rng.uniform(100, 4500, rows).round(1).astype(str),
            "clinic": rng.choice(["north", "south", ""], rows),
            "diagnosis": rng.choice(["Malignant", "Benign"], rows),
        }
    )


def _schema(tmp_path: Path, **overrides: object) -> Path:
    path = tmp_path / "schema.json"
    path.write_text(json.dumps({**BASE, "group_column": "patient_id", **overrides}), encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("key", "nearest"),
    [("categoricals", "categorical"), ("identifier_column", "identifier_columns"), ("drop_column", "drop_columns")],
)
def test_schema_unknown_key_names_nearest_valid_key(tmp_path: Path, key: str, nearest: str) -> None:
    path = _schema(tmp_path, **{key: ["clinic"]})
    with pytest.raises(SchemaError) as info:
        get_schema("generic", schema_file=path)
    message = str(info.value)
    assert f"unknown key `{key}`" in message and f"did you mean `{nearest}`?" in message and str(path) in message


def test_schema_without_negative_declaration_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "schema.yaml"
    path.write_text("target: diagnosis\npositive_values: [Malignant]\n", encoding="utf-8")
    with pytest.raises(SchemaError, match=r"negative_values.*other_values_negative: true"):
        get_schema("generic", schema_file=path)


def test_load_dataset_undeclared_target_values_name_file_values_and_counts(tmp_path: Path) -> None:
    frame = _frame()
    frame.loc[[3, 7], "diagnosis"] = "malignant"
    frame.loc[11, "diagnosis"] = "unknown"
    data = tmp_path / "riverside.csv"
    frame.to_csv(data, index=False)
    with pytest.raises(TargetError) as info:
        load_dataset(data, get_schema("generic", schema_file=_schema(tmp_path)))
    message = str(info.value)
    assert str(data) in message and "'malignant' (2 rows)" in message and "'unknown' (1 row)" in message
    assert "negative_values" in message


def test_load_dataset_other_values_negative_is_explicit_opt_in(tmp_path: Path) -> None:
    frame = _frame()
    frame.loc[11, "diagnosis"] = "unknown"
    data = tmp_path / "h.csv"
    frame.to_csv(data, index=False)
    path = tmp_path / "schema.yaml"
    path.write_text(
        "target: diagnosis\npositive_values: [Malignant]\nother_values_negative: true\ngroup_column: patient_id\n",
        encoding="utf-8",
    )
    loaded = load_dataset(data, get_schema("generic", schema_file=path))
    assert loaded.loc[11, "label"] == 0
    assert int(loaded["label"].sum()) == int((frame["diagnosis"] == "Malignant").sum())


def test_load_dataset_declared_numeric_with_text_names_values_and_fix(tmp_path: Path) -> None:
    frame = _frame()
    frame.loc[[2, 5], "area"] = "n/a"
    frame.loc[8, "area"] = "12,5"
    frame.loc[9, "area"] = "<50"
    data = tmp_path / "h2.csv"
    frame.to_csv(data, index=False)
    with pytest.raises(DataFileError) as info:
        load_dataset(data, get_schema("generic", schema_file=_schema(tmp_path, numeric=["area"])))
    message = str(info.value)
    assert str(data) in message and "'area'" in message
    assert "'n/a' (2 rows)" in message and "'12,5' (1 row)" in message and "'<50' (1 row)" in message
    assert "decimal: ','" in message and "categorical" in message and "never" in message


def test_load_dataset_inferred_mostly_numeric_column_with_text_is_an_error(tmp_path: Path) -> None:
    frame = _frame()
    frame.loc[[4], "area"] = "n/a"
    data = tmp_path / "h3.csv"
    frame.to_csv(data, index=False)
    with pytest.raises(DataFileError) as info:
        load_dataset(data, get_schema("generic", schema_file=_schema(tmp_path)))
    message = str(info.value)
    assert str(data) in message and "'area'" in message and "'n/a' (1 row)" in message and "numeric" in message


def test_encode_features_layout_numeric_column_read_as_text_is_not_imputed(tmp_path: Path) -> None:
    frame = _frame()
    frame["dose"] = np.random.default_rng(1).choice(["1", "2", "3", "n/a"], len(frame))  # few levels: categorical
    data = tmp_path / "h4.csv"
    frame.to_csv(data, index=False)
    loaded = load_dataset(data, get_schema("generic", schema_file=_schema(tmp_path)))
    assert loaded["dose"].dtype == object  # this hospital reads it as a code ...
    layout = FeatureLayout(numeric=("area", "dose"), categorical=(("clinic", ("north", "south", "other")),))
    with pytest.raises(DataFileError) as info:  # ... the run's layout says numeric: refused, not made the mean
        encode_features(loaded, layout)
    message = str(info.value)
    assert str(data) in message and "'dose'" in message and "'n/a'" in message and "layout" in message


def test_load_dataset_sniffs_semicolons_and_decimal_commas(tmp_path: Path) -> None:
    frame = _frame()
    data = tmp_path / "eu.csv"
    text = frame.assign(area=frame["area"].str.replace(".", ",", regex=False)).to_csv(index=False, sep=";")
    data.write_text(text, encoding="utf-8")
    loaded = load_dataset(data, get_schema("generic", schema_file=_schema(tmp_path, numeric=["area"])))
    assert np.allclose(loaded["area"].to_numpy(), frame["area"].astype(float).to_numpy())


def test_load_dataset_missing_target_mentions_the_delimiter(tmp_path: Path) -> None:
    data = tmp_path / "eu.csv"
    data.write_text(_frame().to_csv(index=False, sep=";"), encoding="utf-8")
    with pytest.raises(TargetError) as info:
        load_dataset(data, get_schema("generic", schema_file=_schema(tmp_path, delimiter=",")))
    message = str(info.value)
    assert str(data) in message and "joined by ';'" in message and "delimiter: ';'" in message


def test_schema_delimiter_and_decimal_are_checked(tmp_path: Path) -> None:
    with pytest.raises(SchemaError, match="delimiter"):
        get_schema("generic", schema_file=_schema(tmp_path, delimiter=":"))
    with pytest.raises(SchemaError, match="max_abs_feature"):
        get_schema("generic", schema_file=_schema(tmp_path, max_abs_feature=-1))

"""Schemas and cleaning: the right columns come out, and no personal identifier ever becomes a feature."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from medheaven.data import (
    GROUP,
    LABEL,
    SCHEMA_NAMES,
    Schema,
    fit_layout,
    generate_synthetic,
    get_schema,
    load_dataset,
)
from medheaven.data.diabetes130 import icd9_group, prior_encounters
from medheaven.data.schemas import looks_like_identifier
from medheaven.errors import SchemaError

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
DIABETES_FILE = SHARED_DATA / "diabetes-130-us" / "diabetic_data.csv.gz"
JOHNS_FILE = SHARED_DATA / "johns-hospital" / "johns_hospital_data.csv"

# the test's own list, independent of medheaven.data.johns on purpose: who a row is about, who treated them, when
JOHNS_IDENTIFIERS = {
    "hospital_name",
    "hospital_id",
    "Admission_date",
    *(f"patient_{part}" for part in ("id", "first_initial", "last_name", "checkin_date", "checkout_date")),
    *(f"doctor_{part}" for part in ("id", "name")),
}


def _require(path: Path) -> Path:
    if not path.is_file():
        pytest.skip(f"{path} is absent: the shared data sets live in ../shared/data next to the repository")
    return path


def _feature_columns(frame: pd.DataFrame) -> set[str]:
    return set(frame.columns) - {GROUP, LABEL}


def _assert_no_identifier_features(frame: pd.DataFrame, identifiers: set[str]) -> None:
    features = _feature_columns(frame)
    assert not features & identifiers
    layout = fit_layout(frame, get_schema("prepared"), min_level_count=1)
    for name in layout.feature_names:
        assert name.split("=")[0] not in identifiers


@pytest.fixture(scope="module")
def synthetic_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("synthetic") / "diabetic_synthetic.csv.gz"
    generate_synthetic(3000, seed=5).to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def real_diabetes() -> pd.DataFrame:
    return load_dataset(_require(DIABETES_FILE), get_schema("diabetes130"))


@pytest.mark.parametrize("name", ["diabetes130", "johns"])
def test_schema_round_trips_via_dict(name: str) -> None:
    schema = get_schema(name)
    assert Schema.from_dict(json.loads(json.dumps(schema.to_dict()))) == schema


def test_get_schema_unknown_name_lists_valid_names() -> None:
    with pytest.raises(SchemaError) as info:
        get_schema("mimic4")
    assert "mimic4" in str(info.value)
    for name in SCHEMA_NAMES:
        assert name in str(info.value)


def test_get_schema_diabetes_targets() -> None:
    assert get_schema("diabetes130").positive_values == ("<30",)
    assert set(get_schema("diabetes130", target="any").positive_values) == {"<30", ">30"}
    with pytest.raises(SchemaError, match="target"):
        get_schema("diabetes130", target="90d")


def test_get_schema_generic_needs_schema_file() -> None:
    with pytest.raises(SchemaError, match="schema file"):
        get_schema("generic")


@pytest.mark.parametrize(
    ("column", "expected"),
    [
        ("patient_id", True),
        ("doctor_name", True),
        ("Admission_date", True),
        ("patient_first_initial", True),
        ("lastname", True),
        ("doctorName", True),
        ("SSN", True),
        ("mrn", True),
        ("contact_phone", True),
        ("email", True),
        ("home_address", True),
        ("id", True),
        ("thyroid", False),
        ("fluid_balance", False),
        ("num_medications", False),
        ("paid_amount", False),
    ],
)
def test_looks_like_identifier_flags_names_ids_and_dates(column: str, expected: bool) -> None:
    assert looks_like_identifier(column) is expected


@pytest.mark.parametrize(
    ("code", "group"),
    [
        ("428", "circulatory"),
        ("785", "circulatory"),
        ("486", "respiratory"),
        ("786", "respiratory"),
        ("250.83", "diabetes"),
        ("250", "diabetes"),
        ("996", "injury"),
        ("715", "musculoskeletal"),
        ("599", "genitourinary"),
        ("788", "genitourinary"),
        ("174", "neoplasms"),
        ("577", "digestive"),
        ("V57", "other"),
        ("E909", "other"),
        ("276", "other"),
        (None, "missing"),
        ("?", "missing"),
    ],
)
def test_icd9_group_maps_codes_to_chapters(code: str | None, group: str) -> None:
    assert icd9_group(code) == group


def test_load_dataset_diabetes_has_only_schema_columns(synthetic_csv: Path) -> None:
    schema = get_schema("diabetes130")
    frame = load_dataset(synthetic_csv, schema)
    assert _feature_columns(frame) == set(schema.numeric) | set(schema.categorical)
    assert not _feature_columns(frame) & {"encounter_id", "patient_nbr", "weight", "payer_code", "examide"}
    _assert_no_identifier_features(frame, {"encounter_id", "patient_nbr"})
    for column in schema.numeric:
        assert frame[column].dtype == np.float64
    for column in schema.categorical:
        assert frame[column].dtype == object
    assert frame[LABEL].isin([0, 1]).all()
    assert frame[GROUP].dtype == object


def test_load_dataset_diabetes_cleaning_rules(synthetic_csv: Path) -> None:
    raw = pd.read_csv(synthetic_csv, dtype=str, keep_default_na=False)
    frame = load_dataset(synthetic_csv, get_schema("diabetes130"))
    excluded = raw["discharge_disposition_id"].isin(["11", "13", "14", "19", "20", "21"])
    assert len(frame) == int((~excluded).sum())
    assert not frame["discharge_disposition_id"].isin(["11", "13", "14", "19", "20", "21"]).any()
    assert set(frame["age"].unique()) <= {5.0 + 10 * k for k in range(10)}
    assert set(frame["diag_1"].unique()) <= {*(icd9_group(c) for c in raw["diag_1"]), "missing"}
    assert (frame["race"] == "missing").sum() == int((raw.loc[~excluded, "race"] == "?").sum())
    assert "None" in set(frame["max_glu_serum"])


def test_prior_encounters_counts_earlier_ids_of_the_same_patient_only() -> None:
    # ids out of file order, and "100" < "99" as text: the count must follow the numeric id, never the row order
    raw = pd.DataFrame(
        {
            "encounter_id": ["300", "100", "99", "500", "200"],
            "patient_nbr": ["a", "a", "b", "a", "b"],
        }
    )
    assert prior_encounters(raw).tolist() == [1.0, 0.0, 0.0, 2.0, 1.0]


def test_prior_encounters_refuses_ids_that_are_not_integers() -> None:
    raw = pd.DataFrame({"encounter_id": ["1", "x7"], "patient_nbr": ["a", "a"]})
    with pytest.raises(SchemaError, match=r"encounter_id.*'x7'"):
        prior_encounters(raw)
    with pytest.raises(SchemaError, match="no 'encounter_id' column"):
        prior_encounters(raw.drop(columns="encounter_id"))


def test_load_dataset_diabetes_prior_encounters_count_removed_visits_too(tmp_path: Path) -> None:
    raw = generate_synthetic(300, seed=3)
    path = tmp_path / "d.csv"
    raw.to_csv(path, index=False)
    frame = load_dataset(path, get_schema("diabetes130"))
    expected = prior_encounters(raw.astype(str)).loc[frame.index]
    # an expired/hospice encounter is removed as a row but still counted as a visit before later ones
    assert frame["prior_encounters"].tolist() == expected.tolist()
    assert "encounter_id" not in frame.columns


def test_load_dataset_real_diabetes_keeps_none_level_and_drops_hospice(real_diabetes: pd.DataFrame) -> None:
    assert len(real_diabetes) == 99343  # 101,766 encounters less 2,423 expired or hospice
    assert real_diabetes[GROUP].nunique() == 69990
    assert real_diabetes["max_glu_serum"].value_counts()["None"] > 90000
    assert set(real_diabetes["A1Cresult"].unique()) == {"None", ">8", "Norm", ">7"}
    assert abs(real_diabetes[LABEL].mean() - 0.114) < 0.002
    assert real_diabetes["prior_encounters"].max() == 39.0  # the most frequent patient's 40th encounter
    assert (real_diabetes["prior_encounters"] == 0).sum() == 69973  # 69,990 patients less 17 whose first was removed
    _assert_no_identifier_features(real_diabetes, {"encounter_id", "patient_nbr"})


def test_load_dataset_real_johns_drops_identifiers() -> None:
    frame = load_dataset(_require(JOHNS_FILE), get_schema("johns"))
    assert len(frame) == 10000
    _assert_no_identifier_features(frame, JOHNS_IDENTIFIERS | {"time_slot"})
    assert frame[GROUP].nunique() == 6022


def test_load_dataset_johns_shaped_file_drops_any_id_column(tmp_path: Path) -> None:
    schema = get_schema("johns")
    rows = 30
    data = {column: [f"v{i % 3}" for i in range(rows)] for column in schema.categorical}
    data.update({column: [str(i) for i in range(rows)] for column in schema.numeric})
    data.update({column: [f"x{i}" for i in range(rows)] for column in JOHNS_IDENTIFIERS | {"time_slot", "ward_id"}})
    data["readmission"] = [str(i % 2) for i in range(rows)]
    path = tmp_path / "johns_like.csv"
    pd.DataFrame(data).to_csv(path, index=False)
    frame = load_dataset(path, schema)
    _assert_no_identifier_features(frame, JOHNS_IDENTIFIERS | {"time_slot", "ward_id"})
    assert _feature_columns(frame) == set(schema.categorical) | set(schema.numeric)


def _generic_csv(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    rows = 60
    frame = pd.DataFrame(
        {
            "mrn": [f"M{i // 2}" for i in range(rows)],
            "patient_name": [f"Name{i}" for i in range(rows)],
            "visit_date": ["2024-01-01"] * rows,
            "clinic_id": [str(i % 4) for i in range(rows)],
            "ward": rng.choice(["A", "B", "C"], rows),
            "heart_rate": rng.normal(80, 10, rows).round(1),
            "outcome": rng.choice(["yes", "no"], rows),
        }
    )
    path = tmp_path / "generic.csv"
    frame.to_csv(path, index=False)
    return path


def test_load_dataset_generic_drops_identifier_looking_columns(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = _generic_csv(tmp_path)
    schema_file = tmp_path / "schema.yaml"
    schema_file.write_text(
        "target: outcome\npositive_values: [yes]\nnegative_values: [no]\ngroup_column: mrn\n", encoding="utf-8"
    )
    frame = load_dataset(data, get_schema("generic", schema_file=schema_file))
    assert _feature_columns(frame) == {"ward", "heart_rate"}
    assert frame["heart_rate"].dtype == np.float64
    assert frame[GROUP].nunique() == 30  # mrn groups rows but is never a feature
    stderr = capsys.readouterr().err
    assert "patient_name" in stderr and "visit_date" in stderr and "clinic_id" in stderr
    layout = fit_layout(frame, get_schema("generic", schema_file=schema_file), min_level_count=1)
    assert not any(
        name.split("=")[0] in {"mrn", "patient_name", "visit_date", "clinic_id"} for name in layout.feature_names
    )


def test_get_schema_generic_refuses_identifier_listed_as_feature(tmp_path: Path) -> None:
    schema_file = tmp_path / "schema.json"
    schema_file.write_text(
        json.dumps(
            {
                "target": "outcome",
                "positive_values": ["yes"],
                "other_values_negative": True,
                "categorical": ["ward", "patient_name"],
            }
        ),
        encoding="utf-8",
    )
    with pytest.raises(SchemaError) as info:
        get_schema("generic", schema_file=schema_file)
    assert "patient_name" in str(info.value) and str(schema_file) in str(info.value)

"""The synthetic generator: real column names and vocabularies, reproducible, with a learnable planted signal."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from medheaven.data import (
    GROUP,
    LABEL,
    Standardiser,
    SufficientStats,
    encode_features,
    fit_layout,
    generate_synthetic,
    get_schema,
    load_frame,
    split_dataset,
)

DIABETES_FILE = Path(__file__).resolve().parents[2] / "shared" / "data" / "diabetes-130-us" / "diabetic_data.csv.gz"


@pytest.fixture(scope="module")
def synthetic() -> pd.DataFrame:
    return generate_synthetic(12000, seed=3)


def test_generate_synthetic_is_reproducible_by_seed() -> None:
    pd.testing.assert_frame_equal(generate_synthetic(2000, seed=4), generate_synthetic(2000, seed=4))
    assert not generate_synthetic(2000, seed=4).equals(generate_synthetic(2000, seed=5))


def test_generate_synthetic_has_patients_with_several_encounters(synthetic: pd.DataFrame) -> None:
    per_patient = synthetic["patient_nbr"].value_counts()
    assert len(synthetic) == 12000
    assert per_patient.max() >= 4
    assert 1.2 < per_patient.mean() < 1.7


def test_generate_synthetic_positive_rate_near_eleven_percent(synthetic: pd.DataFrame) -> None:
    rate = (synthetic["readmitted"] == "<30").mean()
    assert 0.09 < rate < 0.13
    assert set(synthetic["readmitted"]) == {"NO", ">30", "<30"}
    assert "?" in set(synthetic["race"]) and "None" in set(synthetic["max_glu_serum"])


def test_generate_synthetic_matches_real_columns_and_vocabularies(synthetic: pd.DataFrame) -> None:
    if not DIABETES_FILE.is_file():
        pytest.skip(f"{DIABETES_FILE} is absent: the shared data sets live in ../shared/data")
    real = pd.read_csv(DIABETES_FILE, dtype=str, keep_default_na=False, nrows=None)
    assert list(synthetic.columns) == list(real.columns)
    categorical = ["race", "gender", "age", "admission_type_id", "discharge_disposition_id", "admission_source_id",
                   "medical_specialty", "payer_code", "max_glu_serum", "A1Cresult", "metformin", "insulin",
                   "change", "diabetesMed", "readmitted"]  # fmt: skip
    for column in categorical:
        extra = set(synthetic[column].astype(str)) - set(real[column])
        assert not extra, f"{column}: values not in the real file: {extra}"


def test_generate_synthetic_has_learnable_signal(synthetic: pd.DataFrame) -> None:
    schema = get_schema("diabetes130")
    frame = load_frame(synthetic, schema, source="synthetic")
    parts, test = split_dataset(frame, hospitals=1, scheme="iid", test_fraction=0.3, seed=0)
    train = parts["h1"]
    assert not set(train[GROUP]) & set(test[GROUP])
    layout = fit_layout(train, schema)
    standardiser = Standardiser.from_stats(SufficientStats.of(encode_features(train, layout)))
    model = LogisticRegression(max_iter=1000).fit(standardiser.apply(encode_features(train, layout)), train[LABEL])
    risk = model.predict_proba(standardiser.apply(encode_features(test, layout)))[:, 1]
    assert roc_auc_score(test[LABEL], risk) > 0.63
    inpatient = layout.feature_names.index("number_inpatient")
    assert model.coef_[0, inpatient] > 0  # the planted direction is recovered
    assert np.isfinite(model.coef_).all()

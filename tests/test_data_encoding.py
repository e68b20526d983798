"""The shared feature layout, encoding, and standardisation from summed sufficient statistics."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from medheaven.data.encoding import FeatureLayout, Standardiser, SufficientStats, encode_features, fit_layout
from medheaven.data.hospital import prepare_hospital_data
from medheaven.data.schemas import GROUP, LABEL, Schema
from medheaven.errors import SchemaError

SCHEMA = Schema(
    name="test",
    target="y",
    positive_values=("1",),
    group_column="pid",
    categorical=("ward", "status"),
    numeric=("age", "stay"),
    identifier_columns=(),
    drop_columns=(),
)


def _frame(wards: list[str], *, rows: int = 40, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "age": rng.normal(60, 10, rows),
            "stay": np.where(rng.random(rows) < 0.1, np.nan, rng.integers(1, 10, rows).astype(float)),
            "ward": rng.choice(np.asarray(wards, dtype=object), rows),
            "status": rng.choice(np.asarray(["a", "b", "missing"], dtype=object), rows),
            GROUP: [f"p{i // 2}" for i in range(rows)],
            LABEL: rng.integers(0, 2, rows),
        }
    )


def test_fit_layout_keeps_frequent_levels_sorted_and_adds_other() -> None:
    frame = pd.DataFrame(
        {"age": [1.0] * 30, "stay": [2.0] * 30, "ward": ["b"] * 12 + ["a"] * 15 + ["rare"] * 3, "status": ["x"] * 30}
    )
    layout = fit_layout(frame, SCHEMA, min_level_count=10)
    assert dict(layout.categorical)["ward"] == ("a", "b", "other")
    assert layout.feature_names[:2] == ("age", "stay")
    assert layout.feature_names[2:5] == ("ward=a", "ward=b", "ward=other")
    assert layout.n_features == len(layout.feature_names) == 7


def test_layout_round_trips_via_json(tmp_path: Path) -> None:
    layout = fit_layout(_frame(["A", "B", "C"]), SCHEMA, min_level_count=1)
    assert FeatureLayout.from_dict(json.loads(json.dumps(layout.to_dict()))) == layout
    path = tmp_path / "layout.json"
    layout.save(path)
    assert FeatureLayout.load(path) == layout


def test_layout_from_malformed_dict_raises_schema_error() -> None:
    with pytest.raises(SchemaError, match="layout"):
        FeatureLayout.from_dict({"numeric": ["a"]})


def test_encode_features_same_columns_for_hospitals_with_different_levels() -> None:
    layout = fit_layout(_frame(["A", "B", "C"], rows=200), SCHEMA, min_level_count=5)
    first = encode_features(_frame(["A", "B"], seed=1), layout)
    second = encode_features(_frame(["C", "UNSEEN"], seed=2), layout)
    assert first.shape[1] == second.shape[1] == layout.n_features
    names = list(layout.feature_names)
    assert second[:, names.index("ward=other")].sum() > 0  # the unseen level lands in "other"
    for x in (first, second):
        one_hot = x[:, len(layout.numeric) :]
        offsets = np.cumsum([0] + [len(levels) for _, levels in layout.categorical])
        for start, stop in itertools.pairwise(offsets):
            assert np.all(one_hot[:, start:stop].sum(axis=1) == 1.0)


def test_encode_features_keeps_numeric_nan_and_float64() -> None:
    frame = _frame(["A"])
    layout = fit_layout(frame, SCHEMA, min_level_count=1)
    x = encode_features(frame, layout)
    assert x.dtype == np.float64
    assert np.array_equal(np.isnan(x[:, 1]), frame["stay"].isna().to_numpy())


def test_encode_features_names_missing_columns() -> None:
    frame = _frame(["A"])
    layout = fit_layout(frame, SCHEMA, min_level_count=1)
    with pytest.raises(SchemaError, match="ward"):
        encode_features(frame.drop(columns=["ward"]), layout)


def test_sufficient_stats_summed_over_parts_match_all_rows() -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(50, 20, size=(500, 6))
    x[rng.random(x.shape) < 0.1] = np.nan
    x[:, 5] = 7.0  # constant column
    parts = np.array_split(x, [120, 121, 400])
    summed = SufficientStats.of(parts[0])
    for part in parts[1:]:
        summed = summed + SufficientStats.of(part)
    pooled = Standardiser.from_stats(summed)
    direct = Standardiser.from_stats(SufficientStats.of(x))
    np.testing.assert_allclose(pooled.mean, direct.mean, rtol=0, atol=1e-9)
    np.testing.assert_allclose(pooled.scale, direct.scale, rtol=0, atol=1e-9)
    np.testing.assert_allclose(pooled.mean[:5], np.nanmean(x[:, :5], axis=0), atol=1e-9)
    np.testing.assert_allclose(pooled.scale[:5], np.nanstd(x[:, :5], axis=0), atol=1e-9)
    assert pooled.scale[5] == 1.0


@settings(max_examples=40, deadline=None)
@given(
    arrays(np.float64, (30, 3), elements=st.floats(-1e3, 1e3) | st.just(np.nan)),
    st.integers(min_value=1, max_value=29),
)
def test_sufficient_stats_sum_is_split_invariant(x: np.ndarray, cut: int) -> None:
    summed = SufficientStats.of(x[:cut]) + SufficientStats.of(x[cut:])
    whole = SufficientStats.of(x)
    np.testing.assert_allclose(summed.to_vector(), whole.to_vector(), rtol=1e-12, atol=1e-6)
    a, b = Standardiser.from_stats(summed), Standardiser.from_stats(whole)
    np.testing.assert_allclose(a.mean, b.mean, atol=1e-9)


def test_sufficient_stats_vector_round_trip() -> None:
    stats = SufficientStats.of(np.arange(12, dtype=np.float64).reshape(4, 3))
    vector = stats.to_vector()
    assert vector.shape == (9,)
    back = SufficientStats.from_vector(vector, 3)
    np.testing.assert_array_equal(back.to_vector(), vector)
    with pytest.raises(SchemaError):
        SufficientStats.from_vector(vector, 4)


def test_standardiser_apply_imputes_mean_and_returns_float32() -> None:
    x = np.array([[1.0, 5.0], [3.0, np.nan], [np.nan, 5.0]])
    standardiser = Standardiser.from_stats(SufficientStats.of(x))
    out = standardiser.apply(x)
    assert out.dtype == np.float32
    assert out[2, 0] == 0.0 and out[1, 1] == 0.0
    np.testing.assert_allclose(out[:2, 0], [-1.0, 1.0])
    assert standardiser.scale[1] == 1.0
    assert Standardiser.from_dict(json.loads(json.dumps(standardiser.to_dict()))).mean.tolist() == [2.0, 5.0]


def test_prepare_hospital_data_splits_by_patient() -> None:
    frame = _frame(["A", "B"], rows=200)
    layout = fit_layout(frame, SCHEMA, min_level_count=1)
    data = prepare_hospital_data(frame, layout, validation_fraction=0.25, seed=1)
    assert data.n_train + data.val_x.shape[0] == 200
    assert data.train_x.shape[1] == layout.n_features
    # Rows of one patient are adjacent pairs with identical group ids: rebuild the split and check disjointness.
    groups = frame[GROUP].to_numpy()
    x = encode_features(frame, layout)
    train_rows = {tuple(np.nan_to_num(r, nan=-1)) for r in data.train_x}
    train_groups = {g for g, r in zip(groups, x, strict=True) if tuple(np.nan_to_num(r, nan=-1)) in train_rows}
    val_rows = {tuple(np.nan_to_num(r, nan=-1)) for r in data.val_x}
    val_groups = {g for g, r in zip(groups, x, strict=True) if tuple(np.nan_to_num(r, nan=-1)) in val_rows}
    assert not train_groups & val_groups

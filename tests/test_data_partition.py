"""Simulated hospitals: patient-level, sized and skewed as asked, reproducible, and written loadably."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from medheaven.data.encoding import encode_features, fit_layout
from medheaven.data.loading import get_schema, load_dataset, load_frame
from medheaven.data.partition import split_dataset, write_split
from medheaven.data.schemas import GROUP, LABEL
from medheaven.data.synthetic import generate_synthetic
from medheaven.errors import ConfigurationError

SCHEMES = ["iid", "dirichlet:0.1", "dirichlet:100", "column:admission_source_id"]


@pytest.fixture(scope="module")
def raw() -> pd.DataFrame:
    return generate_synthetic(6000, seed=11)


@pytest.fixture(scope="module")
def frame(raw: pd.DataFrame) -> pd.DataFrame:
    return load_frame(raw, get_schema("diabetes130"), source="synthetic")


def _split(frame: pd.DataFrame, scheme: str, **kwargs: object) -> tuple[dict[str, pd.DataFrame], pd.DataFrame]:
    options: dict[str, object] = {"hospitals": 4, "scheme": scheme, "test_fraction": 0.2, "seed": 7, **kwargs}
    return split_dataset(frame, **options)  # type: ignore[arg-type]


def _positive_rates(parts: dict[str, pd.DataFrame]) -> np.ndarray:
    return np.array([part[LABEL].mean() for part in parts.values()])


@pytest.mark.parametrize("scheme", SCHEMES)
def test_split_dataset_keeps_each_patient_in_one_place(frame: pd.DataFrame, scheme: str) -> None:
    parts, test = _split(frame, scheme)
    assert list(parts) == ["h1", "h2", "h3", "h4"]
    seen: dict[str, str] = {}
    for name, part in [*parts.items(), ("test", test)]:
        for group in part[GROUP].unique():
            assert group not in seen, f"patient {group} in {seen.get(group)} and {name}"
            seen[group] = name
    assert sum(len(p) for p in parts.values()) + len(test) == len(frame)
    assert abs(test[GROUP].nunique() / frame[GROUP].nunique() - 0.2) < 0.01


def test_split_dataset_iid_sizes_roughly_equal(frame: pd.DataFrame) -> None:
    parts, _ = _split(frame, "iid")
    sizes = np.array([len(p) for p in parts.values()])
    assert sizes.max() / sizes.min() < 1.15


def test_split_dataset_dirichlet_small_alpha_is_more_skewed(frame: pd.DataFrame) -> None:
    iid, _ = _split(frame, "iid")
    skewed, _ = _split(frame, "dirichlet:0.1")
    assert _positive_rates(skewed).std() > 3 * _positive_rates(iid).std()
    train_patients = sum(p[GROUP].nunique() for p in skewed.values())
    for part in skewed.values():
        assert part[LABEL].sum() >= 1
        assert part[GROUP].nunique() >= max(10, int(0.1 * train_patients / 4))


@pytest.mark.parametrize("seed", range(5))
def test_split_dataset_dirichlet_every_hospital_has_a_positive(frame: pd.DataFrame, seed: int) -> None:
    parts, _ = _split(frame, "dirichlet:0.05", hospitals=8, seed=seed)
    assert all(part[LABEL].sum() >= 1 for part in parts.values())


def test_split_dataset_dirichlet_impossible_raises(frame: pd.DataFrame) -> None:
    few_positives = frame[(frame[LABEL] == 0) | frame[GROUP].isin(frame.loc[frame[LABEL] == 1, GROUP].unique()[:3])]
    with pytest.raises(ConfigurationError, match="positive"):
        _split(few_positives, "dirichlet:0.5", hospitals=5, test_fraction=0.0)
    small = pd.DataFrame({GROUP: [f"p{i}" for i in range(100)], LABEL: [i % 2 for i in range(100)]})
    with pytest.raises(ConfigurationError, match="too few"):  # 11 hospitals of >= 10 patients need 110
        _split(small, "dirichlet:0.5", hospitals=11, test_fraction=0.0)


def test_split_dataset_column_scheme_assigns_by_value(frame: pd.DataFrame) -> None:
    parts, _ = _split(frame, "column:admission_source_id")
    train = pd.concat(parts.values())
    first = train.groupby(GROUP)["admission_source_id"].first()
    counts = train[GROUP].map(first).value_counts()
    top = list(counts.index[:3])
    for hid, value in zip(["h1", "h2", "h3"], top, strict=True):
        assert set(parts[hid][GROUP].map(first)) == {value}
    assert not set(parts["h4"][GROUP].map(first)) & set(top)
    assert len(parts["h1"]) >= len(parts["h2"]) >= len(parts["h3"])


def test_split_dataset_column_scheme_reads_dropped_raw_column(frame: pd.DataFrame, raw: pd.DataFrame) -> None:
    parts, _ = _split(frame, "column:payer_code", raw_frame=raw)
    train = pd.concat(parts.values())
    first_payer = raw.loc[train.index, "payer_code"].groupby(train[GROUP]).first()
    # "?" (missing) is the most frequent payer code: its patients form h1.
    assert (parts["h1"][GROUP].map(first_payer) == "?").all()
    assert (parts["h2"][GROUP].map(first_payer) == "MC").all()
    with pytest.raises(ConfigurationError, match="payer_code"):
        _split(frame, "column:payer_code")


@pytest.mark.parametrize("scheme", ["random", "dirichlet:-1", "dirichlet:x", "column:"])
def test_split_dataset_rejects_bad_scheme(frame: pd.DataFrame, scheme: str) -> None:
    with pytest.raises(ConfigurationError, match="scheme"):
        _split(frame, scheme)


def test_split_dataset_is_reproducible_by_seed(frame: pd.DataFrame) -> None:
    first, test_a = _split(frame, "dirichlet:0.5")
    second, test_b = _split(frame, "dirichlet:0.5")
    other, _ = _split(frame, "dirichlet:0.5", seed=8)
    assert test_a.index.equals(test_b.index)
    assert all(first[h].index.equals(second[h].index) for h in first)
    assert not all(first[h].index.equals(other[h].index) for h in first)


def test_write_split_files_reload_with_prepared_schema(frame: pd.DataFrame, tmp_path: Path) -> None:
    schema = get_schema("diabetes130")
    parts, test = _split(frame, "iid")
    layout = fit_layout(frame, schema)
    manifest_path = write_split(tmp_path, parts, test, layout, schema, meta={"scheme": "iid", "seed": 7})
    manifest = json.loads(manifest_path.read_text())
    assert {p.name for p in tmp_path.iterdir()} == {
        "h1.csv", "h2.csv", "h3.csv", "h4.csv", "test.csv", "layout.json", "schema.json", "split.json",
    }  # fmt: skip
    for name, digest in manifest["sha256"].items():
        assert hashlib.sha256((tmp_path / name).read_bytes()).hexdigest() == digest
    assert manifest["hospitals"]["h2"]["rows"] == len(parts["h2"])
    assert manifest["scheme"] == "iid"
    for name, original in [*parts.items(), ("test", test)]:
        again = load_dataset(tmp_path / f"{name}.csv", get_schema("prepared"))
        assert list(again.columns) == list(original.columns)
        np.testing.assert_array_equal(
            np.nan_to_num(encode_features(again, layout), nan=-1.0),
            np.nan_to_num(encode_features(original, layout), nan=-1.0),
        )
        assert again[LABEL].tolist() == original[LABEL].tolist()
    explicit = get_schema("prepared", schema_file=tmp_path / "schema.json")
    assert explicit.numeric == layout.numeric

"""Transforms run once per distinct value give the per-row transforms' results, value for value."""

from __future__ import annotations

from typing import Any, cast

import numpy as np
import pandas as pd
import pytest

from medheaven.data.diabetes130 import _AGE_BRACKET, age_midpoint, icd9_group
from medheaven.data.distinct import map_distinct
from medheaven.data.loading import NUMERIC_MISSING, clean_categorical, parse_numeric
from medheaven.data.schemas import MISSING
from medheaven.errors import DataFileError

COLUMNS = [
    pd.Series([" a", "b ", "a", None, np.nan, "", "  ", "b"], dtype="object"),
    pd.Series(["x", "y", None, "x"], dtype="str"),
    pd.Series([1, 1.0, True, "1", None], dtype="object"),  # equal under ==, different as text
    pd.Series(["250.1", "V45", "?", "410", None, "250.1"], dtype="object"),
]


def _categorical_by_row(values: pd.Series) -> pd.Series:
    text = values.astype("object").where(values.notna(), MISSING).astype(str).str.strip()
    return text.where(text != "", MISSING).astype("object")


def _numeric_by_row(values: pd.Series) -> pd.Series:
    text = values.astype("object")
    missing = text.isna() | text.astype(str).str.strip().isin(NUMERIC_MISSING)
    return pd.to_numeric(text.where(~missing), errors="coerce").astype(np.float64)


def _shown(value: object) -> str:
    return "(missing)" if bool(pd.isna(cast("Any", value))) else repr(value)


@pytest.mark.parametrize("values", COLUMNS)
def test_map_distinct_equals_map_per_row(values: pd.Series) -> None:
    values.index = pd.RangeIndex(10, 10 + len(values))
    pd.testing.assert_series_equal(map_distinct(values, _shown), values.astype("object").map(_shown).astype("object"))
    pd.testing.assert_series_equal(clean_categorical(values), _categorical_by_row(values))
    pd.testing.assert_series_equal(
        map_distinct(values, icd9_group), values.astype("object").map(icd9_group).astype("object")
    )


def test_parse_numeric_equals_per_row_parse_and_still_names_bad_values() -> None:
    values = pd.Series([" 2", "3.5", "?", None, "NA", "2", "-1e3"], index=range(5, 12), dtype="object")
    pd.testing.assert_series_equal(parse_numeric(values, column="c", path="f.csv"), _numeric_by_row(values))
    with pytest.raises(DataFileError, match="abc"):
        parse_numeric(pd.Series(["1", "abc", "1"], dtype="object"), column="c", path="f.csv")


def test_age_midpoint_equals_per_row_extraction() -> None:
    values = pd.Series(["[70-80)", "[0-10)", np.nan, "unknown", "[70-80)"], index=range(3, 8), dtype="object")
    parts = values.str.extract(_AGE_BRACKET)
    midpoint = (parts[0].astype(float) + parts[1].astype(float)) / 2.0
    expected = midpoint.astype("object").where(midpoint.notna(), values.astype("object"))
    pd.testing.assert_series_equal(age_midpoint(values), expected)

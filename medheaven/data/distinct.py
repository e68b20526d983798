"""Column transforms evaluated once per distinct value instead of once per row.

A column of a medical table repeats a few hundred values (codes, levels, small integers) over 100,000 rows, and
pandas' string methods on text columns run a Python call per row: cleaning the real diabetes file and every
hospital's prepared file spent seconds in them. ``pd.factorize`` finds the distinct values and each row's code in
one pass; the transform runs on the distinct values and the codes put the results back in row order, so the result
is the per-row transform's, value for value.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd

_MIXED = frozenset({"mixed", "mixed-integer", "mixed-integer-float", "integer-na", "boolean"})


def distinct_codes(values: pd.Series) -> tuple[np.ndarray, pd.Series]:
    """Each row's code into the distinct values, which end with one missing value (NaN) for the missing rows.

    Python equality makes ``1``, ``1.0`` and ``True`` one value, which ``str`` would tell apart: a column mixing
    such types (an in-memory frame; a CSV's columns are text) gets one code per row instead.
    """
    if pd.api.types.infer_dtype(values, skipna=True) in _MIXED:
        return np.arange(len(values) + 1)[:-1], pd.Series([*values.astype("object"), np.nan], dtype="object")
    codes, uniques = pd.factorize(values.astype("object"), use_na_sentinel=True)
    distinct = pd.Series([*uniques, np.nan], dtype="object")
    return np.where(codes < 0, len(uniques), codes), distinct


def map_distinct(values: pd.Series, function: Callable[[object], object]) -> pd.Series:
    """``values.map(function)`` with ``function`` called once per distinct value; every missing cell (None, NaN,
    pd.NA alike) is mapped through ``function(nan)``."""
    codes, distinct = distinct_codes(values)
    mapped = np.empty(len(distinct), dtype=object)
    mapped[:] = [function(value) for value in distinct]
    return pd.Series(mapped[codes], index=values.index, dtype="object")


def take_distinct(results: pd.Series, codes: np.ndarray, index: pd.Index) -> pd.Series:
    """Per-distinct-value ``results`` back in row order, on the column's ``index``."""
    return pd.Series(results.to_numpy()[codes], index=index, dtype=results.dtype)

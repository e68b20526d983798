"""The fixed feature layout shared by all hospitals, one-hot encoding, and federated standardisation.

Every hospital must produce the same columns in the same order, or the weights FedAvg adds up would mean
different things at different hospitals. The layout is fitted once and shared as ``layout.json``; levels a
hospital sees that the layout does not know fall into ``other``.

Standardisation never pools rows: each hospital computes :class:`SufficientStats` (count, sum, sum of squares
per column), the encrypted vectors are added, and the :class:`Standardiser` is derived from the sum.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from medheaven.data.schemas import GROUP, LABEL, MISSING, OTHER, PREPARED, Schema
from medheaven.errors import DataFileError, SchemaError
from medheaven.feature_layout import FeatureLayout

# A standard deviation below this fraction of the column's magnitude is rounding noise from sum-of-squares
# (or CKKS noise after decryption), not spread: such a column is left unscaled.
RELATIVE_STD_FLOOR = 1e-6


def _feature_kinds(frame: pd.DataFrame, schema: Schema) -> tuple[list[str], list[str]]:
    numeric, categorical = list(schema.numeric), list(schema.categorical)
    if schema.name not in ("generic", PREPARED):
        return numeric, categorical
    # Columns a generic schema left out were given a kind at load time: the cleaned frame's dtypes carry it.
    # (Only the cleaned frame reaches here; load_dataset has already dropped identifier-looking columns.)
    for column in frame.columns:
        if column in (GROUP, LABEL) or column in numeric or column in categorical:
            continue
        (numeric if pd.api.types.is_numeric_dtype(frame[column]) else categorical).append(str(column))
    return numeric, categorical


def fit_layout(frame: pd.DataFrame, schema: Schema, *, min_level_count: int = 10) -> FeatureLayout:
    numeric, categorical = _feature_kinds(frame, schema)
    missing = [c for c in (*numeric, *categorical) if c not in frame.columns]
    if missing:
        raise SchemaError(f"cannot fit a feature layout: the frame lacks column(s) {', '.join(missing)}")
    fitted: list[tuple[str, tuple[str, ...]]] = []
    for column in categorical:
        counts = frame[column].astype(str).value_counts()
        kept = sorted(str(level) for level, n in counts.items() if n >= min_level_count and level != OTHER)
        fitted.append((column, (*kept, OTHER)))
    return FeatureLayout(numeric=tuple(numeric), categorical=tuple(fitted))


def encode_features(frame: pd.DataFrame, layout: FeatureLayout) -> np.ndarray:
    """Numeric columns as they are (NaN kept), then one 0/1 column per level; unknown levels go to ``other``."""
    needed = [*layout.numeric, *(c for c, _ in layout.categorical)]
    missing = [c for c in needed if c not in frame.columns]
    if missing:
        raise SchemaError(f"cannot encode features: the data lacks column(s) {', '.join(missing)} of the layout")
    out = np.zeros((len(frame), layout.n_features), dtype=np.float64)
    for index, column in enumerate(layout.numeric):
        out[:, index] = _numeric_column(frame, column)
    offset = len(layout.numeric)
    rows = np.arange(len(frame))
    for column, levels in layout.categorical:
        values = frame[column].astype("object").where(frame[column].notna(), MISSING).astype(str)
        codes = pd.Categorical(values, categories=list(levels)).codes.astype(np.int64)
        codes[codes < 0] = levels.index(OTHER) if OTHER in levels else len(levels) - 1
        out[rows, offset + codes] = 1.0
        offset += len(levels)
    return out


def _numeric_column(frame: pd.DataFrame, column: str) -> np.ndarray:
    """A layout-numeric column; a hospital that read it as text (its cells did not all parse) must not have those
    cells quietly become missing and then the federation's mean."""
    values = frame[column]
    if pd.api.types.is_numeric_dtype(values):
        return values.to_numpy(dtype=np.float64, na_value=np.nan)
    text = values.astype("object")
    missing = text.isna() | (text.astype(str).str.strip() == MISSING)
    parsed = pd.to_numeric(text.where(~missing), errors="coerce")
    bad = parsed.isna() & ~missing
    if bad.any():
        from medheaven.data.generic import numeric_error

        source = str(frame.attrs.get("source", "<data>"))
        message = numeric_error(text, bad, column=column, path=source, decimal=".")
        raise DataFileError(f"{message} (the feature layout of the run makes {column!r} numeric)")
    return parsed.to_numpy(dtype=np.float64, na_value=np.nan)


#: The default feature-magnitude bound of a run (MEDHEAVEN_MAX_ABS_FEATURE); a planned bound is never below it, so
#: data that fits keeps the statistics' precision it had.
DEFAULT_MAX_ABS_FEATURE = 1000.0


def planned_feature_bound(largest: float) -> float:
    """The smallest of 1, 2, 5 x 10^k at or above twice ``largest`` (headroom for a hospital's larger values), and
    at least the default: a round number an operator can read and type."""
    target = max(2.0 * abs(float(largest)), DEFAULT_MAX_ABS_FEATURE)
    exponent = math.floor(math.log10(target))
    for mantissa in (1.0, 2.0, 5.0, 10.0):
        if mantissa * 10.0**exponent >= target:
            return mantissa * 10.0**exponent
    return 10.0 ** (exponent + 1)  # unreachable: 10 x 10^k >= target by the choice of k


@dataclass(frozen=True)
class SufficientStats:
    count: np.ndarray
    total: np.ndarray
    total_sq: np.ndarray

    @classmethod
    def of(cls, features: np.ndarray) -> SufficientStats:
        x = np.asarray(features, dtype=np.float64)
        present = ~np.isnan(x)
        filled = np.where(present, x, 0.0)
        return cls(
            count=present.sum(axis=0).astype(np.float64),
            total=filled.sum(axis=0),
            total_sq=(filled * filled).sum(axis=0),
        )

    def __add__(self, other: SufficientStats) -> SufficientStats:
        if self.count.shape != other.count.shape:
            raise SchemaError(f"cannot add statistics of {self.count.size} and {other.count.size} features")
        return SufficientStats(self.count + other.count, self.total + other.total, self.total_sq + other.total_sq)

    def to_vector(self) -> np.ndarray:
        return np.concatenate([self.count, self.total, self.total_sq]).astype(np.float64)

    @classmethod
    def from_vector(cls, v: np.ndarray, n_features: int) -> SufficientStats:
        vector = np.asarray(v, dtype=np.float64).ravel()
        if vector.size != 3 * n_features:
            raise SchemaError(f"statistics vector has {vector.size} values, expected 3 x {n_features} features")
        count, total, total_sq = np.split(vector, 3)
        return cls(count=count.copy(), total=total.copy(), total_sq=total_sq.copy())


@dataclass(frozen=True)
class Standardiser:
    mean: np.ndarray
    scale: np.ndarray

    @classmethod
    def from_stats(cls, stats: SufficientStats) -> Standardiser:
        count = np.asarray(stats.count, dtype=np.float64)
        safe = np.where(count > 0.5, count, 1.0)
        mean = np.where(count > 0.5, stats.total / safe, 0.0)
        variance = np.maximum(np.where(count > 0.5, stats.total_sq / safe - mean * mean, 0.0), 0.0)
        std = np.sqrt(variance)
        flat = std <= RELATIVE_STD_FLOOR * np.maximum(np.abs(mean), 1.0)
        return cls(mean=mean, scale=np.where(flat, 1.0, std))

    def apply(self, features: np.ndarray) -> np.ndarray:
        x = np.asarray(features, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.mean.size:
            raise SchemaError(f"features have shape {x.shape}, the standardiser expects {self.mean.size} columns")
        # NaN -> 0.0 after centring is mean imputation, with the federation's mean rather than a local one.
        scaled: np.ndarray = np.nan_to_num((x - self.mean) / self.scale, nan=0.0)
        return scaled.astype(np.float32)

    def to_dict(self) -> dict[str, Any]:
        return {"mean": self.mean.tolist(), "scale": self.scale.tolist()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Standardiser:
        mean = np.asarray(d["mean"], dtype=np.float64)
        scale = np.asarray(d["scale"], dtype=np.float64)
        if mean.shape != scale.shape or mean.ndim != 1:
            raise SchemaError(f"standardiser has mean of shape {mean.shape} and scale of shape {scale.shape}")
        return cls(mean=mean, scale=scale)

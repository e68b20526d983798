"""The feature layout built from separate hospital files, without pooling rows or revealing per-level counts.

1. Each hospital *proposes*: the kind of each feature column it reads, and per categorical column only the levels
   it holds for at least ``k`` patients (:func:`propose`). Proposals carry level names, never counts.
2. The candidates are the union of the proposals over the columns every hospital has (:func:`candidate_layout`);
   a column read as numeric at one hospital and categorical at another is an error naming both.
3. Each hospital encrypts, per candidate level, how many of its patients hold it (:func:`patient_indicators`
   summed as sufficient statistics); the aggregator adds ciphertexts; only a key holder decrypts the sum, and it
   returns the layout (:func:`final_layout`), not the counts.
4. Levels whose federated patient count reaches the threshold are kept, the rest fall into ``other``.

:func:`pooled_layout` is the same computation on pooled frames: the reference the federated result must equal.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from medheaven.data.schemas import GROUP, LABEL, OTHER
from medheaven.errors import SchemaError
from medheaven.feature_layout import FeatureLayout

NUMERIC = "numeric"
CATEGORICAL = "categorical"
#: Bounds on a proposal that arrives over the broker (it may be malformed or hostile).
MAX_COLUMNS = 2048
MAX_LEVELS = 4096


@dataclass(frozen=True)
class LevelProposal:
    """What one hospital says about its file: column kinds, and the levels it holds for >= k patients."""

    kinds: dict[str, str]
    levels: dict[str, tuple[str, ...]]

    def to_dict(self) -> dict[str, Any]:
        return {"kinds": dict(self.kinds), "levels": {c: list(v) for c, v in self.levels.items()}}

    @classmethod
    def from_dict(cls, data: Any, *, hospital: str) -> LevelProposal:
        try:
            kinds = {str(c): str(k) for c, k in dict(data["kinds"]).items()}
            levels = {str(c): tuple(str(v) for v in values) for c, values in dict(data["levels"]).items()}
        except (KeyError, TypeError, ValueError) as exc:
            raise SchemaError(f"hospital {hospital!r} sent a malformed layout proposal ({exc!r})") from exc
        if len(kinds) > MAX_COLUMNS or any(len(v) > MAX_LEVELS for v in levels.values()):
            raise SchemaError(f"hospital {hospital!r} proposed more columns or levels than a layout may hold")
        if set(kinds.values()) - {NUMERIC, CATEGORICAL} or set(levels) - {
            c for c, k in kinds.items() if k == CATEGORICAL
        }:
            raise SchemaError(f"hospital {hospital!r} sent an inconsistent layout proposal")
        return cls(kinds=kinds, levels=levels)


def _features(frame: pd.DataFrame) -> list[str]:
    return [str(c) for c in frame.columns if c not in (GROUP, LABEL)]


def _level_patients(frame: pd.DataFrame, column: str) -> pd.Series:
    """Distinct patients per level of one column (a patient with the level on any of its rows counts once)."""
    return frame.groupby(frame[column].astype(str), sort=True)[GROUP].nunique()


def propose(frame: pd.DataFrame, *, min_patients: int) -> LevelProposal:
    """A cleaned frame's proposal; the kinds are those its schema (or the inference at load) gave it."""
    if min_patients < 1:
        raise SchemaError(f"the level threshold k must be >= 1, got {min_patients}")
    kinds: dict[str, str] = {}
    levels: dict[str, tuple[str, ...]] = {}
    for column in _features(frame):
        if pd.api.types.is_numeric_dtype(frame[column]):
            kinds[column] = NUMERIC
            continue
        kinds[column] = CATEGORICAL
        counts = _level_patients(frame, column)
        levels[column] = tuple(sorted(str(v) for v, n in counts.items() if n >= min_patients and v != OTHER))
    return LevelProposal(kinds=kinds, levels=levels)


def candidate_layout(proposals: dict[str, LevelProposal]) -> tuple[FeatureLayout, list[str]]:
    """Candidate levels (no ``other`` yet) over the columns every hospital has; also the columns left out."""
    if not proposals:
        raise SchemaError("a layout needs at least one hospital's proposal")
    columns = set.intersection(*(set(p.kinds) for p in proposals.values()))
    left_out = sorted(set.union(*(set(p.kinds) for p in proposals.values())) - columns)
    numeric: list[str] = []
    categorical: list[tuple[str, tuple[str, ...]]] = []
    for column in sorted(columns):
        kinds = {hospital: p.kinds[column] for hospital, p in proposals.items()}
        if len(set(kinds.values())) > 1:
            raise SchemaError(_disagreement(column, kinds, proposals))
        if next(iter(kinds.values())) == NUMERIC:
            numeric.append(column)
        else:
            union = sorted(set().union(*(p.levels.get(column, ()) for p in proposals.values())))
            categorical.append((column, tuple(union)))
    return FeatureLayout(numeric=tuple(numeric), categorical=tuple(categorical)), left_out


def _disagreement(column: str, kinds: dict[str, str], proposals: dict[str, LevelProposal]) -> str:
    numeric_at = [h for h, k in kinds.items() if k == NUMERIC]
    text_at = [h for h, k in kinds.items() if k == CATEGORICAL]
    shown = "; ".join(
        f"{h}: levels {list(proposals[h].levels.get(column, ()))[:6]}" if proposals[h].levels.get(column) else
        f"{h}: no level held by k patients"
        for h in text_at
    )  # fmt: skip
    return (
        f"column {column!r} is numeric at {', '.join(numeric_at)} but categorical at {', '.join(text_at)} ({shown}); "
        f"list it under `numeric` (and fix the cells that are not numbers) or under `categorical` in every "
        "hospital's schema file"
    )


def candidate_columns(candidates: FeatureLayout) -> list[tuple[str, str]]:
    """(column, level) of every candidate level, in the order of the encrypted count vector."""
    return [(column, level) for column, levels in candidates.categorical for level in levels]


def patient_indicators(frame: pd.DataFrame, candidates: FeatureLayout) -> np.ndarray:
    """One row per patient, one 0/1 column per candidate level: whether the patient holds it on any row. Summed
    over patients (as :class:`SufficientStats` ``total``) this is the level's patient count."""
    pairs = candidate_columns(candidates)
    patients = pd.Index(frame[GROUP].astype(str).unique())
    out = np.zeros((patients.size, len(pairs)), dtype=np.float64)
    for index, (column, level) in enumerate(pairs):
        if column not in frame.columns:
            raise SchemaError(f"the data lacks column {column!r} of the candidate layout")
        holders = frame.loc[frame[column].astype(str) == level, GROUP].astype(str).unique()
        out[patients.get_indexer(holders), index] = 1.0
    return out


def final_layout(candidates: FeatureLayout, totals: np.ndarray, *, threshold: int) -> FeatureLayout:
    """Keep the candidate levels whose federated patient count reaches ``threshold``; ``other`` takes the rest."""
    pairs = candidate_columns(candidates)
    if totals.size != len(pairs):
        raise SchemaError(f"{totals.size} federated counts for {len(pairs)} candidate levels")
    kept = {pair for pair, total in zip(pairs, np.rint(totals).tolist(), strict=True) if total >= threshold}
    categorical = tuple(
        (column, (*(level for level in levels if (column, level) in kept), OTHER))
        for column, levels in candidates.categorical
    )
    return FeatureLayout(numeric=candidates.numeric, categorical=categorical)


def pooled_layout(frames: dict[str, pd.DataFrame], *, min_patients: int, threshold: int) -> FeatureLayout:
    """The same layout computed with every hospital's rows in one place (tests and audits only)."""
    proposals = {h: propose(f, min_patients=min_patients) for h, f in frames.items()}
    candidates, _ = candidate_layout(proposals)
    pooled = pd.concat(
        [f.assign(**{GROUP: h + ":" + f[GROUP].astype(str)}) for h, f in frames.items()], ignore_index=True
    )
    totals = np.array(
        [_level_patients(pooled, c).get(level, 0) for c, level in candidate_columns(candidates)], dtype=np.float64
    )
    return final_layout(candidates, totals, threshold=threshold)

"""Simulated hospitals: a held-out test set and K hospital partitions of one cleaned data set.

Everything is patient-level: all encounters of one ``group`` land in the same place, so no patient is in two
hospitals or in both train and test (a patient seen in training makes test scores optimistic).

Schemes (``scheme`` argument):

``iid``
    patients shuffled and cut into K nearly equal parts.
``dirichlet:ALPHA``
    label skew after Hsu et al. (2019): for each class, hospital shares are drawn from Dirichlet(ALPHA); small
    ALPHA (0.1) gives very different positive rates, large ALPHA (100) is close to IID. Patients are classed by
    whether any of their encounters is positive. Every hospital is then given at least one positive patient and
    at least ``max(10, 10% of an equal share)`` patients, moved from the largest hospitals.
``column:NAME``
    by the value of a column (a patient counts under the value of its first encounter). The K-1 most frequent
    values (by training rows) get hospitals h1..h(K-1) in that order; every other value is grouped into hK.
    NAME may be a feature or a raw column that cleaning dropped (pass the raw frame as ``raw_frame``).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medheaven.data.schemas import GROUP, LABEL, MISSING, PREPARED, Schema
from medheaven.errors import ConfigurationError, SchemaError
from medheaven.feature_layout import FeatureLayout

MIN_HOSPITAL_PATIENTS = 10
MIN_SHARE_OF_EQUAL = 0.1
SCHEME_HELP = "iid, dirichlet:ALPHA (e.g. dirichlet:0.5) or column:NAME (e.g. column:admission_source_id)"


def hospital_ids(hospitals: int) -> list[str]:
    return [f"h{k + 1}" for k in range(hospitals)]


def parse_scheme(scheme: str) -> tuple[str, str]:
    kind, _, argument = scheme.strip().partition(":")
    if kind == "iid" and not argument:
        return kind, ""
    if kind == "dirichlet":
        try:
            alpha = float(argument)
        except ValueError:
            alpha = -1.0
        if not (alpha > 0 and math.isfinite(alpha)):
            raise ConfigurationError(f"scheme {scheme!r}: ALPHA must be a positive number, e.g. dirichlet:0.5")
        return kind, argument
    if kind == "column" and argument:
        return kind, argument
    raise ConfigurationError(f"unknown partition scheme {scheme!r}; use {SCHEME_HELP}")


def split_dataset(
    frame: pd.DataFrame,
    *,
    hospitals: int,
    scheme: str,
    test_fraction: float,
    seed: int,
    raw_frame: pd.DataFrame | None = None,
) -> tuple[dict[str, pd.DataFrame], pd.DataFrame]:
    kind, argument = parse_scheme(scheme)
    missing = [c for c in (GROUP, LABEL) if c not in frame.columns]
    if missing:
        raise SchemaError(f"cannot split: the frame lacks {', '.join(missing)}; load it with load_dataset first")
    if hospitals < 1:
        raise ConfigurationError(f"the number of hospitals must be >= 1, got {hospitals}")
    if not 0.0 <= test_fraction < 1.0:
        raise ConfigurationError(f"test fraction must be in [0, 1), got {test_fraction}")
    rng = np.random.default_rng(seed)
    groups = frame[GROUP].astype(str)
    train_mask = _train_mask(groups, test_fraction, rng)
    train = frame.loc[train_mask]
    table = _group_table(train)
    if kind == "iid":
        assignment = _assign_iid(table, hospitals, rng)
    elif kind == "dirichlet":
        assignment = _assign_dirichlet(table, hospitals, float(argument), rng)
    else:
        values = _column_values(frame, argument, raw_frame).loc[train.index]
        assignment = _assign_by_value(table, _first_value_per_group(train, values), hospitals, argument)
    row_hospital = train[GROUP].astype(str).map(assignment)
    parts = {hid: train.loc[(row_hospital == k).to_numpy()].copy() for k, hid in enumerate(hospital_ids(hospitals))}
    return parts, frame.loc[~train_mask].copy()


def _train_mask(groups: pd.Series, test_fraction: float, rng: np.random.Generator) -> np.ndarray:
    unique = np.sort(groups.unique().astype(str))
    n_test = round(test_fraction * unique.size)
    if test_fraction > 0 and not 0 < n_test < unique.size:
        raise ConfigurationError(
            f"a test fraction of {test_fraction} of {unique.size} patients leaves train or test empty"
        )
    test_groups = rng.permutation(unique)[:n_test]
    return ~groups.isin(test_groups).to_numpy()


def _group_table(train: pd.DataFrame) -> pd.DataFrame:
    """One row per patient, sorted by id so that assignments depend only on the seed, not on row order."""
    grouped = train.groupby(train[GROUP].astype(str), sort=True)[LABEL]
    return pd.DataFrame({"positive": grouped.max().astype(bool), "rows": grouped.size()})


def _check_enough_patients(table: pd.DataFrame, hospitals: int) -> None:
    if len(table) < hospitals:
        raise ConfigurationError(f"{len(table)} training patients cannot fill {hospitals} hospitals")


def _assign_iid(table: pd.DataFrame, hospitals: int, rng: np.random.Generator) -> dict[str, int]:
    _check_enough_patients(table, hospitals)
    order = rng.permutation(len(table))
    assignment = np.empty(len(table), dtype=np.int64)
    for k, chunk in enumerate(np.array_split(order, hospitals)):
        assignment[chunk] = k
    return dict(zip(table.index, assignment.tolist(), strict=True))


def _assign_dirichlet(table: pd.DataFrame, hospitals: int, alpha: float, rng: np.random.Generator) -> dict[str, int]:
    _check_enough_patients(table, hospitals)
    positive = table["positive"].to_numpy()
    if int(positive.sum()) < hospitals:
        raise ConfigurationError(
            f"dirichlet split: {int(positive.sum())} training patients with a positive label cannot give each of "
            f"{hospitals} hospitals one; use fewer hospitals or the iid scheme"
        )
    minimum = max(MIN_HOSPITAL_PATIENTS, math.ceil(MIN_SHARE_OF_EQUAL * len(table) / hospitals))
    if len(table) < minimum * hospitals:
        raise ConfigurationError(
            f"dirichlet split: {len(table)} training patients are too few for {hospitals} hospitals of at least "
            f"{minimum} patients each; use fewer hospitals"
        )
    assignment = np.empty(len(table), dtype=np.int64)
    for members in (np.flatnonzero(positive), np.flatnonzero(~positive)):
        shares = rng.dirichlet(np.full(hospitals, alpha))
        cuts = np.floor(np.cumsum(shares)[:-1] * members.size).astype(np.int64)
        for k, chunk in enumerate(np.split(rng.permutation(members), cuts)):
            assignment[chunk] = k
    _give_each_a_positive(assignment, positive, hospitals)
    _enforce_minimum(assignment, positive, hospitals, minimum)
    return dict(zip(table.index, assignment.tolist(), strict=True))


def _give_each_a_positive(assignment: np.ndarray, positive: np.ndarray, hospitals: int) -> None:
    for k in range(hospitals):
        if np.any(positive & (assignment == k)):
            continue
        donor = int(np.argmax(np.bincount(assignment[positive], minlength=hospitals)))
        assignment[np.flatnonzero(positive & (assignment == donor))[0]] = k


def _enforce_minimum(assignment: np.ndarray, positive: np.ndarray, hospitals: int, minimum: int) -> None:
    # Move negative patients from the largest hospital: the positives placed above stay where they are.
    for k in range(hospitals):
        while (deficit := minimum - int(np.sum(assignment == k))) > 0:
            sizes = np.bincount(assignment, minlength=hospitals)
            donor = int(np.argmax(sizes))
            movable = np.flatnonzero(~positive & (assignment == donor))[: min(deficit, sizes[donor] - minimum)]
            if donor == k or movable.size == 0:
                raise ConfigurationError(f"dirichlet split: cannot give hospital h{k + 1} {minimum} patients")
            assignment[movable] = k


def _column_values(frame: pd.DataFrame, name: str, raw_frame: pd.DataFrame | None) -> pd.Series:
    if name in frame.columns and name not in (GROUP, LABEL):
        source = frame[name]
    elif raw_frame is not None and name in raw_frame.columns:
        if not frame.index.isin(raw_frame.index).all():
            raise ConfigurationError(f"column:{name}: the raw frame does not cover the cleaned frame's rows")
        source = raw_frame.loc[frame.index, name]
    else:
        raise ConfigurationError(f"scheme column:{name}: the data has no column {name!r}")
    text = source.astype("object").where(source.notna(), MISSING).astype(str).str.strip()
    return text.where(~text.isin(["", "?"]), MISSING)


def _first_value_per_group(train: pd.DataFrame, values: pd.Series) -> pd.Series:
    return values.groupby(train[GROUP].astype(str), sort=True).first()


def column_hospital_values(row_counts: dict[str, int], hospitals: int, name: str) -> dict[str, list[str]]:
    """Which column values each hospital holds: the K-1 most frequent alone, all the rest together in hK."""
    ranked = sorted(row_counts, key=lambda value: (-row_counts[value], value))
    if len(ranked) < hospitals:
        raise ConfigurationError(
            f"scheme column:{name}: the column has {len(ranked)} distinct value(s), fewer than {hospitals} hospitals"
        )
    ids = hospital_ids(hospitals)
    mapping = {hid: [str(v)] for hid, v in zip(ids[:-1], ranked[: hospitals - 1], strict=True)}
    mapping[ids[-1]] = [str(v) for v in ranked[hospitals - 1 :]]
    return mapping


def _assign_by_value(table: pd.DataFrame, first: pd.Series, hospitals: int, name: str) -> dict[str, int]:
    _check_enough_patients(table, hospitals)
    values = [str(v) for v in first.reindex(table.index)]
    row_counts: dict[str, int] = {}
    for value, rows in zip(values, table["rows"].tolist(), strict=True):
        row_counts[value] = row_counts.get(value, 0) + int(rows)
    mapping = column_hospital_values(row_counts, hospitals, name)
    value_to_k = {value: k for k, members in enumerate(mapping.values()) for value in members}
    return {str(group): value_to_k[value] for group, value in zip(table.index, values, strict=True)}


def describe_partition(frame: pd.DataFrame) -> dict[str, Any]:
    rows = len(frame)
    positives = int(frame[LABEL].sum()) if rows else 0
    return {
        "rows": rows,
        "patients": int(frame[GROUP].nunique()),
        "positives": positives,
        "positive_rate": positives / rows if rows else 0.0,
    }


def write_split(
    out_dir: Path,
    parts: dict[str, pd.DataFrame],
    test: pd.DataFrame,
    layout: FeatureLayout,
    schema: Schema,
    *,
    meta: dict[str, Any],
) -> Path:
    """Write the hospitals' files, test.csv, layout.json, schema.json and split.json; return split.json's path.

    The CSVs hold the cleaned format (features, ``group``, ``label``) and load again with the ``prepared``
    schema. split.json records each file's sha256 so a hospital can check it holds the file the split wrote.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    _remove_stale_hospital_files(out_dir, parts)
    digests: dict[str, str] = {}
    summary: dict[str, dict[str, Any]] = {}
    for name, part in [*parts.items(), ("test", test)]:
        path = out_dir / f"{name}.csv"
        part.to_csv(path, index=False, na_rep="")
        digests[path.name] = _sha256(path)
        summary[name] = {**describe_partition(part), "file": path.name, "sha256": digests[path.name]}
    layout.save(out_dir / "layout.json")
    prepared = prepared_schema_for(layout)
    schema_doc = {**prepared.to_dict(), "source_schema": schema.to_dict()}
    (out_dir / "schema.json").write_text(json.dumps(schema_doc, indent=2) + "\n", encoding="utf-8")
    for name in ("layout.json", "schema.json"):
        digests[name] = _sha256(out_dir / name)
    manifest = {
        "version": 1,
        **meta,
        "hospitals": {name: summary[name] for name in parts},
        "test": summary["test"],
        "n_features": layout.n_features,
        "sha256": digests,
    }
    split_path = out_dir / "split.json"
    split_path.write_text(json.dumps(manifest, indent=2, default=str) + "\n", encoding="utf-8")
    return split_path


def _remove_stale_hospital_files(out_dir: Path, parts: dict[str, pd.DataFrame]) -> None:
    # Only a directory that an earlier split wrote is tidied, and only files named like its hospitals: a rerun
    # with fewer hospitals must not leave an h7.csv that looks like part of the new split.
    if not (out_dir / "split.json").is_file():
        return
    for path in out_dir.glob("h*.csv"):
        if re.fullmatch(r"h\d+", path.stem) and path.stem not in parts:
            path.unlink()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def prepared_schema_for(layout: FeatureLayout) -> Schema:
    """The schema of the files ``medheaven data split`` writes, for exactly this layout's features."""
    return Schema(
        name=PREPARED,
        target=LABEL,
        positive_values=("1",),
        group_column=GROUP,
        categorical=tuple(column for column, _ in layout.categorical),
        numeric=layout.numeric,
        identifier_columns=(),
        drop_columns=(),
        negative_values=("0",),
    )

"""Choosing a schema and turning a raw CSV into the cleaned frame every other step works on.

The cleaned frame holds only the schema's features (numeric as float64 with NaN for missing, categorical as
object strings with missing as the literal ``"missing"``), ``group`` (the patient, as a string) and ``label``
(0/1). Its index is the 0-based data row of the source file, so rows can be traced back (and joined to the raw
file, e.g. to partition by a column that is not a feature).
"""

from __future__ import annotations

import csv
import gzip
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
from rich.console import Console

from medheaven.data.diabetes130 import clean_diabetes130, diabetes130_schema
from medheaven.data.generic import (
    COMMA_DECIMAL,
    drop_identifier_columns,
    infer_column_kinds,
    numeric_error,
    read_schema_file,
    warn_absent_columns,
)
from medheaven.data.johns import clean_johns, johns_schema
from medheaven.data.schemas import DELIMITERS, GROUP, LABEL, MISSING, PREPARED, SCHEMA_NAMES, Schema
from medheaven.errors import DataFileError, SchemaError, TargetError
from medheaven.feature_layout import FeatureLayout
from medheaven.records import read_json_object

# Read everything as text first: only "?" and empty cells are missing, so that "None" (a real level of
# max_glu_serum and A1Cresult: test not taken) and "NA" survive as values.
NA_VALUES = ["?", ""]
NUMERIC_MISSING = frozenset({"", "?", "NA", "N/A", "NaN", "nan", "null", "NULL", "None", "none"})

_stderr = Console(stderr=True)


def get_schema(name: str, *, schema_file: Path | None = None, target: str = "30d") -> Schema:
    """A built-in schema by name, a generic one from ``schema_file``, or ``"prepared"`` for split output."""
    if name == "diabetes130":
        return diabetes130_schema(target)
    if name == "johns":
        return johns_schema()
    if name == "generic":
        if schema_file is None:
            raise SchemaError("the generic schema needs a schema file: pass --schema-file PATH (JSON or YAML)")
        return read_schema_file(schema_file)
    if name == PREPARED:
        return prepared_schema(schema_file)
    raise SchemaError(f"unknown schema {name!r}; choose one of: {', '.join(SCHEMA_NAMES)}")


def prepared_schema(schema_file: Path | None = None) -> Schema:
    """The schema of files written by ``write_split``; features come from its schema.json or layout.json."""
    base = Schema(PREPARED, LABEL, ("1",), GROUP, (), (), (), (), negative_values=("0",))
    if schema_file is None:
        return base
    remedy = "pass the schema.json or layout.json `medheaven data split` wrote"
    data = read_json_object(schema_file, what="schema file", remedy=remedy, error=SchemaError)
    if "target" in data:
        # schema.json carries the schema the split was made from next to the prepared one
        written = Schema.from_dict({k: v for k, v in data.items() if k != "source_schema"})
        return replace(base, categorical=written.categorical, numeric=written.numeric)
    layout = FeatureLayout.from_dict(data)
    return replace(base, categorical=tuple(c for c, _ in layout.categorical), numeric=layout.numeric)


#: Bytes of a file the delimiter sniffer reads: enough for a header and a few dozen rows.
SNIFF_BYTES = 64 * 1024
_DOT_DECIMAL = re.compile(r"^[+-]?\d+\.\d+$")


def _head(path: Path) -> str:
    opener = gzip.open if path.suffix.lower() == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            data: bytes = handle.read(SNIFF_BYTES)
    except (OSError, EOFError) as exc:
        raise DataFileError(f"data file {path} cannot be read: {exc}") from exc
    return data.decode("utf-8", errors="replace")


def sniff_delimiter(path: Path) -> str:
    """The file's field delimiter among ``DELIMITERS`` (csv.Sniffer on the first rows); ',' when it cannot tell."""
    sample = _head(path)
    # only whole lines: a cut line at the end of the sample can confuse the sniffer
    lines = sample.splitlines()[:-1] if len(sample) >= SNIFF_BYTES else sample.splitlines()
    try:
        return str(csv.Sniffer().sniff("\n".join(lines[:50]), delimiters="".join(DELIMITERS)).delimiter)
    except csv.Error:
        return ","


def sniff_decimal(raw: pd.DataFrame, delimiter: str) -> str:
    """',' only when the file is not comma-delimited and numeric-looking cells use a comma and never a dot."""
    if delimiter == ",":
        return "."
    sample = raw.head(2000).stack().astype(str).str.strip()
    commas = int(sample.str.fullmatch(COMMA_DECIMAL).sum())
    dots = int(sample.str.fullmatch(_DOT_DECIMAL).sum())
    return "," if commas > 0 and dots == 0 else "."


def read_raw_csv(path: Path, *, delimiter: str | None = None) -> pd.DataFrame:
    """The file as text columns, index = 0-based data row. Raises DataFileError for missing/empty/unreadable.

    ``delimiter`` None sniffs it; the chosen one is kept in ``frame.attrs["delimiter"]``."""
    if not path.is_file():
        raise DataFileError(f"data file {path} does not exist; check the --data path")
    sep = delimiter or sniff_delimiter(path)
    try:
        raw = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=NA_VALUES, sep=sep)
    except pd.errors.EmptyDataError as exc:
        raise DataFileError(f"data file {path} is empty: it needs a header row and at least one data row") from exc
    except (pd.errors.ParserError, UnicodeDecodeError, OSError, EOFError) as exc:
        raise DataFileError(
            f"data file {path} cannot be read as CSV with delimiter {sep!r}: {exc}; if the delimiter is another "
            "one, set `delimiter` in the schema"
        ) from exc
    raw.columns = pd.Index([str(c).strip() for c in raw.columns])
    if raw.empty:
        raise DataFileError(f"data file {path} has a header but no data rows")
    raw.attrs["delimiter"] = sep
    return raw


def load_dataset(path: Path, schema: Schema) -> pd.DataFrame:
    raw = read_raw_csv(path, delimiter=schema.delimiter)
    delimiter = str(raw.attrs.get("delimiter", ","))
    resolved = replace(
        _resolve_prepared(schema, path), delimiter=delimiter, decimal=schema.decimal or sniff_decimal(raw, delimiter)
    )
    return load_frame(raw, resolved, source=path)


def load_frame(raw: pd.DataFrame, schema: Schema, *, source: Path | str = "<in-memory frame>") -> pd.DataFrame:
    """Like :func:`load_dataset` for a raw frame already in memory (e.g. :func:`generate_synthetic`'s)."""
    if raw.empty:
        raise DataFileError(f"data {source} has no rows")
    path = Path(source) if isinstance(source, str) else source
    # Frames built in memory spell missing as "?" like the files do; read_raw_csv has already turned it into NaN.
    raw = raw.mask(raw.isin(NA_VALUES))
    _require_columns(raw, schema, path)
    raw, schema = _clean(raw, schema, path)
    if raw.empty:
        raise DataFileError(f"data file {path} has no rows left after cleaning for schema {schema.name!r}")
    missing = [c for c in schema.feature_columns if c not in raw.columns]
    if missing:
        raise SchemaError(f"data file {path} lacks column(s) {', '.join(missing)} required by schema {schema.name!r}")
    columns: dict[str, pd.Series] = {}
    for column in schema.numeric:
        columns[column] = parse_numeric(raw[column], column=column, path=path, decimal=schema.decimal or ".")
    for column in schema.categorical:
        columns[column] = clean_categorical(raw[column])
    columns[GROUP] = _group(raw, schema)
    columns[LABEL] = make_label(raw[schema.target], schema, path=path)
    frame = pd.DataFrame(columns, index=raw.index)
    frame.attrs["source"] = str(path)  # so later steps (encoding against a run's layout) can name the file
    return frame


def _resolve_prepared(schema: Schema, path: Path) -> Schema:
    if schema.name != PREPARED or schema.feature_columns:
        return schema
    for candidate in (path.parent / "schema.json", path.parent / "layout.json"):
        if candidate.is_file():
            return prepared_schema(candidate)
    raise SchemaError(
        f"data file {path}: the prepared schema needs schema.json or layout.json next to it (written by data split)"
    )


def _require_columns(raw: pd.DataFrame, schema: Schema, path: Path) -> None:
    if schema.target not in raw.columns:
        raise TargetError(
            f"data file {path} has no target column {schema.target!r} (schema {schema.name!r}); "
            f"columns present: {_preview(raw.columns)}{_delimiter_hint(raw)}"
        )
    if schema.group_column is not None and schema.group_column not in raw.columns:
        raise SchemaError(
            f"data file {path} has no patient column {schema.group_column!r} (schema {schema.name!r}); "
            f"columns present: {_preview(raw.columns)}"
        )


def _delimiter_hint(raw: pd.DataFrame) -> str:
    """A header read as one field joined by another delimiter means the file was split on the wrong character."""
    used = str(raw.attrs.get("delimiter", ","))
    for delimiter in DELIMITERS:
        if delimiter != used and any(str(c).count(delimiter) >= 2 for c in raw.columns):
            return (
                f". The header looks like one field joined by {delimiter!r} (read with delimiter {used!r}): set "
                f"`delimiter: {delimiter!r}` in the schema (and `decimal: ','` if numbers use decimal commas)"
            )
    return ""


def _preview(columns: pd.Index, limit: int = 12) -> str:
    names = [str(c) for c in columns]
    return ", ".join(names[:limit]) + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def _clean(raw: pd.DataFrame, schema: Schema, path: Path) -> tuple[pd.DataFrame, Schema]:
    keep = {schema.group_column, schema.target}
    identifiers = [c for c in schema.identifier_columns if c in raw.columns and c not in keep]
    if schema.name == "diabetes130":
        # before the identifiers go: prior_encounters orders a patient's encounters by encounter_id
        return clean_diabetes130(raw).drop(columns=identifiers), schema
    if schema.name == "generic":
        warn_absent_columns(raw, schema, path=path, console=_stderr)
    raw = raw.drop(columns=identifiers)
    if schema.name == "johns":
        return clean_johns(raw), schema
    if schema.name == "generic":
        raw = drop_identifier_columns(raw, schema, path=path, console=_stderr)
        return raw, infer_column_kinds(raw, schema, path=path, console=_stderr, decimal=schema.decimal or ".")
    return raw, schema


def parse_numeric(values: pd.Series, *, column: str, path: Path | str, decimal: str = ".") -> pd.Series:
    """Numbers or missing; anything else is an error naming the values (never quietly made missing or the mean)."""
    text = values.astype("object")
    missing = text.isna() | text.astype(str).str.strip().isin(NUMERIC_MISSING)
    present = text.where(~missing)
    if decimal == ",":
        present = present.astype("object").where(missing, present.astype(str).str.replace(",", ".", regex=False))
    parsed = pd.to_numeric(present, errors="coerce").astype(np.float64)
    bad = (parsed.isna() | np.isinf(parsed)) & ~missing
    if bad.any():
        raise DataFileError(numeric_error(text, bad, column=column, path=path, decimal=decimal))
    return parsed


def clean_categorical(values: pd.Series) -> pd.Series:
    text = values.astype("object").where(values.notna(), MISSING).astype(str).str.strip()
    return text.where(text != "", MISSING).astype("object")


def _group(raw: pd.DataFrame, schema: Schema) -> pd.Series:
    if schema.group_column is None:
        # Without a patient column each row is its own patient.
        return pd.Series([f"row{i}" for i in raw.index], index=raw.index, dtype="object")
    groups = raw[schema.group_column].astype("object")
    fallback = pd.Series([f"row{i}" for i in raw.index], index=raw.index, dtype="object")
    return groups.where(groups.notna(), fallback).astype(str).str.strip().astype("object")


def make_label(values: pd.Series, schema: Schema, *, path: Path | str) -> pd.Series:
    text = values.astype("object")
    if text.isna().any():
        row = text.index[int(text.isna().to_numpy().argmax())]
        raise TargetError(
            f"data file {path}: target column {schema.target!r} is empty on {int(text.isna().sum())} row(s), "
            f"first at data row {int(row) + 1}; fill or remove those rows"
        )
    stripped = text.astype(str).str.strip()
    positive = stripped.isin(schema.positive_values)
    if not schema.other_values_negative:
        undeclared = ~positive & ~stripped.isin(schema.negative_values)
        if undeclared.any():
            counts = stripped[undeclared].value_counts()
            shown = ", ".join(f"{value!r} ({int(n)} row{'s' if n > 1 else ''})" for value, n in counts.head(10).items())
            raise TargetError(
                f"data file {path}: target column {schema.target!r} holds value(s) that are neither positive "
                f"{list(schema.positive_values)} nor negative {list(schema.negative_values)}: {shown}; add them to "
                "`positive_values` or `negative_values` in the schema, remove those rows, or set "
                "`other_values_negative: true` if every other value really means label 0"
            )
    label = positive.astype(np.int64)
    if label.nunique() < 2:
        seen = ", ".join(sorted(stripped.unique())[:10])
        raise TargetError(
            f"data file {path}: target column {schema.target!r} has a single class after mapping "
            f"(positive values {list(schema.positive_values)}, values seen: {seen}); a model needs both classes"
        )
    return label

"""Any CSV described by a schema file (JSON or YAML).

A schema file names the target, the values that mean label 1, the patient column and the columns to drop;
``categorical`` and ``numeric`` are optional. Columns not listed are inferred from the data and the decision is
printed to stderr, so a user sees what the model will be trained on.

Personal identifiers never become features: a column whose name looks like a name, an id, a date or a contact
detail is refused when the schema lists it as a feature, and dropped with a warning when it is merely present
(the group column is exempt: it only keeps a patient's rows together).
"""

from __future__ import annotations

import difflib
import json
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import pandas as pd
import yaml
from rich.console import Console
from rich.table import Table

from medheaven.data.schemas import GROUP, LABEL, Schema, looks_like_identifier
from medheaven.errors import DataFileError, SchemaError


class _TextYamlLoader(yaml.SafeLoader):
    """YAML 1.1 reads yes/no/on/off as booleans; target values are compared as text, so keep them as written."""


_TextYamlLoader.yaml_implicit_resolvers = {
    first: [(tag, regex) for tag, regex in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}

COMMA_DECIMAL = re.compile(r"^[+-]?\d+,\d+$")

# Integer-valued columns with few distinct values are usually codes (ward, status), not quantities.
MAX_CODE_LEVELS = 10


def read_schema_file(path: Path) -> Schema:
    if not path.is_file():
        raise SchemaError(f"schema file {path} does not exist; pass --schema-file with a JSON or YAML schema")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            # _TextYamlLoader is a SafeLoader minus booleans: it builds no arbitrary objects.
            data: Any = yaml.load(text, Loader=_TextYamlLoader)  # noqa: S506
        else:
            data = json.loads(text)
    except (yaml.YAMLError, json.JSONDecodeError) as exc:
        raise SchemaError(f"schema file {path} is not valid {path.suffix.lstrip('.').upper()}: {exc}") from exc
    try:
        schema = Schema.from_dict({**data, "name": "generic"} if isinstance(data, dict) else data)
    except SchemaError as exc:
        raise SchemaError(f"schema file {path}: {exc}") from exc
    refuse_identifier_features(schema, source=str(path))
    return schema


def refuse_identifier_features(schema: Schema, *, source: str) -> None:
    for column in schema.feature_columns:
        if column in (GROUP, LABEL):
            raise SchemaError(f"{source}: feature column {column!r} clashes with a reserved column name; rename it")
        if column != schema.group_column and looks_like_identifier(column):
            raise SchemaError(
                f"{source}: column {column!r} looks like a personal identifier or a date and cannot be a feature; "
                "remove it from the schema (or rename the column if it is not one)"
            )


def drop_identifier_columns(raw: pd.DataFrame, schema: Schema, *, path: Path, console: Console) -> pd.DataFrame:
    declared = {schema.target, schema.group_column, *schema.feature_columns}
    suspects = [c for c in raw.columns if c not in declared and looks_like_identifier(c)]
    if suspects:
        console.print(
            f"[yellow]warning:[/yellow] {path}: dropping column(s) that look like identifiers or dates: "
            + ", ".join(suspects)
        )
    return raw.drop(columns=suspects)


def infer_column_kinds(
    raw: pd.DataFrame, schema: Schema, *, path: Path, console: Console, decimal: str = "."
) -> Schema:
    """Fill in the feature columns the schema file left out, and print what was decided."""
    if schema.categorical and schema.numeric:
        return schema
    taken = {
        schema.target,
        schema.group_column,
        *schema.feature_columns,
        *schema.drop_columns,
        *schema.identifier_columns,
    }
    categorical, numeric = list(schema.categorical), list(schema.numeric)
    inferred: list[tuple[str, str]] = []
    for column in raw.columns:
        if column in taken:
            continue
        kind = _infer_kind(raw[column], column=column, path=path, decimal=decimal)
        (numeric if kind == "numeric" else categorical).append(column)
        inferred.append((column, kind))
    _print_inferred(inferred, path=path, console=console)
    resolved = replace(schema, categorical=tuple(categorical), numeric=tuple(numeric))
    refuse_identifier_features(resolved, source=str(path))
    return resolved


#: A column whose present values are at least this share numbers is a quantity with some bad cells, not a code.
MOSTLY_NUMERIC = 0.8


def _infer_kind(values: pd.Series, *, column: str, path: Path, decimal: str = ".") -> str:
    present = values.dropna().astype(str).str.strip()
    present = present[present != ""]
    if present.empty:
        return "categorical"
    candidates = present.str.replace(",", ".", regex=False) if decimal == "," else present
    parsed = pd.to_numeric(candidates, errors="coerce")
    if parsed.isna().any():
        numbers = parsed.notna()
        if numbers.mean() >= MOSTLY_NUMERIC and present[numbers].nunique() > MAX_CODE_LEVELS:
            # Calling it categorical would give every number its own level here while another hospital, whose
            # cells all parse, reads it as numeric: an error now is better than imputation or a layout clash later.
            raise DataFileError(
                numeric_error(present, ~numbers, column=column, path=path, decimal=decimal).replace(
                    "must be numeric", "looks numeric (most cells are numbers)"
                )
                + "; or list it under `numeric` once fixed"
            )
        return "categorical"
    if present.nunique() <= MAX_CODE_LEVELS:
        return "categorical"
    return "numeric"


def numeric_error(text: pd.Series, bad: pd.Series, *, column: str, path: Path | str, decimal: str) -> str:
    row = bad.index[int(bad.to_numpy().argmax())]
    counts = text[bad].astype(str).str.strip().value_counts()
    shown = ", ".join(f"{value!r} ({int(n)} row{'s' if n > 1 else ''})" for value, n in counts.head(8).items())
    more = f" and {len(counts) - 8} other value(s)" if len(counts) > 8 else ""
    fixes = ["correct or blank those cells (a blank or '?' cell is missing)"]
    if decimal == "." and any(COMMA_DECIMAL.fullmatch(str(v)) for v in counts.index):
        fixes.insert(0, "if ',' is this file's decimal mark, set `decimal: ','` in the schema")
    fixes.append(f"or list {column!r} under `categorical` in the schema if it is not a quantity")
    return (
        f"data file {path}: column {column!r} must be numeric but holds {shown}{more} "
        f"(first at data row {int(row) + 1}, line {int(row) + 2}; {int(bad.sum())} row(s) in all); "
        f"MedHeaven never turns such values into missing or the mean: {'; '.join(fixes)}"
    )


def warn_absent_columns(raw: pd.DataFrame, schema: Schema, *, path: Path, console: Console) -> None:
    """A listed column the file does not have is most often a misspelling; the real column would then be kept."""
    for key, listed in (("drop_columns", schema.drop_columns), ("identifier_columns", schema.identifier_columns)):
        for column in listed:
            if column in raw.columns:
                continue
            close = difflib.get_close_matches(column, [str(c) for c in raw.columns], n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            console.print(f"[yellow]warning:[/yellow] {path}: {key} lists {column!r}, which this file lacks{hint}")


def _print_inferred(inferred: list[tuple[str, str]], *, path: Path, console: Console) -> None:
    if not inferred:
        return
    table = Table(title=f"column kinds inferred from {path.name}", title_justify="left")
    table.add_column("column")
    table.add_column("kind")
    for column, kind in inferred:
        table.add_row(column, kind)
    console.print(table)

"""Any CSV described by a schema file (JSON or YAML).

A schema file names the target, the values that mean label 1, the patient column and the columns to drop;
``categorical`` and ``numeric`` are optional. Columns not listed are inferred from the data and the decision is
printed to stderr, so a user sees what the model will be trained on.

Personal identifiers never become features: a column whose name looks like a name, an id, a date or a contact
detail is refused when the schema lists it as a feature, and dropped with a warning when it is merely present
(the group column is exempt: it only keeps a patient's rows together).
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pandas as pd
import yaml
from rich.console import Console
from rich.table import Table

from medheaven.data.schemas import GROUP, LABEL, Schema, looks_like_identifier
from medheaven.errors import SchemaError


class _TextYamlLoader(yaml.SafeLoader):
    """YAML 1.1 reads yes/no/on/off as booleans; target values are compared as text, so keep them as written."""


_TextYamlLoader.yaml_implicit_resolvers = {
    first: [(tag, regex) for tag, regex in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}

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


def infer_column_kinds(raw: pd.DataFrame, schema: Schema, *, path: Path, console: Console) -> Schema:
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
        kind = _infer_kind(raw[column])
        (numeric if kind == "numeric" else categorical).append(column)
        inferred.append((column, kind))
    _print_inferred(inferred, path=path, console=console)
    resolved = replace(schema, categorical=tuple(categorical), numeric=tuple(numeric))
    refuse_identifier_features(resolved, source=str(path))
    return resolved


def _infer_kind(values: pd.Series) -> str:
    present = values.dropna().astype(str).str.strip()
    present = present[present != ""]
    if present.empty:
        return "categorical"
    parsed = pd.to_numeric(present, errors="coerce")
    if parsed.isna().any() or present.nunique() <= MAX_CODE_LEVELS:
        return "categorical"
    return "numeric"


def _print_inferred(inferred: list[tuple[str, str]], *, path: Path, console: Console) -> None:
    if not inferred:
        return
    table = Table(title=f"column kinds inferred from {path.name}", title_justify="left")
    table.add_column("column")
    table.add_column("kind")
    for column, kind in inferred:
        table.add_row(column, kind)
    console.print(table)

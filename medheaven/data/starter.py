"""``medheaven data schema --from FILE``: a starter schema file, written from a CSV's header and values, for a person
to read and edit (every guess is marked in a comment). It never decides silently: the file it writes is the
decision, and ``read_schema_file`` checks it like any other."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from medheaven.data.generic import MAX_CODE_LEVELS, MOSTLY_NUMERIC
from medheaven.data.loading import read_raw_csv, sniff_decimal
from medheaven.data.schemas import looks_like_identifier
from medheaven.errors import ConfigurationError, SchemaError
from medheaven.private_files import write_public_file

#: Column names that usually hold the outcome, most specific first.
TARGET_NAMES = ("target", "label", "outcome", "diagnosis", "readmitted", "readmission", "class", "y")
#: Values that usually mean the positive class of a two-valued target.
POSITIVE_WORDS = frozenset({"1", "yes", "y", "true", "positive", "malignant", "<30", "readmitted"})


def _kind(values: pd.Series, decimal: str) -> str:
    present = values.dropna().astype(str).str.strip()
    present = present[present != ""]
    if present.empty:
        return "categorical"
    parsed = pd.to_numeric(present.str.replace(",", ".", regex=False) if decimal == "," else present, errors="coerce")
    share = float(parsed.notna().mean())
    numeric = share == 1.0 or (share >= MOSTLY_NUMERIC and present[parsed.notna()].nunique() > MAX_CODE_LEVELS)
    return "numeric" if numeric and present.nunique() > MAX_CODE_LEVELS else "categorical"


def _guess_target(raw: pd.DataFrame) -> str:
    lowered = {str(c).lower(): str(c) for c in raw.columns}
    for name in TARGET_NAMES:
        if name in lowered:
            return lowered[name]
    return str(raw.columns[-1])


def _guess_group(raw: pd.DataFrame) -> str | None:
    for column in raw.columns:
        words = str(column).lower().replace("-", "_")
        if words in ("patient_id", "patient", "patient_nbr", "mrn", "subject_id", "person_id"):
            return str(column)
    return None


def starter_schema(path: Path, *, target: str | None = None) -> str:
    """The text of a YAML schema for ``path``; every list is JSON flow style (valid YAML, quoting exact)."""
    raw = read_raw_csv(path)
    delimiter = str(raw.attrs.get("delimiter", ","))
    decimal = sniff_decimal(raw, delimiter)
    chosen = target or _guess_target(raw)
    if chosen not in raw.columns:
        raise SchemaError(f"--target {chosen!r} is not a column of {path}; columns: {', '.join(map(str, raw.columns))}")
    counts = raw[chosen].dropna().astype(str).str.strip().value_counts()
    positives = [v for v in counts.index if v.lower() in POSITIVE_WORDS] or list(counts.index[-1:])
    negatives = [v for v in counts.index if v not in positives]
    group = _guess_group(raw)
    identifiers = [str(c) for c in raw.columns if c not in (chosen, group) and looks_like_identifier(str(c))]
    features = [str(c) for c in raw.columns if c not in (chosen, group, *identifiers)]
    kinds = {c: _kind(raw[c], decimal) for c in features}
    levels = ", ".join(f"{v!r} ({int(n)})" for v, n in counts.head(12).items())

    def flow(values: list[str]) -> str:
        return json.dumps(values, ensure_ascii=False)

    lines = [
        f"# Starter schema for {path.name}, written by `medheaven data schema`: check every line before use.",
        "# Reference: docs/schema.md. Unknown keys are refused, so a typo cannot be silently ignored.",
        f"# target: GUESSED; values seen: {levels}{' ...' if len(counts) > 12 else ''}",
        f"target: {json.dumps(chosen)}",
        "# positive_values mean label 1, negative_values label 0; any other value is an error",
        "# (or replace negative_values by `other_values_negative: true`). GUESSED: check the positive class.",
        f"positive_values: {flow(positives)}",
        f"negative_values: {flow(negatives)}",
        "# the patient column keeps a patient's rows together; it is never a feature (null: each row a patient)",
        f"group_column: {json.dumps(group)}",
        "# names, ids, dates and contact details: dropped before anything else",
        f"identifier_columns: {flow(identifiers)}",
        "# other columns that must not be features",
        "drop_columns: []",
        "# features, as read from this file's values (text, or fewer than"
        f" {MAX_CODE_LEVELS + 1} distinct numbers: categorical)",
        f"categorical: {flow([c for c in features if kinds[c] == 'categorical'])}",
        f"numeric: {flow([c for c in features if kinds[c] == 'numeric'])}",
        "# CSV dialect, as sniffed from this file",
        f"delimiter: {json.dumps(delimiter)}",
        f"decimal: {json.dumps(decimal)}",
    ]
    return "\n".join(lines) + "\n"


def write_starter_schema(path: Path, out: Path, *, target: str | None = None, force: bool = False) -> str:
    if out.suffix.lower() not in (".yaml", ".yml"):
        raise ConfigurationError(f"--out {out}: the starter schema is YAML; name it *.yaml")
    text = starter_schema(path, target=target)
    # link-safe and whole-or-nothing; an existing schema (it may hold someone's edits) needs --force
    write_public_file(out, text.encode("utf-8"), force=force)
    return text

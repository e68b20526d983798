"""What a data file looks like: its target, its patient column, its features and the columns that must never be
features.

A :class:`Schema` is pure description; reading and cleaning live in :mod:`medheaven.data.loading`. The built-in
schemas are in :mod:`medheaven.data.diabetes130` and :mod:`medheaven.data.johns`; user CSVs are described by a
schema file (:mod:`medheaven.data.generic`).
"""

from __future__ import annotations

import difflib
import math
import re
from dataclasses import asdict, dataclass
from typing import Any

from medheaven.errors import SchemaError

SCHEMA_NAMES: tuple[str, ...] = ("diabetes130", "johns", "generic")
# "prepared" reads the cleaned files that `medheaven data split` writes; it is internal, not a user-facing choice.
PREPARED = "prepared"
ALL_SCHEMA_NAMES: tuple[str, ...] = (*SCHEMA_NAMES, PREPARED)

GROUP = "group"
LABEL = "label"
MISSING = "missing"
OTHER = "other"

# Name fragments that mark a column as a personal identifier or a date. Matched against the column name's words
# (split on non-letters and camelCase) and against its ending, so "patient_id", "doctorName", "Admission_date" and
# "lastname" are caught but "thyroid" or "fluid" are not.
IDENTIFIER_WORDS = frozenset(
    {
        "name",
        "initial",
        "initials",
        "id",
        "date",
        "ssn",
        "mrn",
        "phone",
        "email",
        "address",
        "dob",
        "zip",
        "zipcode",
    }
)
IDENTIFIER_SUFFIXES = ("_id", "name", "date", "initial", "initials", "email", "phone", "address")


#: The delimiters the CSV sniffer chooses from (and the only ones a schema may name).
DELIMITERS = (",", ";", "\t", "|")
DECIMAL_MARKS = (".", ",")


@dataclass(frozen=True)
class Schema:
    """What a data file looks like; every key of a schema file is a field here (see docs/schema.md).

    Labels are never guessed: a target value is 1 when it is in ``positive_values``, 0 when it is in
    ``negative_values`` (or, only when ``other_values_negative`` says so explicitly, when it is anything else), and
    any other value is an error naming the file, the value and how often it occurs.
    """

    name: str
    target: str
    positive_values: tuple[str, ...]
    group_column: str | None
    categorical: tuple[str, ...]
    numeric: tuple[str, ...]
    identifier_columns: tuple[str, ...]
    drop_columns: tuple[str, ...]
    negative_values: tuple[str, ...] = ()
    other_values_negative: bool = False
    delimiter: str | None = None  # None: sniffed from the file
    decimal: str | None = None  # None: sniffed from the file's numeric-looking cells
    max_abs_feature: float | None = None  # None: the run's setting (MEDHEAVEN_MAX_ABS_FEATURE / --max-abs-feature)

    @property
    def feature_columns(self) -> tuple[str, ...]:
        return (*self.numeric, *self.categorical)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        return {key: list(value) if isinstance(value, tuple) else value for key, value in data.items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Schema:
        if not isinstance(data, dict):
            raise SchemaError(f"a schema must be a mapping, got {type(data).__name__}")
        refuse_unknown_keys(data, SCHEMA_KEYS, what="schema")
        target = data.get("target")
        if not isinstance(target, str) or not target:
            raise SchemaError("schema: 'target' (the name of the target column) is required")
        positives = _string_tuple(data, "positive_values")
        if not positives:
            raise SchemaError(f"schema: 'positive_values' must list the values of {target!r} that mean label 1")
        negatives = _string_tuple(data, "negative_values")
        others = _flag(data, "other_values_negative")
        if not negatives and not others:
            raise SchemaError(
                f"schema: say which values of {target!r} mean label 0: list them under 'negative_values', or set "
                "'other_values_negative: true' to make every value not in 'positive_values' a negative"
            )
        overlap = sorted(set(positives) & set(negatives))
        if overlap:
            raise SchemaError(f"schema: value(s) {overlap} are listed as both positive and negative")
        group = data.get("group_column")
        if group is not None and not isinstance(group, str):
            raise SchemaError(f"schema: 'group_column' must be a column name or null, got {group!r}")
        return cls(
            name=str(data.get("name", "generic")),
            target=target,
            positive_values=positives,
            group_column=group,
            categorical=_string_tuple(data, "categorical"),
            numeric=_string_tuple(data, "numeric"),
            identifier_columns=_string_tuple(data, "identifier_columns"),
            drop_columns=_string_tuple(data, "drop_columns"),
            negative_values=negatives,
            other_values_negative=others,
            delimiter=_choice(data, "delimiter", DELIMITERS),
            decimal=_choice(data, "decimal", DECIMAL_MARKS),
            max_abs_feature=_positive_number(data, "max_abs_feature"),
        )


#: Every key a schema file may hold; anything else is refused with the nearest of these.
SCHEMA_KEYS: tuple[str, ...] = tuple(Schema.__dataclass_fields__)


def refuse_unknown_keys(data: dict[str, Any], known: tuple[str, ...], *, what: str) -> None:
    """A misspelled key must not be ignored (a misspelled ``drop_columns`` would keep a column as a feature)."""
    for key in data:
        if key in known:
            continue
        close = difflib.get_close_matches(str(key), known, n=1, cutoff=0.6)
        hint = f"did you mean `{close[0]}`? " if close else ""
        raise SchemaError(f"{what}: unknown key `{key}`; {hint}valid keys: {', '.join(known)}")


def _choice(data: dict[str, Any], key: str, allowed: tuple[str, ...]) -> str | None:
    value = data.get(key)
    if value is None:
        return None
    if value == "\\t":  # a literal backslash-t, as people type a tab in YAML or JSON without escapes
        value = "\t"
    if value not in allowed:
        shown = ", ".join(repr(a) for a in allowed)
        raise SchemaError(f"schema: {key!r} must be one of {shown} (or left out to sniff it), got {value!r}")
    return str(value)


def _flag(data: dict[str, Any], key: str) -> bool:
    value = data.get(key, False)
    # schema YAML is read without YAML 1.1 booleans (so a target value "yes" stays text): accept true/false as text
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    if not isinstance(value, bool):
        raise SchemaError(f"schema: {key!r} must be true or false, got {value!r}")
    return value


def _positive_number(data: dict[str, Any], key: str) -> float | None:
    value = data.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
        raise SchemaError(f"schema: {key!r} must be a positive number, got {value!r}")
    return float(value)


def _string_tuple(data: dict[str, Any], key: str) -> tuple[str, ...]:
    value = data.get(key)
    if value is None:
        return ()
    if isinstance(value, str | int) and not isinstance(value, bool):
        # A scalar is a common slip for a one-element list ("positive_values: 1").
        return (str(value),)
    if not isinstance(value, list | tuple) or not all(isinstance(v, str | int) for v in value):
        raise SchemaError(f"schema: {key!r} must be a list of column names or values, got {value!r}")
    return tuple(str(v).strip() for v in value)


def _name_words(column: str) -> list[str]:
    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1 \2", column)
    return [word for word in re.split(r"[^A-Za-z]+", spaced.lower()) if word]


def looks_like_identifier(column: str) -> bool:
    """True when the column name suggests a personal identifier or a date (never a feature)."""
    lowered = column.strip().lower()
    if lowered in IDENTIFIER_WORDS:
        return True
    return any(word in IDENTIFIER_WORDS for word in _name_words(column)) or lowered.endswith(IDENTIFIER_SUFFIXES)

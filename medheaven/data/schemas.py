"""What a data file looks like: its target, its patient column, its features and the columns that must never be
features.

A :class:`Schema` is pure description; reading and cleaning live in :mod:`medheaven.data.loading`. The built-in
schemas are in :mod:`medheaven.data.diabetes130` and :mod:`medheaven.data.johns`; user CSVs are described by a
schema file (:mod:`medheaven.data.generic`).
"""

from __future__ import annotations

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


@dataclass(frozen=True)
class Schema:
    name: str
    target: str
    positive_values: tuple[str, ...]
    group_column: str | None
    categorical: tuple[str, ...]
    numeric: tuple[str, ...]
    identifier_columns: tuple[str, ...]
    drop_columns: tuple[str, ...]

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
        target = data.get("target")
        if not isinstance(target, str) or not target:
            raise SchemaError("schema: 'target' (the name of the target column) is required")
        positives = _string_tuple(data, "positive_values")
        if not positives:
            raise SchemaError(f"schema: 'positive_values' must list the values of {target!r} that mean label 1")
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
        )


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

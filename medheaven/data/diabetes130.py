"""The UCI "Diabetes 130-US hospitals 1999-2008" schema and its cleaning (Strack et al., 2014).

Cleaning follows the literature on this file:

* ``?`` is missing; ``None`` in ``max_glu_serum``/``A1Cresult`` means "test not taken" and is a real level.
* ``encounter_id`` is an identifier; ``weight`` (97% missing) and ``payer_code`` (40% missing, administrative) are
  dropped, as are ``examide`` and ``citoglipton``, which hold one value in the whole file. Constant columns are
  fixed here rather than detected per file: every hospital must end up with the same columns.
* Encounters discharged as expired or to hospice (``discharge_disposition_id`` 11, 13, 14, 19, 20, 21) cannot be
  readmitted and are removed, so they do not teach the model that dying prevents readmission.
* ``age`` brackets such as ``[70-80)`` become their midpoint (75.0), so the model sees the order of age groups.
* ``diag_1..3`` ICD-9 codes are grouped into the nine chapters used by Strack et al. (plus ``missing``).
* ``prior_encounters`` (added): how many of the patient's encounters in the same file come before this one, in
  ``encounter_id`` order (the ids grow with time). It is known at discharge and is computed by each hospital on its
  own rows, so a federation needs no pooling for it; it counts removed (expired/hospice) encounters too, since they
  were visits. Later encounters are never counted: that would tell the model a readmission happened.
* ``patient_nbr`` groups a patient's encounters; it is never a feature.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

from medheaven.data.schemas import MISSING, Schema
from medheaven.errors import SchemaError

TARGETS = ("30d", "any")
EXCLUDED_DISCHARGE = frozenset({"11", "13", "14", "19", "20", "21"})
DIAGNOSIS_COLUMNS = ("diag_1", "diag_2", "diag_3")

MEDICATIONS = (
    "metformin",
    "repaglinide",
    "nateglinide",
    "chlorpropamide",
    "glimepiride",
    "acetohexamide",
    "glipizide",
    "glyburide",
    "tolbutamide",
    "pioglitazone",
    "rosiglitazone",
    "acarbose",
    "miglitol",
    "troglitazone",
    "tolazamide",
    "examide",
    "citoglipton",
    "insulin",
    "glyburide-metformin",
    "glipizide-metformin",
    "glimepiride-pioglitazone",
    "metformin-rosiglitazone",
    "metformin-pioglitazone",
)
CONSTANT_COLUMNS = ("examide", "citoglipton")

NUMERIC = (
    "time_in_hospital",
    "num_lab_procedures",
    "num_procedures",
    "num_medications",
    "number_outpatient",
    "number_emergency",
    "number_inpatient",
    "number_diagnoses",
    "age",
    "prior_encounters",
)
#: The derived feature: encounters of the same patient earlier in the file (see the module docstring).
PRIOR_ENCOUNTERS = "prior_encounters"
CATEGORICAL = (
    "race",
    "gender",
    "admission_type_id",
    "discharge_disposition_id",
    "admission_source_id",
    "medical_specialty",
    *DIAGNOSIS_COLUMNS,
    "max_glu_serum",
    "A1Cresult",
    *(m for m in MEDICATIONS if m not in CONSTANT_COLUMNS),
    "change",
    "diabetesMed",
)

# ICD-9 chapters as (first, last) integer code ranges plus single codes, in Strack et al.'s grouping.
ICD9_GROUPS: tuple[tuple[str, tuple[tuple[int, int], ...]], ...] = (
    ("circulatory", ((390, 459), (785, 785))),
    ("respiratory", ((460, 519), (786, 786))),
    ("digestive", ((520, 579), (787, 787))),
    ("diabetes", ((250, 250),)),
    ("injury", ((800, 999),)),
    ("musculoskeletal", ((710, 739),)),
    ("genitourinary", ((580, 629), (788, 788))),
    ("neoplasms", ((140, 239),)),
)
ICD9_LEVELS = (*(name for name, _ in ICD9_GROUPS), "other", MISSING)

_AGE_BRACKET = re.compile(r"^\[(\d+)-(\d+)\)$")


def diabetes130_schema(target: str = "30d") -> Schema:
    """``target="30d"``: ``<30`` vs the rest (the clinical task); ``"any"``: ``<30`` or ``>30`` vs ``NO``."""
    if target not in TARGETS:
        raise SchemaError(f"diabetes130: target must be one of {', '.join(TARGETS)}, got {target!r}")
    positives = ("<30",) if target == "30d" else ("<30", ">30")
    negatives = tuple(v for v in ("<30", ">30", "NO") if v not in positives)
    return Schema(
        name="diabetes130",
        target="readmitted",
        positive_values=positives,
        group_column="patient_nbr",
        categorical=CATEGORICAL,
        numeric=NUMERIC,
        identifier_columns=("encounter_id", "patient_nbr"),
        drop_columns=("weight", "payer_code", *CONSTANT_COLUMNS),
        negative_values=negatives,
    )


def icd9_group(code: object) -> str:
    """The chapter of one ICD-9 code; V (supplementary) and E (external cause) codes are "other"."""
    if code is None or (isinstance(code, float) and np.isnan(code)):
        return MISSING
    text = str(code).strip()
    if not text or text == "?":
        return MISSING
    try:
        number = int(float(text))
    except ValueError:
        return "other"
    for name, ranges in ICD9_GROUPS:
        if any(first <= number <= last for first, last in ranges):
            return name
    return "other"


def age_midpoint(values: pd.Series) -> pd.Series:
    """``[70-80)`` -> ``75.0``; values that are not brackets pass through so numeric parsing can report them."""
    parts = values.astype("object").str.extract(_AGE_BRACKET)
    midpoint = (parts[0].astype(float) + parts[1].astype(float)) / 2.0
    return midpoint.astype("object").where(midpoint.notna(), values.astype("object"))


def prior_encounters(raw: pd.DataFrame) -> pd.Series:
    """Per row, the number of the same patient's rows with a smaller ``encounter_id`` (ties keep file order)."""
    for column in ("encounter_id", "patient_nbr"):
        if column not in raw.columns:
            raise SchemaError(
                f"diabetes130: the file has no {column!r} column, which {PRIOR_ENCOUNTERS!r} is computed from; "
                "use the original UCI file's columns, or the generic schema for a file of another layout"
            )
    ids = pd.to_numeric(raw["encounter_id"], errors="coerce")
    bad = ids.isna()
    if bad.any():
        examples = ", ".join(repr(v) for v in raw.loc[bad, "encounter_id"].head(3))
        raise SchemaError(
            f"diabetes130: {int(bad.sum())} encounter_id value(s) are not integers (e.g. {examples}); "
            f"{PRIOR_ENCOUNTERS!r} orders a patient's encounters by them: fix or remove those rows"
        )
    order = pd.DataFrame({"id": ids, "patient": raw["patient_nbr"].astype(str)}).sort_values("id", kind="stable")
    return order.groupby("patient", sort=False).cumcount().reindex(raw.index).astype(float)


def clean_diabetes130(raw: pd.DataFrame) -> pd.DataFrame:
    """Row filtering and column transforms on the raw file (still as strings); keeps the original row index.

    Needs ``encounter_id`` and ``patient_nbr`` (for ``prior_encounters``): run it before identifiers are dropped."""
    frame = raw.copy()
    frame[PRIOR_ENCOUNTERS] = prior_encounters(raw)
    if "discharge_disposition_id" in frame.columns:
        disposition = frame["discharge_disposition_id"].astype("object").str.strip()
        frame = frame.loc[~disposition.isin(EXCLUDED_DISCHARGE)].copy()
    if "age" in frame.columns:
        frame["age"] = age_midpoint(frame["age"])
    for column in DIAGNOSIS_COLUMNS:
        if column in frame.columns:
            frame[column] = frame[column].map(icd9_group).astype("object")
    return frame

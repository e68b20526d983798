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
* ``patient_nbr`` groups a patient's encounters; it is never a feature.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

from medheaven.data.distinct import distinct_codes, map_distinct, take_distinct
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
)
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
    codes, distinct = distinct_codes(values)  # ten brackets over 100,000 rows: parsed once each
    parts = distinct.str.extract(_AGE_BRACKET)
    midpoint = (parts[0].astype(float) + parts[1].astype(float)) / 2.0
    return take_distinct(midpoint.astype("object").where(midpoint.notna(), distinct), codes, values.index)


def _stripped(value: object) -> object:
    return value.strip() if isinstance(value, str) else value


def clean_diabetes130(raw: pd.DataFrame) -> pd.DataFrame:
    """Row filtering and column transforms on the raw file (still as strings); keeps the original row index."""
    frame = raw
    if "discharge_disposition_id" in frame.columns:
        disposition = map_distinct(frame["discharge_disposition_id"], _stripped)
        frame = frame.loc[~disposition.isin(EXCLUDED_DISCHARGE)].copy()
    else:
        frame = frame.copy()
    if "age" in frame.columns:
        frame["age"] = age_midpoint(frame["age"])
    for column in DIAGNOSIS_COLUMNS:
        if column in frame.columns:
            frame[column] = map_distinct(frame[column], icd9_group)
    return frame

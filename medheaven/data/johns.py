"""The schema of the original project's sample file ``johns_hospital_data.csv``.

The file is synthetic and its label carries no signal; it is kept as a schema and robustness case. Every column
that names or identifies a person, a doctor or the hospital, and every date, is an identifier and is dropped
before anything else. ``time_slot`` (an exact clock time of arrival) is dropped too: it is a quasi-identifier with
no clinical meaning. ``patient_id`` only keeps one patient's rows together.
"""

from __future__ import annotations

import pandas as pd

from medheaven.data.schemas import Schema

IDENTIFIERS = (
    "hospital_name",
    "Admission_date",
    "hospital_id",
    "patient_id",
    "patient_first_initial",
    "patient_last_name",
    "doctor_id",
    "doctor_name",
    "patient_checkin_date",
    "patient_checkout_date",
)
CATEGORICAL = (
    "hospital_ward",
    "patient_gender",
    "patient_race",
    "department_referral",
    "doctor_specialty",
    "patient_assigned_doctor",
    "patient_disease",
    "discharge_status",
)
NUMERIC = (
    "hospital_beds_available",
    "occupied_beds",
    "patient_age",
    "patient_sat_score",
    "patient_waittime",
    "patient_length_of_stay",
)


def johns_schema() -> Schema:
    return Schema(
        name="johns",
        target="readmission",
        positive_values=("1",),
        group_column="patient_id",
        categorical=CATEGORICAL,
        numeric=NUMERIC,
        identifier_columns=IDENTIFIERS,
        drop_columns=("time_slot",),
        negative_values=("0",),
    )


def clean_johns(raw: pd.DataFrame) -> pd.DataFrame:
    """Drop every ``*_id`` column, listed or not: a new export may add one, and ids are never features."""
    extra_ids = [c for c in raw.columns if c.lower().endswith("_id") and c != "patient_id"]
    return raw.drop(columns=extra_ids)

"""A synthetic stand-in for the UCI diabetes file, with a known, planted signal.

Columns, names and value vocabularies are those of ``diabetic_data.csv`` (``?`` for missing, ICD-9 codes as text,
age brackets such as ``[70-80)``, ``readmitted`` in ``NO``/``>30``/``<30``), so the diabetes130 schema loads it
unchanged. Patients have several encounters (``patient_nbr`` repeats), and a per-patient frailty ``z ~ N(0, 1)``
raises prior inpatient and emergency visits, so a patient's encounters are correlated, as in the real file.

The planted signal. For each encounter::

    logit P(readmitted = "<30") = -3.6
        + 0.55 * number_inpatient
        + 0.40 * number_emergency
        + 0.08 * time_in_hospital
        + 0.02 * num_medications
        + 0.03 * (age_midpoint - 65)
        + 0.60 * [diag_1 is circulatory (390-459, 785) or respiratory (460-519, 786)]

The intercept gives about 11% positives. Negatives are ``>30`` with probability 0.39, else ``NO``. Encounters
discharged as expired or to hospice (dispositions 11, 13, 14, 19, 20, 21) are never readmitted, as in reality;
the loader removes them. Everything else is noise drawn from marginals close to the real file's. The same seed
gives the same frame.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from medheaven.data.diabetes130 import EXCLUDED_DISCHARGE, MEDICATIONS

INTERCEPT = -3.6
COEFFICIENTS = {
    "number_inpatient": 0.55,
    "number_emergency": 0.40,
    "time_in_hospital": 0.08,
    "num_medications": 0.02,
}
AGE_COEFFICIENT = 0.03
AGE_CENTRE = 65.0
CARDIO_RESPIRATORY_COEFFICIENT = 0.60

AGE_BRACKETS = tuple(f"[{lo}-{lo + 10})" for lo in range(0, 100, 10))
AGE_PROBS = (0.002, 0.007, 0.016, 0.037, 0.095, 0.17, 0.221, 0.256, 0.169, 0.027)

# ICD-9 codes per chapter, a few common ones each; "other" holds V (supplementary) and E (external) codes.
DIAGNOSIS_CODES: dict[str, tuple[str, ...]] = {
    "circulatory": ("428", "414", "410", "427", "434", "435", "440", "402", "785"),
    "respiratory": ("486", "491", "493", "496", "518", "786", "466"),
    "digestive": ("577", "574", "562", "558", "535", "787", "560"),
    "diabetes": ("250", "250.01", "250.02", "250.6", "250.8", "250.13", "250.83"),
    "injury": ("996", "820", "998", "824", "850", "959"),
    "musculoskeletal": ("715", "722", "730", "733", "724"),
    "genitourinary": ("599", "584", "590", "788", "585"),
    "neoplasms": ("174", "162", "153", "185", "202"),
    "other": ("276", "780", "682", "38", "295", "V57", "V45", "E888", "E909"),
}
DIAGNOSIS_PROBS = (0.30, 0.14, 0.09, 0.09, 0.07, 0.05, 0.05, 0.035, 0.175)

CHOICES: dict[str, tuple[tuple[str, ...], tuple[float, ...]]] = {
    "race": (
        ("Caucasian", "AfricanAmerican", "?", "Hispanic", "Other", "Asian"),
        (0.75, 0.19, 0.02, 0.02, 0.014, 0.006),
    ),
    "gender": (("Female", "Male"), (0.54, 0.46)),
    "admission_type_id": (
        ("1", "3", "2", "6", "5", "8", "7", "4"),
        (0.53, 0.185, 0.18, 0.052, 0.047, 0.003, 0.002, 0.001),
    ),
    "discharge_disposition_id": (
        ("1", "3", "6", "18", "2", "22", "11", "5", "25", "4", "7", "23", "13", "14"),
        (0.592, 0.137, 0.127, 0.036, 0.021, 0.02, 0.016, 0.012, 0.01, 0.008, 0.006, 0.004, 0.004, 0.007),
    ),
    "admission_source_id": (
        ("7", "1", "17", "4", "6", "2", "5", "3", "20", "9"),
        (0.565, 0.29, 0.067, 0.031, 0.022, 0.011, 0.008, 0.002, 0.002, 0.002),
    ),
    "medical_specialty": (
        (
            "?",
            "InternalMedicine",
            "Emergency/Trauma",
            "Family/GeneralPractice",
            "Cardiology",
            "Surgery-General",
            "Nephrology",
            "Orthopedics",
            "Radiologist",
            "Pulmonology",
            "Psychiatry",
        ),
        (0.49, 0.144, 0.074, 0.073, 0.053, 0.03, 0.016, 0.014, 0.011, 0.009, 0.086),
    ),
    "payer_code": (
        ("?", "MC", "HM", "SP", "BC", "MD", "CP", "UN"),
        (0.4, 0.32, 0.06, 0.05, 0.05, 0.035, 0.025, 0.06),
    ),
    "weight": (("?", "[75-100)", "[50-75)", "[100-125)"), (0.97, 0.013, 0.009, 0.008)),
    "max_glu_serum": (("None", "Norm", ">200", ">300"), (0.947, 0.026, 0.015, 0.012)),
    "A1Cresult": (("None", ">8", "Norm", ">7"), (0.833, 0.081, 0.049, 0.037)),
}

MEDICATION_USE = {
    "metformin": 0.2, "insulin": 0.53, "glipizide": 0.125, "glyburide": 0.105, "pioglitazone": 0.072,
    "rosiglitazone": 0.063, "glimepiride": 0.051, "repaglinide": 0.015, "nateglinide": 0.007, "acarbose": 0.003,
    "chlorpropamide": 0.001, "glyburide-metformin": 0.007, "tolazamide": 0.0004, "miglitol": 0.0004,
    "tolbutamide": 0.0002,
}  # fmt: skip


def generate_synthetic(n_rows: int = 20000, *, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    patient = _assign_patients(rng, n_rows)
    n_patients = int(patient.max()) + 1
    frailty = rng.normal(size=n_patients)[patient]
    columns: dict[str, object] = {
        "encounter_id": rng.permutation(np.arange(n_rows) * 7 + 100_000),
        "patient_nbr": 1_000_000 + patient * 13,
    }
    for name in ("race", "gender"):
        columns[name] = _choice(rng, name, n_patients)[patient]
    age_index = rng.choice(len(AGE_BRACKETS), size=n_patients, p=_normalised(AGE_PROBS))[patient]
    columns["age"] = np.asarray(AGE_BRACKETS)[age_index]
    for name in (
        "weight",
        "admission_type_id",
        "discharge_disposition_id",
        "admission_source_id",
        "payer_code",
    ):
        columns[name] = _choice(rng, name, n_rows)
    columns["medical_specialty"] = _choice(rng, "medical_specialty", n_rows)
    counts = _encounter_counts(rng, frailty)
    columns.update(counts)
    chapters = rng.choice(len(DIAGNOSIS_PROBS), size=(n_rows, 3), p=_normalised(DIAGNOSIS_PROBS))
    for slot, missing_rate in enumerate((0.0002, 0.0035, 0.014)):
        columns[f"diag_{slot + 1}"] = _diagnosis_codes(rng, chapters[:, slot], missing_rate)
    for name in ("max_glu_serum", "A1Cresult"):
        columns[name] = _choice(rng, name, n_rows)
    columns.update(_medications(rng, n_rows))
    age_mid = age_index * 10.0 + 5.0
    columns["readmitted"] = _readmitted(rng, counts, age_mid, chapters[:, 0], columns["discharge_disposition_id"])
    return pd.DataFrame(columns)[list(_column_order())]


def _column_order() -> tuple[str, ...]:
    head = (
        "encounter_id", "patient_nbr", "race", "gender", "age", "weight", "admission_type_id",
        "discharge_disposition_id", "admission_source_id", "time_in_hospital", "payer_code", "medical_specialty",
        "num_lab_procedures", "num_procedures", "num_medications", "number_outpatient", "number_emergency",
        "number_inpatient", "diag_1", "diag_2", "diag_3", "number_diagnoses", "max_glu_serum", "A1Cresult",
    )  # fmt: skip
    return (*head, *MEDICATIONS, "change", "diabetesMed", "readmitted")


def _normalised(probs: tuple[float, ...]) -> np.ndarray:
    p = np.asarray(probs, dtype=np.float64)
    return np.asarray(p / p.sum(), dtype=np.float64)


def _choice(rng: np.random.Generator, name: str, size: int) -> np.ndarray:
    values, probs = CHOICES[name]
    return np.asarray(values, dtype=object)[rng.choice(len(values), size=size, p=_normalised(probs))]


def _assign_patients(rng: np.random.Generator, n_rows: int) -> np.ndarray:
    """About 1.4 encounters per patient on average, a long tail of frequent patients, as in the real file."""
    n_patients = max(1, round(n_rows / 1.4))
    first = np.arange(min(n_patients, n_rows))
    weights = rng.lognormal(sigma=1.0, size=n_patients)
    repeat = rng.choice(n_patients, size=n_rows - first.size, p=weights / weights.sum())
    return rng.permutation(np.concatenate([first, repeat]))


def _encounter_counts(rng: np.random.Generator, frailty: np.ndarray) -> dict[str, np.ndarray]:
    n = frailty.size
    time_in_hospital = np.clip(1 + rng.poisson(3.4, n), 1, 14)
    medications = np.clip(np.rint(rng.normal(16 + 0.8 * (time_in_hospital - 4), 7)), 1, 81)
    return {
        "time_in_hospital": time_in_hospital.astype(np.int64),
        "num_lab_procedures": np.clip(np.rint(rng.normal(43, 19, n)), 1, 132).astype(np.int64),
        "num_procedures": np.clip(rng.poisson(1.3, n), 0, 6).astype(np.int64),
        "num_medications": medications.astype(np.int64),
        "number_outpatient": np.clip(rng.poisson(0.37, n), 0, 42).astype(np.int64),
        "number_emergency": np.clip(rng.poisson(np.exp(-1.9 + 0.5 * frailty)), 0, 76).astype(np.int64),
        "number_inpatient": np.clip(rng.poisson(np.exp(-0.9 + 0.6 * frailty)), 0, 21).astype(np.int64),
        "number_diagnoses": np.clip(np.rint(rng.normal(7.4, 1.9, n)), 1, 16).astype(np.int64),
    }


def _diagnosis_codes(rng: np.random.Generator, chapters: np.ndarray, missing_rate: float) -> np.ndarray:
    codes = np.empty(chapters.size, dtype=object)
    for index, pool in enumerate(DIAGNOSIS_CODES.values()):
        rows = np.flatnonzero(chapters == index)
        codes[rows] = np.asarray(pool, dtype=object)[rng.integers(0, len(pool), rows.size)]
    codes[rng.random(chapters.size) < missing_rate] = "?"
    return codes


def _medications(rng: np.random.Generator, n_rows: int) -> dict[str, np.ndarray]:
    doses = np.asarray(("Steady", "Up", "Down"), dtype=object)
    result: dict[str, np.ndarray] = {}
    any_used = np.zeros(n_rows, dtype=bool)
    any_changed = np.zeros(n_rows, dtype=bool)
    for name in MEDICATIONS:
        used = rng.random(n_rows) < MEDICATION_USE.get(name, 0.0)
        dose = doses[rng.choice(3, size=n_rows, p=[0.75, 0.13, 0.12])]
        result[name] = np.where(used, dose, "No").astype(object)
        any_used |= used
        any_changed |= used & (dose != "Steady")
    result["change"] = np.where(any_changed, "Ch", "No").astype(object)
    result["diabetesMed"] = np.where(any_used, "Yes", "No").astype(object)
    return result


def _readmitted(
    rng: np.random.Generator,
    counts: dict[str, np.ndarray],
    age_mid: np.ndarray,
    first_chapter: np.ndarray,
    disposition: object,
) -> np.ndarray:
    chapter_names = list(DIAGNOSIS_CODES)
    cardio_respiratory = np.isin(
        first_chapter, [chapter_names.index("circulatory"), chapter_names.index("respiratory")]
    )
    logit = INTERCEPT + AGE_COEFFICIENT * (age_mid - AGE_CENTRE) + CARDIO_RESPIRATORY_COEFFICIENT * cardio_respiratory
    for name, coefficient in COEFFICIENTS.items():
        logit = logit + coefficient * counts[name]
    positive = rng.random(age_mid.size) < 1.0 / (1.0 + np.exp(-logit))
    later = rng.random(age_mid.size) < 0.39
    outcome = np.where(positive, "<30", np.where(later, ">30", "NO")).astype(object)
    cannot_return = np.isin(np.asarray(disposition, dtype=object), list(EXCLUDED_DISCHARGE))
    outcome[cannot_return] = "NO"
    return outcome

"""A non-diabetes data set as a new user brings it: ids, names and dates, a string clinic with blanks, a string
target, a measurement above 1000; and the schema file that describes it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

SCHEMA_YAML = """\
target: diagnosis
positive_values: [Malignant]
negative_values: [Benign]
group_column: patient_id
categorical: [clinic]
numeric: [radius, texture, area]
"""


def tumour_frame(rows: int = 600, *, seed: int = 0, clinics: tuple[str, ...] = ("north", "south", "")) -> pd.DataFrame:
    """Rows of a breast-tumour-like table; the diagnosis depends on radius and texture, so a model can learn."""
    rng = np.random.default_rng(seed)
    radius = rng.normal(14.0, 3.5, rows).clip(6, 30)
    texture = rng.normal(19.0, 4.0, rows).clip(9, 40)
    area = (np.pi * radius**2 * rng.uniform(0.95, 1.05, rows)).round(1)  # up to ~2800: above the old bound
    risk = 1 / (1 + np.exp(-(0.9 * (radius - 15.0) + 0.3 * (texture - 19.0))))
    return pd.DataFrame(
        {
            "patient_id": [f"{seed}-{i}" for i in range(rows)],
            "patient_name": [f"Name {i}" for i in range(rows)],
            "admission_date": pd.date_range("2024-01-01", periods=rows, freq="h").strftime("%Y-%m-%d"),
            "clinic": rng.choice(list(clinics), rows),
            "radius": radius.round(2),
            "texture": texture.round(2),
            "area": area,
            "diagnosis": np.where(rng.random(rows) < risk, "Malignant", "Benign"),
        }
    )


def write_tumour_data(folder: Path, *, rows: int = 600, seed: int = 0) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    data, schema = folder / "tumours.csv", folder / "schema.yaml"
    tumour_frame(rows, seed=seed).to_csv(data, index=False)
    schema.write_text(SCHEMA_YAML, encoding="utf-8")
    return data, schema

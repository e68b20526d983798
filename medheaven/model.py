"""Keras model builders and the flat weight vector that the encryption layer works on.

Flat order (fixed, documented, the same on every hospital): ``model.weights`` in Keras order, i.e. layer by
layer from input to output, and within a Dense layer its kernel (shape ``(inputs, units)``) before its bias;
each array flattened in C (row-major) order. Shapes travel once, in ``model.json``; envelopes carry only the
vector length.

TensorFlow is imported inside functions on purpose: a prefork Celery parent must never import it before forking.
"""

from __future__ import annotations

import itertools
import logging
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from medheaven.errors import ConfigurationError
from medheaven.records import decode_record, encode_record

if TYPE_CHECKING:
    import keras

ModelKind = Literal["logreg", "mlp"]


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild the same architecture anywhere: no weights, no data."""

    n_features: int
    kind: ModelKind = "mlp"
    hidden: tuple[int, ...] = (64, 32)
    # dropout 0.3 with L2 1e-3: mean validation ROC-AUC 0.668 after 10 federated rounds by patient-level 3-fold
    # cross-validation on the diabetes file, against 0.667 for dropout 0.2 and 0.655 for dropout 0.1 with L2 1e-4
    # (benchmarks.recipe_cv, BENCHMARKS.md "Recipe"); one default for the demo, `run` and the baseline
    dropout: float = 0.3
    seed: int = 0
    l2: float = 1e-3
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.n_features < 1:
            raise ConfigurationError(f"model spec: n_features must be >= 1, got {self.n_features}")
        if self.kind not in ("logreg", "mlp"):
            raise ConfigurationError(f"model spec: kind must be 'logreg' or 'mlp', got {self.kind!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigurationError(f"model spec: dropout must be in [0, 1), got {self.dropout}")

    def to_dict(self) -> dict[str, Any]:
        return encode_record(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelSpec:
        # a key absent from a stored spec means what it meant when the spec was written: no hidden layer, no
        # dropout, no weight decay (the constructor's defaults are those of a new run)
        return decode_record(cls, {"hidden": (), "dropout": 0.0, "l2": 0.0, **data}, what="model spec")

    def layer_sizes(self) -> list[int]:
        widths = list(self.hidden) if self.kind == "mlp" else []
        return [self.n_features, *widths, 1]

    def weight_shapes(self) -> list[tuple[int, ...]]:
        """Shapes in flat order, computed without TensorFlow (the aggregator and planner use this)."""
        sizes = self.layer_sizes()
        shapes: list[tuple[int, ...]] = []
        for fan_in, fan_out in itertools.pairwise(sizes):
            shapes.extend([(fan_in, fan_out), (fan_out,)])
        return shapes

    def parameter_count(self) -> int:
        return int(sum(int(np.prod(s)) for s in self.weight_shapes()))


def _quiet_tensorflow() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    # one traced predict function per hospital model is expected when several hospitals share a process (the
    # embedded demo); TensorFlow's retracing warning would otherwise flood the operator's terminal
    logging.getLogger("tensorflow").setLevel(logging.ERROR)


def build_model(spec: ModelSpec) -> keras.Model:
    """Build the model with deterministic initial weights: the same spec gives the same weights everywhere."""
    _quiet_tensorflow()
    import keras

    regulariser = keras.regularizers.L2(spec.l2) if spec.l2 > 0 else None
    inputs = keras.Input(shape=(spec.n_features,), name="features")
    x = inputs
    sizes = spec.layer_sizes()
    for index, width in enumerate(sizes[1:-1]):
        x = keras.layers.Dense(
            width,
            activation="relu",
            kernel_initializer=keras.initializers.GlorotUniform(seed=spec.seed + index),
            kernel_regularizer=regulariser,
            name=f"dense_{index}",
        )(x)
        if spec.dropout > 0:
            x = keras.layers.Dropout(spec.dropout, seed=spec.seed + 1000 + index, name=f"dropout_{index}")(x)
    outputs = keras.layers.Dense(
        1,
        activation="sigmoid",
        kernel_initializer=keras.initializers.GlorotUniform(seed=spec.seed + 999),
        kernel_regularizer=regulariser,
        name="risk",
    )(x)
    return keras.Model(inputs, outputs, name=f"readmission_{spec.kind}")


#: Training steps Keras runs inside one compiled call (``steps_per_execution``). The readmission MLP's steps are
#: tiny (a 64 x 236 by 236 x 64 product), so one Python round trip per step was most of ``fit``'s time: fusing 64
#: steps halved an epoch on 40,000 rows (0.97 s -> 0.42 s, batch 64, 2 cores, idle machine); 32 ran as fast as 64
#: (0.71 s each under load 21) with half the unrolled graph to trace once per process. The same batches in the same
#: order are applied; only the dispatch changes. XLA (``jit_compile``) was measured too and was 5-10x slower here.
STEPS_PER_EXECUTION = 32


def compile_model(model: keras.Model, *, learning_rate: float, optimizer: str = "adam") -> None:
    _quiet_tensorflow()
    import keras

    if optimizer == "adam":
        opt: Any = keras.optimizers.Adam(learning_rate=learning_rate)
    elif optimizer == "sgd":
        opt = keras.optimizers.SGD(learning_rate=learning_rate)
    else:
        raise ConfigurationError(f"optimizer must be 'adam' or 'sgd', got {optimizer!r}")
    model.compile(optimizer=opt, loss="binary_crossentropy", steps_per_execution=STEPS_PER_EXECUTION)


def get_flat_weights(model: keras.Model) -> np.ndarray:
    """The weights as one float64 vector in the documented flat order."""
    arrays = [np.asarray(w, dtype=np.float64).ravel() for w in model.get_weights()]
    return np.concatenate(arrays) if arrays else np.zeros(0)


def set_flat_weights(model: keras.Model, flat: np.ndarray) -> None:
    shapes = [tuple(w.shape) for w in model.get_weights()]
    total = int(sum(int(np.prod(s)) for s in shapes))
    vector = np.asarray(flat)
    if vector.ndim != 1 or vector.size != total:
        raise ConfigurationError(
            f"flat weight vector has {vector.size} values but model {model.name!r} has {total} parameters"
        )
    arrays: list[np.ndarray] = []
    offset = 0
    for shape in shapes:
        size = int(np.prod(shape))
        arrays.append(vector[offset : offset + size].reshape(shape).astype(np.float32))
        offset += size
    model.set_weights(arrays)


def predict_risk(model: keras.Model, features: np.ndarray, *, batch_size: int = 4096) -> np.ndarray:
    """Scores in inference mode (dropout off). A direct call per batch instead of ``model.predict``: ``predict``
    traces a ``tf.function`` per model (about a second each on this machine, per hospital of the embedded demo) and
    sets up a data pipeline, for what is a few matrix products on a few thousand rows."""
    values = np.asarray(features, dtype=np.float32)
    parts = [
        np.asarray(model(values[start : start + batch_size], training=False), dtype=np.float64).ravel()
        for start in range(0, len(values), batch_size)
    ]
    return np.concatenate(parts) if parts else np.zeros(0)

"""DP-SGD for the project's Keras 3 (TensorFlow backend) models, with the patient as the privacy unit.

One step:
1. Poisson-sample patients: each patient independently with probability q (the sampling the RDP accountant assumes);
   the batch is every encounter of every sampled patient.
2. Per-example gradients of the per-encounter loss, vectorised with ``GradientTape.jacobian`` (pfor, no Python
   loop over examples), summed per patient with ``unsorted_segment_sum``: a patient's gradient is the gradient of
   the summed loss over that patient's encounters.
3. Each patient's gradient is clipped to L2 norm C over all trainable weights together. Adding or removing one
   patient therefore changes the summed gradient by at most C, whatever their number of encounters.
4. Gaussian noise N(0, (z*C)^2) on every coordinate of the sum; divide by the expected batch size q*N (a fixed
   denominator, so the sensitivity argument is not spoiled by a data-dependent batch size).
5. The L2 weight penalty's gradient (data-independent, free) is added and the hospital's own optimiser applies it.

Noise comes from NumPy's PCG64 seeded from ``os.urandom`` unless a seed is given (tests). Floating-point side
channels of Gaussian sampling (Mironov 2012) are not addressed; this is the usual DP-SGD practice.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from medheaven.errors import ConfigurationError

if TYPE_CHECKING:
    import keras


@dataclass(frozen=True)
class PatientIndex:
    """Encounter rows grouped by patient: ``codes[i]`` is the patient (0..n-1) of training row i."""

    codes: np.ndarray
    n_patients: int

    @classmethod
    def of(cls, groups: np.ndarray) -> PatientIndex:
        _, codes = np.unique(np.asarray(groups).astype(str), return_inverse=True)
        return cls(codes.astype(np.int64), int(codes.max()) + 1 if codes.size else 0)


def steps_per_round(epochs: int, sampling_rate: float) -> int:
    """One local 'epoch' is 1/q Poisson steps (each patient is seen once per epoch in expectation)."""
    return max(1, round(epochs / sampling_rate))


def sampling_rate(expected_batch_patients: int, n_patients: int) -> float:
    if n_patients < 1:
        raise ConfigurationError("dp: a hospital with no training patients cannot run DP-SGD")
    return min(1.0, expected_batch_patients / n_patients)


class DpSgd:
    """Patient-level DP-SGD on one Keras model; the model's compiled optimiser applies the privatised gradients."""

    def __init__(
        self, model: keras.Model, *, clip: float, noise_multiplier: float, sampling_rate: float, seed: int | None = None
    ) -> None:
        import tensorflow as tf

        if clip <= 0 or noise_multiplier < 0 or not 0 < sampling_rate <= 1:
            raise ConfigurationError(
                f"dp-sgd: need C > 0, z >= 0, 0 < q <= 1; got C={clip}, z={noise_multiplier}, q={sampling_rate}"
            )
        self.model = model
        self.clip = float(clip)
        self.noise_multiplier = float(noise_multiplier)
        self.sampling_rate = float(sampling_rate)
        entropy = seed if seed is not None else int.from_bytes(os.urandom(16), "big")
        self.rng = np.random.default_rng(entropy)
        features = int(model.inputs[0].shape[-1])
        self._clipped = tf.function(
            self._clipped_patient_gradients,
            input_signature=[
                tf.TensorSpec([None, features], tf.float32),
                tf.TensorSpec([None], tf.float32),
                tf.TensorSpec([None], tf.int32),
                tf.TensorSpec([], tf.int32),
            ],
            reduce_retracing=True,
        )

    # -- the privatised gradient ----------------------------------------------------------------------------
    def _clipped_patient_gradients(self, x: Any, y: Any, segments: Any, n_segments: Any) -> list[Any]:
        """Per-patient gradients, each clipped to norm C: a list (one per weight) of ``[n_segments, *shape]``."""
        import keras
        import tensorflow as tf

        weights = self.model.trainable_variables
        with tf.GradientTape() as tape:
            predictions = self.model(x, training=True)
            losses = keras.losses.binary_crossentropy(tf.expand_dims(y, -1), predictions)
        per_example = tape.jacobian(losses, weights, experimental_use_pfor=True)
        per_patient = [tf.math.unsorted_segment_sum(g, segments, n_segments) for g in per_example]
        squared = tf.add_n([tf.reduce_sum(tf.reshape(g, [n_segments, -1]) ** 2, axis=1) for g in per_patient])
        scale = tf.minimum(1.0, self.clip / tf.maximum(tf.sqrt(squared), 1e-12))
        return [g * tf.reshape(scale, [-1] + [1] * (len(g.shape) - 1)) for g in per_patient]

    def clipped_patient_gradients(self, x: np.ndarray, y: np.ndarray, segments: np.ndarray) -> list[np.ndarray]:
        n_segments = int(segments.max()) + 1
        out = self._clipped(
            np.asarray(x, np.float32), np.asarray(y, np.float32), np.asarray(segments, np.int32), np.int32(n_segments)
        )
        return [np.asarray(g) for g in out]

    def noised(self, summed: list[np.ndarray]) -> list[np.ndarray]:
        """Add N(0, (zC)^2) to every coordinate of the clipped sum."""
        std = self.noise_multiplier * self.clip
        return [s + self.rng.normal(0.0, std, size=s.shape).astype(np.float32) for s in summed]

    def step(self, x: np.ndarray, y: np.ndarray, index: PatientIndex) -> int:
        """One Poisson-sampled DP-SGD step on the hospital's training rows; returns the number of sampled patients."""
        import tensorflow as tf

        weights = self.model.trainable_variables
        chosen = np.flatnonzero(self.rng.random(index.n_patients) < self.sampling_rate)
        rows = np.flatnonzero(np.isin(index.codes, chosen))
        if rows.size:
            segments = np.searchsorted(chosen, index.codes[rows])
            clipped = self.clipped_patient_gradients(x[rows], y[rows], segments)
            summed = [g.sum(axis=0) for g in clipped]
        else:  # an empty Poisson batch still releases (pure) noise: the accountant counts it as a step
            summed = [np.zeros(tuple(w.shape), np.float32) for w in weights]
        expected = self.sampling_rate * index.n_patients
        private = [g / expected for g in self.noised(summed)]
        if self.model.losses or any(layer.losses for layer in self.model.layers):
            with tf.GradientTape() as tape:
                self.model(x[:1], training=False)
                penalty = tf.add_n(self.model.losses)
            regular = tape.gradient(penalty, weights)
            private = [p + (np.asarray(r) if r is not None else 0.0) for p, r in zip(private, regular, strict=True)]
        self.model.optimizer.apply_gradients(zip([tf.constant(p) for p in private], weights, strict=True))
        return int(chosen.size)

    def train(self, x: np.ndarray, y: np.ndarray, index: PatientIndex, steps: int) -> None:
        for _ in range(steps):
            self.step(x, y, index)

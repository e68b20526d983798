"""DP-SGD for the project's Keras 3 (TensorFlow backend) models, with the patient as the privacy unit.

One step:
1. Poisson-sample patients: each patient independently with probability q (the sampling the RDP accountant assumes);
   the batch is every encounter of every sampled patient.
2. Each sampled patient's gradient: the gradient of the summed loss over that patient's encounters. Its norm comes
   from ghost norms for the project's Dense chains (:class:`DpSgd`, no per-patient gradient is formed) or, for
   other models, from per-example gradients by ``GradientTape.jacobian`` summed per patient; both vectorised,
   no Python loop over examples or patients.
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
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from medheaven.errors import ConfigurationError

if TYPE_CHECKING:
    import keras


@dataclass(frozen=True)
class PatientIndex:
    """Encounter rows grouped by patient: ``codes[i]`` is the patient (0..n-1) of training row i; patient p's rows
    are ``order[starts[p]:starts[p + 1]]``."""

    codes: np.ndarray
    n_patients: int
    order: np.ndarray = field(init=False, repr=False)
    starts: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        order = np.argsort(self.codes, kind="stable")
        object.__setattr__(self, "order", order)
        object.__setattr__(self, "starts", np.searchsorted(self.codes[order], np.arange(self.n_patients + 1)))

    @classmethod
    def of(cls, groups: np.ndarray) -> PatientIndex:
        _, codes = np.unique(np.asarray(groups).astype(str), return_inverse=True)
        return cls(codes.astype(np.int64), int(codes.max()) + 1 if codes.size else 0)

    def rows_of(self, patients: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(every row of the given patients, each row's position in ``patients``), grouped by patient."""
        counts = self.starts[patients + 1] - self.starts[patients]
        segments = np.repeat(np.arange(patients.size), counts)
        offsets = np.arange(segments.size) - np.repeat(np.cumsum(counts) - counts, counts)
        return self.order[np.repeat(self.starts[patients], counts) + offsets], segments


def within_patient_pairs(segments: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every unordered pair (i, j), i < j, of rows with the same segment, as two index arrays (no Python loop)."""
    order = np.argsort(segments, kind="stable")
    sorted_segments = segments[order]
    starts = np.flatnonzero(np.r_[True, sorted_segments[1:] != sorted_segments[:-1]])
    ends = np.r_[starts[1:], sorted_segments.size]
    run_end = np.repeat(ends, ends - starts)
    after = run_end - np.arange(sorted_segments.size) - 1  # later rows of the same patient, per sorted position
    first = np.repeat(np.arange(sorted_segments.size), after)
    offset = np.arange(first.size) - np.repeat(np.cumsum(after) - after, after)
    second = first + 1 + offset
    return order[first].astype(np.int32), order[second].astype(np.int32)


def _dense_chain(model: keras.Model) -> list[Any] | None:
    """The model's layers after its input if they are only Dense and Dropout layers in a chain whose weights are
    exactly the model's trainable variables in order (kernel, bias per Dense); otherwise None."""
    import keras

    layers = [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]
    if not all(isinstance(layer, keras.layers.Dense | keras.layers.Dropout) for layer in layers):
        return None
    own = [w for layer in layers if isinstance(layer, keras.layers.Dense) for w in layer.trainable_variables]
    if [id(w) for w in own] != [id(w) for w in model.trainable_variables]:
        return None
    # the layers must also be wired as a chain: the same output as the model on a probe batch, or no ghost norms
    probe = np.random.default_rng(0).normal(size=(4, int(model.inputs[0].shape[-1]))).astype(np.float32)
    chained = probe
    for layer in layers:
        chained = np.asarray(layer(chained, training=False))
    return layers if np.allclose(chained, np.asarray(model(probe, training=False)), rtol=1e-5, atol=1e-6) else None


def steps_per_round(epochs: float, sampling_rate: float) -> int:
    """One local 'epoch' is 1/q Poisson steps (each patient is seen once per epoch in expectation)."""
    return max(1, round(epochs / sampling_rate))


def sampling_rate(expected_batch_patients: int, n_patients: int) -> float:
    if n_patients < 1:
        raise ConfigurationError("dp: a hospital with no training patients cannot run DP-SGD")
    return min(1.0, expected_batch_patients / n_patients)


class DpSgd:
    """Patient-level DP-SGD on one Keras model; the model's compiled optimiser applies the privatised gradients.

    Two ways to the clipped sum, the same numbers (``tests/test_privacy.py`` checks one against the other):
    ``ghost`` for a chain of Dense and Dropout layers (the project's MLP and logistic regression), ``jacobian``
    for any other model. ``ghost`` never forms a per-patient gradient: for a Dense layer with inputs ``a_i`` and
    output gradients ``g_i``, patient p's kernel gradient is ``sum_i a_i g_i^T`` and its squared norm is
    ``sum_{i,j in p} (a_i . a_j)(g_i . g_j)`` (Goodfellow 2015; Lee & Kifer 2021, "ghost clipping"), so one
    backward pass gives every patient's norm, and the clipped sum is ``A^T (s * G)`` with s each row's patient's
    clipping factor. Cost: one forward and one backward pass plus a few products, against a Jacobian's one backward
    pass per example.
    """

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
        batch = [
            tf.TensorSpec([None, features], tf.float32),
            tf.TensorSpec([None], tf.float32),
            tf.TensorSpec([None], tf.int32),
            tf.TensorSpec([], tf.int32),
        ]
        pairs = [tf.TensorSpec([None], tf.int32), tf.TensorSpec([None], tf.int32)]
        self._chain = _dense_chain(model)
        self.method = "ghost" if self._chain is not None else "jacobian"
        self._jacobian = tf.function(self._clipped_patient_gradients, input_signature=batch, reduce_retracing=True)
        self._ghost = tf.function(self._ghost_clipped_sum, input_signature=batch + pairs, reduce_retracing=True)
        # one compiled call for the update: Keras's optimiser applied eagerly cost ~60% of a step (profiled)
        sums = [tf.TensorSpec(tuple(w.shape), tf.float32) for w in model.trainable_variables]
        self._apply = tf.function(self._apply_private, input_signature=[sums, tf.TensorSpec([], tf.float32)])

    # -- the privatised gradient: the generic way ---------------------------------------------------------------
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
        """Each patient's clipped gradient, materialised (the Jacobian way; tests and models that are no Dense
        chain)."""
        n_segments = int(segments.max()) + 1
        out = self._jacobian(
            np.asarray(x, np.float32), np.asarray(y, np.float32), np.asarray(segments, np.int32), np.int32(n_segments)
        )
        return [np.asarray(g) for g in out]

    # -- the privatised gradient: ghost norms for a Dense chain ---------------------------------------------------
    def _ghost_clipped_sum(
        self, x: Any, y: Any, segments: Any, n_segments: Any, first: Any, second: Any
    ) -> tuple[list[Any], Any]:
        """(sum over patients of each clipped patient gradient, one per weight; every patient's unclipped norm).

        ``first``/``second`` list each pair of distinct rows of one patient once (``within_patient_pairs``)."""
        import keras
        import tensorflow as tf

        chain = self._chain
        assert chain is not None
        inputs: list[Any] = []
        outputs: list[Any] = []
        with tf.GradientTape() as tape:
            a = x
            for layer in chain:
                if isinstance(layer, keras.layers.Dense):
                    z = tf.matmul(a, layer.kernel)
                    if layer.use_bias:
                        z = z + layer.bias
                    tape.watch(z)  # the gradient wanted is the one at the layer's output, not at the weights
                    inputs.append(a)
                    outputs.append(z)
                    a = layer.activation(z)
                else:
                    a = layer(a, training=True)
            total = tf.reduce_sum(keras.losses.binary_crossentropy(tf.expand_dims(y, -1), a))
        # row i's loss depends on row i's pre-activations only, so this is every row's own output gradient
        grads = tape.gradient(total, outputs)
        diagonal = tf.zeros_like(y)
        cross = tf.zeros(tf.shape(first), tf.float32)
        dense = [layer for layer in chain if isinstance(layer, keras.layers.Dense)]
        for layer, a_in, g in zip(dense, inputs, grads, strict=True):
            bias = 1.0 if layer.use_bias else 0.0  # the bias's input is a constant 1
            diagonal += (tf.reduce_sum(a_in * a_in, axis=1) + bias) * tf.reduce_sum(g * g, axis=1)
            a_dot = tf.reduce_sum(tf.gather(a_in, first) * tf.gather(a_in, second), axis=1) + bias
            cross += a_dot * tf.reduce_sum(tf.gather(g, first) * tf.gather(g, second), axis=1)
        squared = tf.math.unsorted_segment_sum(diagonal, segments, n_segments) + 2.0 * tf.math.unsorted_segment_sum(
            cross, tf.gather(segments, first), n_segments
        )
        norms = tf.sqrt(tf.maximum(squared, 0.0))
        weight = tf.gather(tf.minimum(1.0, self.clip / tf.maximum(norms, 1e-12)), segments)
        summed: list[Any] = []
        for layer, a_in, g in zip(dense, inputs, grads, strict=True):
            scaled = g * tf.expand_dims(weight, -1)
            summed.append(tf.matmul(a_in, scaled, transpose_a=True))
            if layer.use_bias:
                summed.append(tf.reduce_sum(scaled, axis=0))
        return summed, norms

    def clipped_sum(self, x: np.ndarray, y: np.ndarray, segments: np.ndarray) -> list[np.ndarray]:
        """The sum over patients of each patient's clipped gradient (rows of one patient share a segment)."""
        if self.method == "jacobian":
            return [g.sum(axis=0) for g in self.clipped_patient_gradients(x, y, segments)]
        summed, _ = self._ghost_call(x, y, segments)
        return summed

    def patient_norms(self, x: np.ndarray, y: np.ndarray, segments: np.ndarray) -> np.ndarray:
        """Every patient's unclipped gradient norm, by ghost norms (Dense chains only)."""
        _, norms = self._ghost_call(x, y, segments)
        return norms

    def _ghost_call(self, x: np.ndarray, y: np.ndarray, segments: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
        segments = np.asarray(segments, np.int32)
        first, second = within_patient_pairs(segments)
        summed, norms = self._ghost(
            np.asarray(x, np.float32),
            np.asarray(y, np.float32),
            segments,
            np.int32(int(segments.max()) + 1),
            first,
            second,
        )
        return [np.asarray(g) for g in summed], np.asarray(norms)

    def noised(self, summed: list[np.ndarray]) -> list[np.ndarray]:
        """Add N(0, (zC)^2) to every coordinate of the clipped sum."""
        std = self.noise_multiplier * self.clip
        return [s + self.rng.normal(0.0, std, size=s.shape).astype(np.float32) for s in summed]

    def _apply_private(self, noisy_sum: list[Any], expected: Any) -> None:
        """Divide the noised sum by the expected batch, add the L2 penalty's gradient (data-independent: no noise
        needed) and let the hospital's optimiser take the step."""
        import tensorflow as tf

        weights = self.model.trainable_variables
        with tf.GradientTape() as tape:
            penalties = self.model.losses  # Keras 3 computes weight regularisers on access, no forward pass needed
            penalty = tf.add_n(penalties) if penalties else None
        regular = tape.gradient(penalty, weights) if penalty is not None else [None] * len(weights)
        private = [s / expected + (r if r is not None else 0.0) for s, r in zip(noisy_sum, regular, strict=True)]
        self.model.optimizer.apply_gradients(zip(private, weights, strict=True))

    def step(self, x: np.ndarray, y: np.ndarray, index: PatientIndex) -> int:
        """One Poisson-sampled DP-SGD step on the hospital's training rows; returns the number of sampled patients."""
        chosen = np.flatnonzero(self.rng.random(index.n_patients) < self.sampling_rate)
        rows, segments = index.rows_of(chosen)
        if rows.size:
            summed = self.clipped_sum(x[rows], y[rows], segments)
        else:  # an empty Poisson batch still releases (pure) noise: the accountant counts it as a step
            summed = [np.zeros(tuple(w.shape), np.float32) for w in self.model.trainable_variables]
        expected = self.sampling_rate * index.n_patients
        self._apply([np.asarray(n, np.float32) for n in self.noised(summed)], np.float32(expected))
        return int(chosen.size)

    def train(self, x: np.ndarray, y: np.ndarray, index: PatientIndex, steps: int) -> None:
        for _ in range(steps):
            self.step(x, y, index)

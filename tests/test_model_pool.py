"""Hospitals that share one process share one compiled model, never each other's optimiser state."""

from __future__ import annotations

import numpy as np

from medheaven.federated.model_pool import model_slot
from medheaven.model import ModelSpec


def test_hospitals_take_turns_on_one_model_with_their_own_optimiser_state() -> None:
    spec = ModelSpec(n_features=6, hidden=(4,), seed=3)
    slot = model_slot(spec, optimizer="adam", learning_rate=1e-2)
    assert model_slot(spec, optimizer="adam", learning_rate=1e-2) is slot  # built and traced once per process
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(64, 6)).astype("float32"), (rng.random(64) < 0.5).astype("float32")

    def state() -> list[np.ndarray]:
        return [np.array(v.numpy(), copy=True) for v in slot.model.optimizer.variables]

    with slot.lock:
        slot.switch_to(("a", "run"))
        slot.model.fit(x, y, epochs=2, batch_size=16, verbose=0)
        after_a = state()
        slot.switch_to(("b", "run"))
        for got, fresh in zip(state(), slot.fresh[: len(slot.model.optimizer.variables)], strict=True):
            np.testing.assert_array_equal(got, fresh)  # b starts from a fresh optimiser, not a's moments
        slot.model.fit(x, y, epochs=1, batch_size=16, verbose=0)
        after_b = state()
        slot.switch_to(("a", "run"))
        for got, kept in zip(state(), after_a, strict=True):
            np.testing.assert_array_equal(got, kept)  # a gets its own moments and step count back
        slot.switch_to(("b", "run"))
        for got, kept in zip(state(), after_b, strict=True):
            np.testing.assert_array_equal(got, kept)
    assert int(after_a[0]) == 8 and int(after_b[0]) == 4  # iterations: 2 epochs x 4 batches, 1 x 4


def test_each_hospital_keeps_its_own_dropout_stream() -> None:
    """The dropout generator's state is a hospital's too: the masks a hospital draws do not depend on who trained
    on the shared model before it (the embedded demo's thread order), so runs are reproducible."""
    spec = ModelSpec(n_features=3, hidden=(4,), dropout=0.5, seed=5)
    slot = model_slot(spec, optimizer="adam", learning_rate=1e-2)
    seeds = [v for v in slot.model.non_trainable_variables if "seed" in v.path]
    assert seeds, "the model's dropout layer has a seed generator"
    x = np.ones((8, 3), dtype="float32")

    def masks() -> np.ndarray:
        return np.asarray(slot.model(x, training=True))

    with slot.lock:
        slot.switch_to(("a", "run-2"))
        first = masks()
        slot.switch_to(("b", "run-2"))
        np.testing.assert_array_equal(masks(), first)  # b starts its stream where a started, not where a left it
        slot.switch_to(("a", "run-2"))
        second = masks()
        assert not np.array_equal(second, first)  # a's stream went on

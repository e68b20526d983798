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
        for got, fresh in zip(state(), slot.fresh, strict=True):
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

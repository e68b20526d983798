"""``train_epochs`` applies the steps ``model.fit`` applies: the same batches give the same weights."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from medheaven.model import ModelSpec, build_model, compile_model, get_flat_weights, train_epochs


class _InFileOrder(np.random.Generator):
    def __init__(self) -> None:
        super().__init__(np.random.PCG64(0))

    def permutation(self, x: Any, axis: int = 0) -> np.ndarray:
        return np.arange(x)


@pytest.mark.parametrize("rows", [64, 70])  # whole batches, and a short last batch
def test_train_epochs_matches_fit_on_the_same_batches(rows: int) -> None:
    spec = ModelSpec(n_features=5, hidden=(8,), dropout=0.0, l2=1e-3, seed=1)
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(rows, 5)).astype("float32"), (rng.random(rows) < 0.4).astype("float32")
    by_fit, by_loop = build_model(spec), build_model(spec)
    compile_model(by_fit, learning_rate=1e-2)
    compile_model(by_loop, learning_rate=1e-2)
    by_fit.fit(x, y, epochs=3, batch_size=16, shuffle=False, verbose=0)
    train_epochs(by_loop, x, y, epochs=3, batch_size=16, rng=_InFileOrder())  # as fit takes them unshuffled
    np.testing.assert_allclose(get_flat_weights(by_loop), get_flat_weights(by_fit), rtol=1e-5, atol=1e-6)
    assert int(by_loop.optimizer.iterations.numpy()) == int(by_fit.optimizer.iterations.numpy()) == 3 * -(-rows // 16)


def test_train_epochs_shuffles_with_the_seeded_generator() -> None:
    spec = ModelSpec(n_features=4, hidden=(4,), dropout=0.2, seed=2)
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(100, 4)).astype("float32"), (rng.random(100) < 0.5).astype("float32")
    results = []
    for seed in (7, 7, 8):
        model = build_model(spec)
        compile_model(model, learning_rate=1e-2)
        train_epochs(model, x, y, epochs=2, batch_size=32, rng=np.random.default_rng(seed))
        results.append(get_flat_weights(model))
    np.testing.assert_array_equal(results[0], results[1])  # the same seed: the same orders (dropout: its layer's)
    assert not np.array_equal(results[0], results[2])

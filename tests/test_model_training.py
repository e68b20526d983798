"""``train_epochs`` applies the steps ``model.fit`` applies: the same batches give the same weights."""

from __future__ import annotations

import numpy as np
import pytest

from medheaven.model import ModelSpec, build_model, compile_model, get_flat_weights, train_epochs


@pytest.mark.parametrize("rows", [64, 70])  # whole batches, and a short last batch
def test_train_epochs_matches_fit_on_the_same_batches(rows: int, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = ModelSpec(n_features=5, hidden=(8,), dropout=0.0, l2=1e-3, seed=1)
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(rows, 5)).astype("float32"), (rng.random(rows) < 0.4).astype("float32")
    by_fit, by_loop = build_model(spec), build_model(spec)
    compile_model(by_fit, learning_rate=1e-2)
    compile_model(by_loop, learning_rate=1e-2)
    by_fit.fit(x, y, epochs=3, batch_size=16, shuffle=False, verbose=0)
    # the rows in file order, as fit without shuffling takes them
    monkeypatch.setattr(np.random, "permutation", np.arange)
    train_epochs(by_loop, x, y, epochs=3, batch_size=16)
    np.testing.assert_allclose(get_flat_weights(by_loop), get_flat_weights(by_fit), rtol=1e-5, atol=1e-6)
    assert int(by_loop.optimizer.iterations.numpy()) == int(by_fit.optimizer.iterations.numpy()) == 3 * -(-rows // 16)


def test_train_epochs_shuffles_with_the_seeded_generator() -> None:
    import keras

    spec = ModelSpec(n_features=4, hidden=(4,), dropout=0.2, seed=2)
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(100, 4)).astype("float32"), (rng.random(100) < 0.5).astype("float32")
    results = []
    for seed in (7, 7, 8):
        model = build_model(spec)
        compile_model(model, learning_rate=1e-2)
        keras.utils.set_random_seed(seed)
        train_epochs(model, x, y, epochs=2, batch_size=32)
        results.append(get_flat_weights(model))
    np.testing.assert_array_equal(results[0], results[1])  # the same seed: the same orders and dropout masks
    assert not np.array_equal(results[0], results[2])

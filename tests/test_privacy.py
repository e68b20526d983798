"""Patient-level DP-SGD and its accountant."""

from __future__ import annotations

from pathlib import Path

import dp_accounting
import numpy as np
import pytest
from dp_accounting import rdp

from medheaven.errors import ConfigurationError
from medheaven.privacy import DpConfig, PrivacyLedger, calibrate_noise, epsilon_for
from medheaven.privacy.accountant import RDP_ORDERS, LedgerEntry
from medheaven.privacy.config import PrivateSchedule


def test_accountant_epsilon_equals_dp_accounting() -> None:
    q, z, steps, delta = 0.02, 1.1, 750, 1e-5
    reference = rdp.RdpAccountant(RDP_ORDERS)
    reference.compose(
        dp_accounting.SelfComposedDpEvent(
            dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(z)), steps
        )
    )
    assert epsilon_for(q, z, steps, delta) == pytest.approx(reference.get_epsilon(delta), rel=1e-12)
    # and the per-round ledger composes to the same ε as one long run
    ledger = PrivacyLedger(10.0, delta)
    for r in range(3):
        ledger = ledger.after(LedgerEntry(round=r + 1, steps=250, sampling_rate=q, noise_multiplier=z))
    assert ledger.spent() == pytest.approx(reference.get_epsilon(delta), rel=1e-9)
    # rounds with another (q, z) compose on top, each as dp-accounting composes it
    ledger = ledger.after(LedgerEntry(round=4, steps=40, sampling_rate=0.6, noise_multiplier=2.0))
    reference.compose(dp_accounting.PoissonSampledDpEvent(0.6, dp_accounting.GaussianDpEvent(2.0)), 40)
    assert ledger.spent() == pytest.approx(reference.get_epsilon(delta), rel=1e-9)


@pytest.mark.parametrize("target", [1.0, 3.0, 8.0])
def test_calibrate_noise_within_one_percent(target: float) -> None:
    q, steps, delta = 0.01, 1200, 1e-5
    z = calibrate_noise(target, delta, q, steps)
    achieved = epsilon_for(q, z, steps, delta)
    assert achieved <= target * 1.0001
    assert achieved == pytest.approx(target, rel=0.01)


def test_ledger_refuses_past_budget_and_survives_restart(tmp_path: Path) -> None:
    q, delta = 0.05, 1e-5
    z = calibrate_noise(2.0, delta, q, 2 * 40)
    ledger = PrivacyLedger(2.0, delta)
    entry = LedgerEntry(round=1, steps=40, sampling_rate=q, noise_multiplier=z)
    assert ledger.allows(entry)
    ledger = ledger.after(entry)
    second = LedgerEntry(round=2, steps=40, sampling_rate=q, noise_multiplier=z)
    assert ledger.allows(second)
    ledger = ledger.after(second)
    path = tmp_path / "privacy" / "ledger.json"
    ledger.save(path)
    reloaded = PrivacyLedger.load(path, budget_epsilon=2.0, delta=delta)
    assert reloaded.spent() == pytest.approx(ledger.spent())
    assert not reloaded.allows(LedgerEntry(round=3, steps=40, sampling_rate=q, noise_multiplier=z))


def test_dp_config_rejects_bad_values() -> None:
    with pytest.raises(ConfigurationError, match="delta"):
        DpConfig(target_epsilon=3.0, delta=0.0)
    with pytest.raises(ConfigurationError, match="clipping"):
        DpConfig(target_epsilon=3.0, delta=1e-5, clip=-1.0)
    assert DpConfig.from_dict(DpConfig(3.0, 1e-5, noise_multiplier=0.9).to_dict()).noise_multiplier == 0.9


def test_dp_config_carries_its_recipe_and_local_training_resolves_it() -> None:
    from medheaven.federated.wire import LocalTraining

    with pytest.raises(ConfigurationError, match="optimizer"):
        DpConfig(3.0, 1e-5, optimizer="rmsprop")
    with pytest.raises(ConfigurationError, match="batch of patients"):
        DpConfig(3.0, 1e-5, batch_patients=0)
    with pytest.raises(ConfigurationError, match="learning_rate"):
        DpConfig(3.0, 1e-5, learning_rate=-1.0)
    dp = DpConfig(3.0, 1e-5, batch_patients=1024, epochs=2.0, learning_rate=1e-2, optimizer="sgd")
    assert DpConfig.from_dict(dp.to_dict()) == dp
    private = LocalTraining(epochs=1, batch_size=64, learning_rate=1e-3, lr_decay=0.5, dp=dp)
    assert LocalTraining.from_dict(private.to_dict()) == private
    assert (private.batch_patients, private.private_epochs, private.local_optimizer) == (1024, 2.0, "sgd")
    assert private.rate_for(2) == pytest.approx(5e-3)
    # a record written before the recipe fields existed takes the run's non-private values, as it did then
    old = {"target_epsilon": 3.0, "delta": 1e-5, "clip": 1.0, "noise_multiplier": 0.0, "release_metrics": True}
    inherited = LocalTraining(epochs=3, batch_size=64, learning_rate=1e-3, dp=DpConfig.from_dict(old))
    assert (inherited.batch_patients, inherited.private_epochs, inherited.local_optimizer) == (64, 3.0, "adam")
    assert inherited.rate_for(1) == 1e-3
    assert LocalTraining(batch_size=64).rate_for(1) == 1e-3


def test_every_default_clipping_norm_is_the_recipe_s() -> None:
    from benchmarks import privacy
    from coordinator import options
    from medheaven.privacy.config import LEGACY_CLIP, RECIPE_CLIP

    assert DpConfig(3.0, 1e-5).clip == options.DP_CLIP == privacy._arguments([]).clip == RECIPE_CLIP
    dp = options.dp_config(3.0, options.DP_DELTA, options.DP_CLIP, options.DP_NOISE, options.DP_METRICS)
    assert dp == DpConfig(3.0, 1e-5)
    # a record without C was trained with the C of its time
    assert DpConfig.from_dict({"target_epsilon": 3.0, "delta": 1e-5}).clip == LEGACY_CLIP


def _model_and_data(n_rows: int = 400, n_patients: int = 120) -> tuple[object, np.ndarray, np.ndarray, np.ndarray]:
    from medheaven.model import ModelSpec, build_model, compile_model

    model = build_model(ModelSpec(n_features=8, hidden=(16,), dropout=0.0))
    compile_model(model, learning_rate=1e-2, optimizer="sgd")
    rng = np.random.default_rng(3)
    x = (rng.normal(size=(n_rows, 8)) * 5.0).astype(np.float32)  # large features: raw gradients far above C
    y = (rng.random(n_rows) < 0.4).astype(np.float32)
    groups = rng.integers(0, n_patients, size=n_rows)
    return model, x, y, groups


def test_dpsgd_clipped_patient_gradient_norms_at_most_c() -> None:
    from medheaven.privacy.dpsgd import DpSgd, PatientIndex

    model, x, y, groups = _model_and_data()
    index = PatientIndex.of(groups)
    clip = 0.25
    dp = DpSgd(model, clip=clip, noise_multiplier=1.0, sampling_rate=0.5, seed=0)  # type: ignore[arg-type]
    segments = index.codes
    clipped = dp.clipped_patient_gradients(x, y, segments)
    norms = np.sqrt(sum((g.reshape(g.shape[0], -1).astype(np.float64) ** 2).sum(axis=1) for g in clipped))
    assert norms.shape == (index.n_patients,)
    assert np.all(norms <= clip * (1 + 1e-5))
    assert np.sum(norms > clip * 0.99) > index.n_patients // 2  # clipping was active, not vacuous


def test_within_patient_pairs_lists_each_pair_of_one_patients_rows_once() -> None:
    from medheaven.privacy.dpsgd import within_patient_pairs

    segments = np.random.default_rng(2).integers(0, 9, size=60)
    first, second = within_patient_pairs(segments)
    got = sorted((min(i, j), max(i, j)) for i, j in zip(first.tolist(), second.tolist(), strict=True))
    expected = [(i, j) for i in range(60) for j in range(i + 1, 60) if segments[i] == segments[j]]
    assert got == expected


def test_dpsgd_ghost_norms_clip_every_patient_and_sum_like_the_jacobian() -> None:
    """The optimisation's equivalence test: ghost norms equal the materialised per-patient gradients' norms, their
    clipping factors bound every patient's gradient by C, and the clipped sum equals the Jacobian way's."""
    from medheaven.privacy.dpsgd import DpSgd, PatientIndex

    model, x, y, groups = _model_and_data()
    index = PatientIndex.of(groups)
    clip = 0.25
    dp = DpSgd(model, clip=clip, noise_multiplier=1.0, sampling_rate=0.5, seed=0)  # type: ignore[arg-type]
    assert dp.method == "ghost"
    assert np.bincount(index.codes).max() > 2  # patients with several encounters: the cross terms matter
    raw = DpSgd(model, clip=1e9, noise_multiplier=1.0, sampling_rate=0.5)  # type: ignore[arg-type]
    per_patient = raw.clipped_patient_gradients(x, y, index.codes)  # clip 1e9: unclipped
    reference = np.sqrt(sum((g.reshape(g.shape[0], -1).astype(np.float64) ** 2).sum(axis=1) for g in per_patient))
    norms = dp.patient_norms(x, y, index.codes)
    np.testing.assert_allclose(norms, reference, rtol=1e-4)
    factors = np.minimum(1.0, clip / norms)
    clipped = [g * factors.reshape(-1, *([1] * (g.ndim - 1))) for g in per_patient]
    clipped_norms = np.sqrt(sum((g.reshape(g.shape[0], -1).astype(np.float64) ** 2).sum(axis=1) for g in clipped))
    assert np.all(clipped_norms <= clip * (1 + 1e-5))
    assert np.sum(clipped_norms > clip * 0.99) > index.n_patients // 2
    jacobian = [g.sum(axis=0) for g in dp.clipped_patient_gradients(x, y, index.codes)]
    for ghost, slow in zip(dp.clipped_sum(x, y, index.codes), jacobian, strict=True):
        np.testing.assert_allclose(ghost, slow, rtol=1e-4, atol=1e-6)


def test_dpsgd_noise_std_is_z_times_c() -> None:
    from medheaven.privacy.dpsgd import DpSgd

    model, _, _, _ = _model_and_data()
    z, clip = 1.3, 0.7
    dp = DpSgd(model, clip=clip, noise_multiplier=z, sampling_rate=0.1, seed=11)  # type: ignore[arg-type]
    zeros = [np.zeros(tuple(w.shape), np.float32) for w in model.trainable_variables]  # type: ignore[attr-defined]
    draws = np.concatenate([np.concatenate([n.ravel() for n in dp.noised(zeros)]) for _ in range(200)])
    assert draws.size > 20_000
    assert abs(float(draws.mean())) < 0.02
    assert float(draws.std()) == pytest.approx(z * clip, rel=0.02)


def test_patient_index_rows_of_gives_every_row_of_the_chosen_patients() -> None:
    from medheaven.privacy.dpsgd import PatientIndex

    groups = np.random.default_rng(4).integers(0, 50, size=300)
    index = PatientIndex.of(groups)
    chosen = np.array([0, 3, 7, 49])
    rows, segments = index.rows_of(chosen)
    assert sorted(rows.tolist()) == np.flatnonzero(np.isin(index.codes, chosen)).tolist()
    assert np.array_equal(chosen[segments], index.codes[rows])


def test_dpsgd_step_applies_noised_sum_over_expected_batch_plus_penalty() -> None:
    """One SGD step by hand: w - lr * ((clipped sum + noise) / (q N) + the L2 penalty's gradient)."""
    from medheaven.model import ModelSpec, build_model, compile_model, get_flat_weights
    from medheaven.privacy.dpsgd import DpSgd, PatientIndex

    model = build_model(ModelSpec(n_features=8, hidden=(16,), dropout=0.0, l2=1e-2))
    compile_model(model, learning_rate=0.1, optimizer="sgd")
    _, x, y, groups = _model_and_data()
    index = PatientIndex.of(groups)
    before = [np.asarray(w) for w in model.trainable_variables]
    dp = DpSgd(model, clip=0.5, noise_multiplier=0.7, sampling_rate=0.3, seed=9)
    twin = DpSgd(model, clip=0.5, noise_multiplier=0.7, sampling_rate=0.3, seed=9)  # the same random draws
    chosen = np.flatnonzero(twin.rng.random(index.n_patients) < 0.3)
    rows, segments = index.rows_of(chosen)
    noisy = twin.noised(twin.clipped_sum(x[rows], y[rows], segments))
    dp.step(x, y, index)
    expected = [
        w - 0.1 * (n / (0.3 * index.n_patients) + (2 * 1e-2 * w if w.ndim == 2 else 0.0))
        for w, n in zip(before, noisy, strict=True)
    ]
    np.testing.assert_allclose(
        get_flat_weights(model), np.concatenate([e.ravel() for e in expected]), rtol=1e-4, atol=1e-6
    )


def test_dpsgd_step_moves_weights_and_counts_patients() -> None:
    from medheaven.model import get_flat_weights
    from medheaven.privacy.dpsgd import DpSgd, PatientIndex

    model, x, y, groups = _model_and_data()
    before = get_flat_weights(model)  # type: ignore[arg-type]
    dp = DpSgd(model, clip=1.0, noise_multiplier=0.5, sampling_rate=0.2, seed=5)  # type: ignore[arg-type]
    sampled = [dp.step(x, y, PatientIndex.of(groups)) for _ in range(30)]
    assert 0.1 * 120 < np.mean(sampled) < 0.3 * 120  # Poisson sampling of patients at q = 0.2
    assert not np.allclose(before, get_flat_weights(model))  # type: ignore[arg-type]


def test_train_private_refuses_at_budget_with_the_marker(tmp_path: Path) -> None:
    from medheaven.model import get_flat_weights
    from medheaven.privacy.local import BUDGET_MARKER, PrivacyBudgetError, train_private

    model, x, y, groups = _model_and_data()
    dp = DpConfig(target_epsilon=2.0, delta=1e-5, clip=1.0)
    ledger = tmp_path / ".privacy" / "h1-run.json"
    schedule = PrivateSchedule(dp, planned_rounds=2, epochs=1, batch_patients=30)
    spent = [
        train_private(model, x, y, groups, schedule, round_number=r, hospital_id="h1", ledger_path=ledger).epsilon  # type: ignore[arg-type]
        for r in (1, 2)
    ]
    assert 0 < spent[0] < spent[1] <= 2.0 * 1.001
    from medheaven.privacy import local

    assert local._calibrated.cache_info().hits >= 1  # round 2 reused round 1's z, it did not bisect again
    assert local._dp_sgd(model, 1.0) is local._dp_sgd(model, 1.0)  # type: ignore[arg-type]
    frozen = get_flat_weights(model)  # type: ignore[arg-type]
    with pytest.raises(PrivacyBudgetError, match=BUDGET_MARKER) as refused:
        train_private(model, x, y, groups, schedule, round_number=3, hospital_id="h1", ledger_path=ledger)  # type: ignore[arg-type]
    assert "'h1'" in str(refused.value) and "round 3" in str(refused.value)
    assert np.array_equal(frozen, get_flat_weights(model))  # type: ignore[arg-type]


def test_train_private_calibrates_each_hospital_for_its_own_sampling_rate(tmp_path: Path) -> None:
    """A small hospital (q = 1: its whole list of patients is the expected batch) and a large one (small q) each
    calibrate their own z from the same target, and each ends its planned rounds at that target, not past it."""
    from medheaven.privacy.local import train_private

    dp = DpConfig(target_epsilon=3.0, delta=1e-5, clip=1.0)
    rounds, done = 2, {}
    for hospital, patients in (("small", 40), ("large", 400)):
        model, x, y, groups = _model_and_data(n_rows=patients * 2, n_patients=patients)
        ledger = tmp_path / ".privacy" / f"{hospital}-run.json"
        for r in range(1, rounds + 1):
            done[hospital] = train_private(  # type: ignore[arg-type]
                model, x, y, groups, PrivateSchedule(dp, planned_rounds=rounds, epochs=1.0, batch_patients=60),
                round_number=r, ledger_path=ledger, hospital_id=hospital,
            )  # fmt: skip
        entries = PrivacyLedger.load(ledger, budget_epsilon=3.0, delta=1e-5).entries
        assert {e.sampling_rate for e in entries} == {min(1.0, 60 / len(np.unique(groups)))}
    assert done["small"].noise_multiplier > done["large"].noise_multiplier  # q = 1 has no subsampling to amplify
    for private in done.values():
        assert private.epsilon == pytest.approx(3.0, rel=0.01) and private.epsilon <= 3.0 * 1.001


def test_next_epsilon_in_receipts_foretells_the_refusal(tmp_path: Path) -> None:
    """What a hospital reports as ``next_epsilon`` (before round 1 from the statistics phase, then in each training
    receipt) is the ε the next round really spends, and the coordinator's test (``privacy.budget``) marks the hospital
    unaffordable exactly when its own ledger would refuse."""
    from medheaven.privacy.budget import latest_reports, unaffordable
    from medheaven.privacy.local import NEXT_EPSILON, PrivacyBudgetError, budget_standing, plan_round, train_private

    model, x, y, groups = _model_and_data()
    dp = DpConfig(target_epsilon=2.0, delta=1e-5, clip=1.0)
    ledger = tmp_path / ".privacy" / "h1-run.json"
    plan = PrivateSchedule(dp, planned_rounds=2, epochs=1, batch_patients=30)
    before = budget_standing(ledger, plan_round(groups, plan, round_number=1), dp=dp)  # type: ignore[arg-type]
    assert before["epsilon"] == 0.0
    rounds = [
        train_private(model, x, y, groups, plan, round_number=r, hospital_id="h1", ledger_path=ledger)  # type: ignore[arg-type]
        for r in (1, 2)
    ]
    assert before[NEXT_EPSILON] == pytest.approx(rounds[0].epsilon)
    assert rounds[0].next_epsilon == pytest.approx(rounds[1].epsilon)
    assert rounds[1].next_epsilon > dp.target_epsilon * 1.01
    with pytest.raises(PrivacyBudgetError):
        train_private(model, x, y, groups, plan, round_number=3, hospital_id="h1", ledger_path=ledger)  # type: ignore[arg-type]

    # newest first: h1's round-2 receipt decides, its statistics receipt is older; h2 reported nothing under DP
    receipts = [
        ("h1", rounds[1].receipt_fields(), "round 2 attempt 1"),
        ("h1", rounds[0].receipt_fields(), "round 1 attempt 1"),
        ("h2", {"epsilon": 0.5, "delta": 1e-5}, "round 2 attempt 1"),
        ("h1", before, "the statistics phase"),
    ]
    reports = latest_reports(receipts)
    assert set(reports) == {"h1"} and reports["h1"].where == "round 2 attempt 1"
    spent = unaffordable(reports, dp)
    assert set(spent) == {"h1"} and "privacy budget is spent" in spent["h1"].describe(dp)
    assert unaffordable(latest_reports(receipts[1:]), dp) == {}  # after round 1 it could still afford round 2
    assert set(latest_reports(iter(receipts), wanted=("h1",))) == {"h1"}


def _mean_risk_after_dp_sgd(clip: float) -> tuple[float, float]:
    """(mean predicted risk, readmission rate) after 60 DP-SGD steps on imbalanced data (11% positives) with the
    project's MLP: standardised features, one encounter per patient, z = 1, 500 expected patients per step."""
    from medheaven.model import ModelSpec, build_model, compile_model, predict_risk
    from medheaven.privacy.dpsgd import DpSgd, PatientIndex

    rng = np.random.default_rng(21)
    n, features = 4_000, 64
    x = rng.normal(size=(n, features)).astype(np.float32)
    logits = -2.3 + x[:, :8] @ rng.normal(0.0, 0.3, size=8)
    y = (rng.random(n) < 1.0 / (1.0 + np.exp(-logits))).astype(np.float32)
    model = build_model(ModelSpec(n_features=features, hidden=(64, 32), dropout=0.3, seed=0))
    compile_model(model, learning_rate=1e-2)
    dp = DpSgd(model, clip=clip, noise_multiplier=1.0, sampling_rate=500 / n, seed=4)  # type: ignore[arg-type]
    dp.train(x, y, PatientIndex.of(np.arange(n)), 60)
    return float(np.mean(predict_risk(model, x))), float(y.mean())  # type: ignore[arg-type]


def test_dpsgd_default_clip_keeps_predicted_risk_near_the_readmission_rate() -> None:
    """Clipping bias (PRIVACY.md): with C below most patients' gradient norms every patient pushes the output with
    the same force, and the never-readmitted majority drives every risk far below the rate; the default C does not."""
    from medheaven.privacy.config import RECIPE_CLIP

    risk, rate = _mean_risk_after_dp_sgd(RECIPE_CLIP)
    assert 0.08 < rate < 0.15
    assert abs(risk - rate) < 0.35 * rate, (risk, rate)
    squeezed, _ = _mean_risk_after_dp_sgd(0.3)  # the previous default
    assert squeezed < 0.35 * rate, (squeezed, rate)

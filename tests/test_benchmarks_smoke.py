"""Each benchmark's code path runs on tiny sizes and emits the JSON keys BENCHMARKS.md reads. No timing asserts:
the numbers are only meaningful on a quiet machine at full size."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import aggregator, dp_grid, federation, privacy, recipe_cv, scaling
from coordinator import options


def _stdout_json(capsys: pytest.CaptureFixture[str]) -> dict:  # type: ignore[type-arg]
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("scheme", ["bfv-masked", "ckks"])
def test_aggregator_benchmark_emits_memory_and_throughput(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], scheme: str
) -> None:
    aggregator.main(
        ["--scheme", scheme, "--hidden", "8", "--hospitals", "1,3", "--repeat", "2", "--synthetic-rows", "1500",
         "--out", str(tmp_path)]
    )  # fmt: skip
    result = _stdout_json(capsys)
    assert {"parameters", "envelope_bytes", "receipt_msgpack_bytes", "memory", "throughput", "targets"} <= result.keys()
    assert result["scheme"] == scheme
    assert [row["hospitals"] for row in result["memory"]] == [1, 3]
    for row in result["memory"]:
        assert {"idle_rss", "peak_rss", "peak_minus_idle", "peak_minus_idle_over_model"} <= row.keys()
        assert row["peak_rss"] >= row["idle_rss"] > 0
        # both peaks the memory target is read against: while folding, and over the round including finalise
        during = row["peak_minus_idle_during_folds_over_global_model"]
        assert during <= row["peak_minus_idle_including_finalise_over_global_model"]
        # a bfv-masked sum is full size, twice a seeded upload; a ckks sum is the size of an update
        ratio = row["global_model_bytes"] / result["envelope_bytes"]
        assert 1.9 < ratio < 2.1 if scheme == "bfv-masked" else 0.9 < ratio < 1.1
    assert result["throughput"]["fold_mparams_per_s_per_core"] > 0
    assert set(result["throughput"]["seconds_median"]) == {"read", "digest_decode", "check", "add", "total"}
    assert result["receipt_msgpack_bytes"] < 1024  # a receipt is a reference, never a payload
    assert not tmp_path.exists()  # the envelopes are removed unless --keep


def test_federation_benchmark_emits_ratio_and_breakdown(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    federation.main(
        [
            "--mode", "threads", "--hospitals", "2", "--scheme", "iid", "--rounds", "2", "--hidden", "8",
            "--synthetic-rows", "1200", "--out", str(tmp_path),
        ]
    )  # fmt: skip
    result = _stdout_json(capsys)
    assert {"ratio_median_round", "ratio_mean_round_after_first", "encrypted", "plaintext", "targets"} <= result.keys()
    assert result["crypto_scheme"] == "bfv-masked"  # the encrypted runs are the masked default (BENCHMARKS.md 2b)
    phases = result["encrypted"]["critical_path_median_after_first"]
    assert set(federation.PHASES) <= phases.keys()
    assert abs(sum(phases[p] for p in federation.PHASES) - phases["seconds"]) < 1e-6


@pytest.mark.slow
def test_scaling_benchmark_emits_rows(tmp_path: Path, redis_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    scaling.main(
        [
            "--hospitals", "2", "--rows-per-hospital", "300", "--rounds", "1", "--tasks", "2",
            "--broker-url", redis_url, "--out", str(tmp_path),
        ]
    )  # fmt: skip
    result = _stdout_json(capsys)
    assert [row["hospitals"] for row in result["hospitals"]] == [2]
    assert {"median_round_seconds_after_first", "critical_path_median_after_first"} <= result["hospitals"][0].keys()
    assert [row["processes_on_queue"] for row in result["shared_queue"]] == [1, 2]
    assert {"shared_queue_speedup_drain", "shared_queue_round_ratio"} <= result.keys()


def test_crypto_bfv_rows_emit_sizes_costs_and_fold_path() -> None:
    import numpy as np

    from benchmarks.crypto_bfv import MASK_COHORTS, measure_bfv_masked, measure_ckks_fold_path

    rng = np.random.default_rng(0)
    updates = [(rng.uniform(-1, 1, 5000), n) for n in (50, 70, 30)]
    row = measure_bfv_masked(updates, repeat=1)
    assert row["sum_exact"] and row["max_abs_error"] <= row["error_bound"]
    assert row["upload_bytes_per_param"] < row["global_bytes_per_param"]
    assert set(row["encrypt_mask_us_per_param_by_hospitals"]) == {str(k) for k in MASK_COHORTS}
    assert row["fold_path_mparams_per_s"] > 0 and row["noise_budget_bits_after_hospitals"] > 0
    assert set(measure_ckks_fold_path(updates, repeat=1)) == {"format_2_mparams_per_s", "format_1_mparams_per_s"}


def test_privacy_benchmark_emits_table_with_attack(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    privacy.main(
        [
            "--mode", "threads", "--hospitals", "2", "--scheme", "column:admission_source_id", "--rounds", "1",
            "--hidden", "8", "--synthetic-rows", "800", "--epsilons", "none,3", "--attack-epsilons", "3",
            "--batch-size", "32", "--out", str(tmp_path),
        ]
    )  # fmt: skip
    result = _stdout_json(capsys)
    assert [line["epsilon"] for line in result["table"]] == ["none", "3"]
    plain, private = result["rows"]
    assert plain["spent"] == {} and "attack" not in plain  # no attack asked for the non-private row
    assert set(private["spent"]) == set(result["hospitals"])
    assert all(0 < s["epsilon"] <= 3.0 * 1.001 and s["delta"] == 1e-5 for s in private["spent"].values())
    attack = private["attack"]
    assert set(attack["per_hospital"]) == set(result["hospitals"]) and 0.0 <= attack["mean_roc_auc"] <= 1.0
    for row in attack["per_hospital"].values():  # equal-size member and non-member samples, pooled and matched
        assert row["patients_each"] > 0 and row["matched"]["patients_each"] > 0
    line = result["table"][1]
    assert {"test_roc_auc", "test_pr_auc", "roc_auc_gap_to_no_dp", "round_time_ratio_to_no_dp"} <= line.keys()
    assert line["roc_auc_gap_to_no_dp"] == pytest.approx(plain["test"]["roc_auc"] - private["test"]["roc_auc"])
    # calibration beside ranking: the mean predicted test risk against the test split's readmission rate
    assert 0.0 < line["test_mean_risk"] < 1.0 and line["test_base_rate"] == private["test"]["base_rate"]
    assert line["test_brier"] == private["test"]["brier"]


def test_dp_grid_scores_on_validation_and_times_a_round(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    common = ["--hospitals", "2", "--synthetic-rows", "800", "--rounds", "2", "--batch-patients", "64"]
    dp_grid.main([*common, "--no-dp", "--epsilon", "3", "--out", str(tmp_path / "grid")])
    result = _stdout_json(capsys)
    plain, private = result["rows"]
    assert plain["config"]["epsilon"] is None and private["config"]["epsilon"] == 3.0
    assert len(private["validation_roc_auc_weighted"]) == 2 and result["best"] == private
    # ranked by the pooled validation ROC-AUC (as the test split is scored) unless --score weighted
    assert (
        len(private["validation_roc_auc_pooled"]) == 2 and private["final"] == private["validation_roc_auc_pooled"][-1]
    )
    for hospitals in private["validation_mean_risk_and_rate"]:  # each hospital: (mean predicted risk, its rate)
        assert set(hospitals) == {"h1", "h2"} and all(
            0 < risk < 1 and 0 <= rate <= 1 for risk, rate in hospitals.values()
        )
    assert all(p["epsilon"] <= 3.0 * 1.001 and p["steps"] >= 1 for p in private["planned"].values())
    # by default every row trains under the product's schedule and server step, the no-DP row with its plain recipe
    schedule = {"lr_decay": options.LR_DECAY, "server": options.SERVER_OPTIMISER}
    assert plain["config"] == {
        "epsilon": None, "batch": options.BATCH_SIZE, "lr": options.LEARNING_RATE, "epochs": options.LOCAL_EPOCHS,
        **schedule,
    }  # fmt: skip
    assert private["config"].items() >= schedule.items()
    dp_grid.main(
        [*common, "--epsilon", "3", "--server-optimiser", "fedavg", "--lr-decay", "1", "--out", str(tmp_path / "g2")]
    )
    (fedavg_row,) = _stdout_json(capsys)["rows"]
    assert fedavg_row["config"]["server"] == "fedavg" and fedavg_row["config"]["lr_decay"] == 1.0
    dp_grid.main([*common, "--epsilon", "3", "--score", "weighted", "--out", str(tmp_path / "g3")])
    (weighted_row,) = _stdout_json(capsys)["rows"]
    assert weighted_row["final"] == weighted_row["validation_roc_auc_weighted"][-1]
    dp_grid.main([*common, "--time-round", "h1", "--repeat", "1", "--out", str(tmp_path / "time")])
    timed = _stdout_json(capsys)
    assert timed["method"] == "ghost" and set(timed["seconds"]) == {"dp_sgd", "fit_1_epoch", "fit_1_epochs"}


def test_recipe_cv_emits_one_validation_curve_per_variant(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from medheaven.data import generate_synthetic

    data = tmp_path / "d.csv"
    generate_synthetic(800, seed=1).to_csv(data, index=False)
    recipe_cv.main(
        ["--data", str(data), "--hospitals", "2", "--scheme", "iid", "--folds", "2", "--rounds", "1",
         "--variant", "{}", "--variant", '{"features": "noprior+log", "hidden": [8]}']
    )  # fmt: skip
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["variant"]["features"] for line in lines] == ["base", "noprior+log"]
    for line in lines:
        assert len(line["validation_roc_auc_mean"]) == 1 and len(line["final_per_fold"]) == 2
        assert 0.0 <= line["final"] <= 1.0

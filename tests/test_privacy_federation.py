"""DP-SGD inside the federation: real Redis, real hospital and aggregator worker processes, real ciphertexts."""

from __future__ import annotations

from pathlib import Path

import pytest
from federation_support import small_simulation

from coordinator.loop import Coordinator
from coordinator.run import create_run
from coordinator.simulation import default_model, simulation_config
from coordinator.transport import CeleryTransport
from medheaven.crypto.planning import plan_ckks_parameters
from medheaven.federated.paths import RunPaths
from medheaven.federated.wire import LocalTraining
from medheaven.privacy import DpConfig, PrivacyLedger
from medheaven.privacy.accountant import LedgerEntry
from medheaven.settings import Settings
from workers.app import create_app
from workers.cluster import ProcessCluster

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("scheme", ["masked", "ckks", "plaintext"])
def test_privacy_hospital_at_budget_left_out_and_round_proceeds(tmp_path: Path, redis_url: str, scheme: str) -> None:
    """A hospital at its budget is left out of the round by the coordinator, which knows from the hospital's signed
    statistics receipt that one more round would exceed its target ε; the round opens once, without it, and
    commits with the others under the quorum rule. Under the masked default that matters twice: an attempt opened
    with it would be closed by its refusal (the cohort's masks cannot cancel without it), and the survivors'
    re-training in a fresh attempt would be charged to their budgets again. So every scheme plans exactly one
    round of budget for its one round: a double charge would make the survivors refuse too."""
    plaintext = scheme == "plaintext"
    params = plan_ckks_parameters() if scheme == "ckks" else None
    simulation = small_simulation(tmp_path, rows=2000, params=params)
    run = f"dp-{scheme}"
    dp = DpConfig(target_epsilon=3.0, delta=1e-5, clip=1.0)
    training = LocalTraining(batch_size=32, learning_rate=1e-3, dp=dp, planned_rounds=1)
    config = simulation_config(
        simulation,
        run=run,
        rounds=1,
        min_hospitals=2,
        round_timeout=300,
        training=training,
        plaintext=plaintext,
        score_test=False,
    )
    spent_hospital = simulation.hospitals[0]
    # this hospital already spent more than ε=3 on these patients (its ledger, kept next to its data, says so)
    ledger_path = simulation.data_files[spent_hospital].parent / ".privacy" / f"{spent_hospital}-{run}.json"
    PrivacyLedger(3.0, 1e-5, (LedgerEntry(round=0, steps=50, sampling_rate=1.0, noise_multiplier=0.8),)).save(
        ledger_path
    )
    store = simulation.store()
    create_run(store, config, model=default_model(simulation), layout=simulation.layout)
    app = create_app(Settings(broker_url=redis_url, store=simulation.store_url()), hospitals=list(simulation.hospitals))
    seen: list[dict[str, str]] = []

    class Watch:
        def round_started(self, spec: object) -> None: ...
        def round_progress(self, progress) -> None:  # type: ignore[no-untyped-def]
            seen.append({h: s.state for h, s in progress.statuses.items()})

        def round_finished(self, record: object) -> None: ...
        def message(self, text: str) -> None: ...

    with ProcessCluster(base_env={}, log_dir=tmp_path / "logs") as cluster:
        cluster.start_aggregator(simulation.aggregator_env(broker_url=redis_url))
        for hospital in simulation.hospitals:
            cluster.start_hospital(hospital, simulation.hospital_env(hospital, broker_url=redis_url))
        cluster.wait_ready(app, timeout=180)
        history = Coordinator(store, CeleryTransport(app), config, poll_interval=0.1, observer=Watch()).run()
    assert [r["round"] for r in history] == [1]
    others = sorted(h for h in simulation.hospitals if h != spent_hospital)
    assert sorted(history[0]["participants"]) == others
    # one attempt, opened without the spent hospital: nothing failed, nobody re-trained
    paths = RunPaths(run)
    assert history[0]["attempt"] == 1 and not store.exists(paths.failed_attempts)
    spec = store.get_json(paths.spec("update", 1))
    assert sorted(spec["hospitals"]) == others and spec["attempt"] == 1
    assert sorted(spec["cohort"]) == (others if scheme == "masked" else [])
    assert any(states.get(spent_hospital) == "budget spent" for states in seen)
    assert history[0]["statuses"][spent_hospital] == "budget spent"
    assert "privacy budget is spent" in history[0]["reasons"][spent_hospital]
    # the spent hospital never trained: its ledger is as it was
    assert len(PrivacyLedger.load(ledger_path, budget_epsilon=3.0, delta=1e-5).entries) == 1
    for hospital in others:  # each trained hospital's own ledger records exactly one round within the budget
        own = simulation.data_files[hospital].parent / ".privacy" / f"{hospital}-{run}.json"
        ledger = PrivacyLedger.load(own, budget_epsilon=3.0, delta=1e-5)
        assert [entry.round for entry in ledger.entries] == [1]  # charged once: no second attempt
        spent = ledger.spent()
        assert 0.5 < spent <= 3.0 * 1.001
        # the (ε, δ) each hospital signed in its receipt travels to the manifest and the history
        assert history[0]["privacy"][hospital]["epsilon"] == pytest.approx(spent)
        assert history[0]["privacy"][hospital]["delta"] == 1e-5
    manifest = store.get_json(f"{run}/rounds/1/manifest.json")
    assert {e["hospital"]: e["privacy"]["epsilon"] for e in manifest["folded"]} == {
        h: history[0]["privacy"][h]["epsilon"] for h in others
    }

"""The statistics phase end to end at the key ceremony's defaults (100 hospitals, 10^6 samples, t = 2^47) with
``--max-abs-feature 1000``: planned in two-limb lanes, masked, folded, committed and standardised like the pooled
plaintext; and a run described in the older one-lane layout still runs and reads as it was written."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np
import pytest
from federation_support import small_simulation

from coordinator.run import create_run
from coordinator.simulation import Simulation, default_model, hospital_nodes, run_in_threads, simulation_config
from medheaven.crypto.bfv_planning import plan_bfv_parameters
from medheaven.data import Standardiser, SufficientStats
from medheaven.federated.aggregator import AggregatorNode
from medheaven.federated.paths import RunPaths
from medheaven.federated.phase import Phase
from medheaven.federated.results import committed_manifest
from medheaven.federated.verify import verify_round
from medheaven.federated.wire import RoundSpec, RunDescription


@pytest.fixture(scope="module")
def defaults(tmp_path_factory: pytest.TempPathFactory) -> Simulation:
    simulation = small_simulation(tmp_path_factory.mktemp("stats-defaults"), hospitals=3, rows=1500,
                                  params=plan_bfv_parameters())  # fmt: skip
    return dataclasses.replace(simulation, max_abs_feature=1000.0)


def _stats_phase(simulation: Simulation, description: RunDescription) -> Standardiser:
    """The statistics phase through the production nodes (no broker): every hospital uploads, the aggregator
    folds and commits, and one hospital decrypts the standardiser."""
    store = simulation.store()
    hospitals = simulation.hospitals
    spec = RoundSpec(
        run=description.run, round=0, attempt=1, kind="stats", hospitals=hospitals, quorum=len(hospitals),
        deadline=time.time() + 3600, base_sha256="", opened_at=time.time(), cohort=hospitals,
    )  # fmt: skip
    store.put_json(RunPaths(description.run).spec(Phase.STATS, 0), spec.to_dict())
    nodes = hospital_nodes(simulation)
    aggregator = AggregatorNode(store)
    for hospital in hospitals:
        receipt = nodes[hospital].compute_stats(spec)
        assert aggregator.fold(receipt.to_dict())["status"] == "folded"
    assert aggregator.finalise(description.run, Phase.STATS, 0, 1)["status"] == "committed"
    return nodes[hospitals[0]].standardiser(description.run)


def _pooled(simulation: Simulation, run: str) -> tuple[Standardiser, np.ndarray]:
    nodes = hospital_nodes(simulation)
    rows = np.vstack([nodes[h]._data(nodes[h]._run(run)).train_x for h in simulation.hospitals])
    return Standardiser.from_stats(SufficientStats.of(rows)), rows


def _assert_standardises_like_pooled(federated: Standardiser, pooled: Standardiser, rows: np.ndarray) -> None:
    np.testing.assert_allclose(federated.mean, pooled.mean, rtol=1e-12, atol=2.0**-40)
    np.testing.assert_allclose(federated.scale, pooled.scale, rtol=2.0**-24)
    ours, theirs = federated.apply(rows), pooled.apply(rows)
    assert np.all(np.abs(ours - theirs) <= np.spacing(np.abs(theirs)))  # at most one float32 step


def test_stats_phase_at_the_key_ceremony_defaults_plans_two_limb_lanes_and_standardises(defaults: Simulation) -> None:
    config = simulation_config(defaults, run="stats-defaults", rounds=1, score_test=False)
    description = create_run(defaults.store(), config, model=default_model(defaults, hidden=(8,)),
                             layout=defaults.layout, max_abs_feature=1000.0)  # fmt: skip
    assert description.stats_lanes is not None and description.stats_lanes.scale_bits == 45
    stored = RunDescription.from_dict(defaults.store().get_json(RunPaths(description.run).model))
    assert stored.stats_lanes == description.stats_lanes
    assert (
        Phase.STATS.vector_length(stored)
        == 5 * Phase.STATS.vector_length(dataclasses.replace(stored, stats_lanes=None)) // 3
    )
    assert Phase.STATS.scale_bits(stored) == 0  # integer lanes; the step 2^-45 is inside them
    federated = _stats_phase(defaults, stored)
    manifest = committed_manifest(defaults.store(), description.run, kind=Phase.STATS, round_number=0)
    assert manifest.result_size > 0
    pooled, rows = _pooled(defaults, description.run)
    _assert_standardises_like_pooled(federated, pooled, rows)


def test_stats_phase_and_a_training_round_run_through_the_coordinator_at_the_defaults(defaults: Simulation) -> None:
    config = simulation_config(defaults, run="stats-defaults-loop", rounds=1, score_test=False)
    result, nodes = run_in_threads(defaults, config, model=default_model(defaults, hidden=(8,)))
    assert len(result.history) == 1
    pooled, rows = _pooled(defaults, config.run)
    _assert_standardises_like_pooled(nodes[defaults.hospitals[0]].standardiser(config.run), pooled, rows)
    from medheaven.crypto.codec import load_secret_keys

    report = verify_round(defaults.store(), load_secret_keys(defaults.keys.secret), config.run, 1)
    assert report["total_samples_match"]


def test_stats_phase_of_a_run_in_the_older_one_lane_layout_still_runs_and_reads(tmp_path: Path) -> None:
    """A model.json written before the two-limb lanes (no ``stats_lanes``) keeps its 3-per-feature vector at
    ``packing.stats_scale_bits``: its committed statistics stay readable, and such a run still completes."""
    simulation = small_simulation(tmp_path, hospitals=3, rows=900)  # the simulation plan (t = 2^50): one lane fits
    config = simulation_config(simulation, run="stats-one-lane", rounds=1, score_test=False)
    description = create_run(simulation.store(), config, model=default_model(simulation, hidden=(8,)),
                             layout=simulation.layout, max_abs_feature=simulation.max_abs_feature)  # fmt: skip
    older = dataclasses.replace(description, stats_lanes=None)
    assert "stats_lanes" not in older.to_dict()
    simulation.store().put_json(RunPaths(older.run).model, older.to_dict())  # as an older MedHeaven wrote it
    features = Phase.STATS.vector_length(older) // 3
    assert Phase.STATS.vector_length(description) == 5 * features
    federated = _stats_phase(simulation, RunDescription.from_dict(older.to_dict()))
    manifest = committed_manifest(simulation.store(), older.run, kind=Phase.STATS, round_number=0)
    assert manifest.result_size > 0
    pooled, _ = _pooled(simulation, older.run)
    # one lane at the older step 2^-s (s = stats_scale_bits): the mean errs by at most 2^-(s+1)
    np.testing.assert_allclose(federated.mean, pooled.mean, atol=2.0 ** -(Phase.STATS.scale_bits(older) + 1))

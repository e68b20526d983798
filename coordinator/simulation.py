"""A whole federation on one machine: the embedded demo, the end-to-end tests and the benchmarks use this.

``prepare_simulation`` splits a data set into hospitals (patients never straddle hospitals or train/test),
runs the key ceremony and fills a local store. ``run_simulation`` then runs the same coordinator either on worker
threads in this process (``memory://``, no services) or on real worker processes over Redis.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from coordinator.loop import Coordinator, Observer
from coordinator.run import RunConfig, create_run
from coordinator.transport import CeleryTransport
from medheaven.crypto.bfv_planning import plan_bfv_parameters, plan_stats_lanes
from medheaven.crypto.codec import Parameters, load_secret_keys
from medheaven.crypto.masks import load_agreement_key
from medheaven.crypto.signing import load_signing_key
from medheaven.federated.aggregator import AggregatorNode
from medheaven.federated.hospital import HospitalNode
from medheaven.federated.nodes import schema_reader
from medheaven.federated.server_optimiser import ServerOptimiser
from medheaven.federated.setup import HospitalFiles, KeyFiles, set_up_federation
from medheaven.federated.wire import LocalTraining
from medheaven.model import ModelKind, ModelSpec
from medheaven.settings import Settings
from medheaven.store.local import LocalStore


@dataclass(frozen=True)
class Simulation:
    root: Path
    hospitals: tuple[str, ...]
    data_files: dict[str, Path]
    test_file: Path
    layout: dict[str, Any]
    keys: KeyFiles
    identities: dict[str, HospitalFiles]
    #: from the schema's max_abs_feature, else planned from the pooled data a simulation has (a real federation
    #: never pools: there it is MEDHEAVEN_MAX_ABS_FEATURE or --max-abs-feature)
    max_abs_feature: float = 1000.0

    @property
    def store_dir(self) -> Path:
        return self.root / "store"

    def store(self) -> LocalStore:
        return LocalStore(self.store_dir)

    def store_url(self) -> str:
        return f"file://{self.store_dir.resolve()}"

    def hospital_env(self, hospital: str, *, broker_url: str) -> dict[str, str]:
        """The MEDHEAVEN_* environment a real hospital worker of this simulation gets."""
        return {
            "MEDHEAVEN_BROKER_URL": broker_url,
            "MEDHEAVEN_STORE": self.store_url(),
            "MEDHEAVEN_HOSPITAL_ID": hospital,
            "MEDHEAVEN_DATA_PATH": str(self.data_files[hospital].resolve()),
            "MEDHEAVEN_SCHEMA_NAME": "prepared",
            "MEDHEAVEN_SECRET_CONTEXT": str(self.keys.secret.resolve()),
            "MEDHEAVEN_SIGNING_KEY": str(self.identities[hospital].signing_key.resolve()),
        }

    def aggregator_env(self, *, broker_url: str) -> dict[str, str]:
        return {
            "MEDHEAVEN_BROKER_URL": broker_url,
            "MEDHEAVEN_STORE": self.store_url(),
            "MEDHEAVEN_CONTEXT_FINGERPRINT": self.keys.fingerprint,
        }


def prepare_simulation(
    root: Path,
    *,
    data: Path | None = None,
    schema: str = "diabetes130",
    schema_file: Path | None = None,
    hospitals: int = 3,
    scheme: str = "iid",
    test_fraction: float = 0.2,
    seed: int = 0,
    synthetic_rows: int = 20000,
    params: Parameters | None = None,
) -> Simulation:
    from medheaven.data import (
        encode_features,
        fit_layout,
        generate_synthetic,
        get_schema,
        load_dataset,
        load_frame,
        split_dataset,
        write_split,
    )

    source_schema = get_schema(schema, schema_file=schema_file)
    if data is None:
        source_schema = get_schema("diabetes130")
        raw = generate_synthetic(synthetic_rows, seed=seed)
        frame = load_frame(raw, source_schema, source="synthetic diabetes130 sample")
    else:
        frame = load_dataset(data, source_schema)
    parts, test = split_dataset(frame, hospitals=hospitals, scheme=scheme, test_fraction=test_fraction, seed=seed)
    layout = fit_layout(frame, source_schema)
    max_abs_feature = source_schema.max_abs_feature or _planned_bound(encode_features(frame, layout))
    data_dir = root / "data"
    write_split(
        data_dir,
        parts,
        test,
        layout,
        source_schema,
        meta={"source": str(data) if data else "synthetic", "scheme": scheme, "seed": seed},
    )
    store = LocalStore(root / "store")
    hospital_ids = sorted(parts)
    keys, identities = set_up_federation(
        root / "keys",
        store,
        hospital_ids,
        params or simulation_parameters(rows=len(frame), max_abs_feature=max_abs_feature),
    )
    return Simulation(
        root=root,
        hospitals=tuple(hospital_ids),
        data_files={h: data_dir / f"{h}.csv" for h in hospital_ids},
        test_file=data_dir / "test.csv",
        layout=layout.to_dict(),
        keys=keys,
        identities=identities,
        max_abs_feature=max_abs_feature,
    )


def simulation_parameters(*, rows: int = 500_000, max_abs_feature: float = 1000.0) -> Parameters:
    """bfv-masked planned for a one-machine federation from its data: at most 20 hospitals and ``rows`` patients.

    The sample bound is the data's own row count (rounded up to a power of ten), which is what the weights' step
    2^-s is planned from; 20 hospitals give t = 2^50 and so a finer step than the key ceremony's 100. (The
    statistics phase no longer needs this: its two-limb lanes, ``bfv_planning.StatsLanes``, plan a 2^-45 step at
    the ceremony's defaults too.)
    """
    samples = 10 ** max(4, math.ceil(math.log10(max(rows, 1))))
    planned = plan_bfv_parameters(max_hospitals=20, max_total_samples=samples)
    plan_stats_lanes(planned, max_abs_feature=max_abs_feature)  # raises ParameterPlanningError naming the bound
    return planned


def _planned_bound(features: Any) -> float:
    import numpy as np

    from medheaven.data.encoding import planned_feature_bound

    finite = features[np.isfinite(features)]
    return planned_feature_bound(float(np.max(np.abs(finite))) if finite.size else 0.0)


@dataclass
class SimulationResult:
    run: str
    history: list[dict[str, Any]]
    test: dict[str, Any] | None
    audit: dict[tuple[str, int], dict[str, Any]] = field(default_factory=dict)


def default_model(
    simulation: Simulation,
    *,
    hidden: tuple[int, ...] = ModelSpec.hidden,
    dropout: float = ModelSpec.dropout,
    l2: float = ModelSpec.l2,
    seed: int = 0,
) -> ModelSpec:
    """The readmission MLP of the centralised baseline (medheaven.evaluation.baseline), so results compare like for like."""
    from medheaven.data import FeatureLayout

    n_features = FeatureLayout.from_dict(simulation.layout).n_features
    kind: ModelKind = "mlp" if hidden else "logreg"
    return ModelSpec(
        n_features=n_features, kind=kind, hidden=hidden, dropout=dropout if hidden else 0.0, l2=l2, seed=seed
    )


def hospital_nodes(simulation: Simulation, *, audit: bool = False) -> dict[str, HospitalNode]:
    secret = load_secret_keys(simulation.keys.secret)
    reader = schema_reader("prepared", None)
    return {
        h: HospitalNode(
            hospital_id=h,
            store=simulation.store(),
            data_path=simulation.data_files[h],
            reader=reader,
            secret=secret,
            signing_key=load_signing_key(simulation.identities[h].signing_key, hospital_id=h),
            agreement_key=load_agreement_key(simulation.identities[h].agreement_key),
            audit=audit,
        )
        for h in simulation.hospitals
    }


def run_in_threads(
    simulation: Simulation,
    config: RunConfig,
    *,
    model: ModelSpec,
    observer: Observer | None = None,
    audit: bool = False,
    retry_advice: str | None = None,
) -> tuple[SimulationResult, dict[str, HospitalNode]]:
    """The embedded default: memory:// broker, worker threads, local store, no services."""
    from workers.app import create_app
    from workers.cluster import ThreadCluster

    app = create_app(Settings(broker_url="memory://", store=simulation.store_url()), hospitals=list(config.hospitals))
    store = simulation.store()
    create_run(store, config, model=model, layout=simulation.layout, max_abs_feature=simulation.max_abs_feature)
    nodes = hospital_nodes(simulation, audit=audit)
    aggregator = AggregatorNode(simulation.store(), expected_fingerprint=simulation.keys.fingerprint)
    with ThreadCluster(app, hospitals=list(config.hospitals), node_factory=nodes.__getitem__, aggregator=aggregator):
        coordinator = Coordinator(
            store, CeleryTransport(app), config, poll_interval=0.5, observer=observer, retry_advice=retry_advice
        )
        history = coordinator.run()
    return SimulationResult(config.run, history, _test_record(store, config.run)), nodes


def _test_record(store: LocalStore, run: str) -> dict[str, Any] | None:
    from medheaven.federated.paths import RunPaths

    key = RunPaths(run).test_scores()
    return dict(store.get_json(key)) if store.exists(key) else None


def simulation_config(
    simulation: Simulation,
    *,
    run: str,
    rounds: int,
    min_hospitals: int | None = None,
    round_timeout: float = 600.0,
    training: LocalTraining | None = None,
    plaintext: bool = False,
    score_test: bool = True,
    server: ServerOptimiser | None = None,
) -> RunConfig:
    return RunConfig(
        run=run,
        hospitals=simulation.hospitals,
        rounds=rounds,
        min_hospitals=min_hospitals or len(simulation.hospitals),
        round_timeout=round_timeout,
        training=training or LocalTraining(),
        test_path=str(simulation.test_file.resolve()) if score_test else None,
        plaintext=plaintext,
        server=server or ServerOptimiser(),
    )


def run_in_processes(
    simulation: Simulation,
    config: RunConfig,
    *,
    model: ModelSpec,
    broker_url: str,
    observer: Observer | None = None,
    workers_per_hospital: int = 1,
    ready_timeout: float = 180.0,
    retry_advice: str | None = None,
) -> SimulationResult:
    """The same federation on real worker processes over Redis: one aggregator, N processes per hospital."""
    from workers.app import create_app
    from workers.cluster import ProcessCluster

    app = create_app(Settings(broker_url=broker_url, store=simulation.store_url()), hospitals=list(config.hospitals))
    store = simulation.store()
    create_run(store, config, model=model, layout=simulation.layout, max_abs_feature=simulation.max_abs_feature)
    with ProcessCluster(base_env={}, log_dir=simulation.root / "logs") as cluster:
        cluster.start_aggregator(simulation.aggregator_env(broker_url=broker_url))
        for hospital in config.hospitals:
            for _ in range(workers_per_hospital):
                cluster.start_hospital(hospital, simulation.hospital_env(hospital, broker_url=broker_url))
        cluster.wait_ready(app, timeout=ready_timeout)
        coordinator = Coordinator(
            store, CeleryTransport(app), config, poll_interval=0.5, observer=observer, retry_advice=retry_advice
        )
        history = coordinator.run()
    return SimulationResult(config.run, history, _test_record(store, config.run))

"""Run configuration and run creation: what the coordinator decides once, before round 1."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from medheaven.crypto.bfv_planning import BfvParameters, plan_stats_lanes
from medheaven.crypto.codec import Parameters, public_keys_from_bytes
from medheaven.crypto.packing import stats_scale_bits
from medheaven.crypto.planning import plan_ckks_parameters
from medheaven.crypto.signing import HospitalRegistry, validate_hospital_id
from medheaven.errors import ConfigurationError, PackingError, ParameterPlanningError, RunStateError
from medheaven.feature_layout import FeatureLayout
from medheaven.federated.paths import CONTEXT_KEY, REGISTRY_KEY, RunPaths
from medheaven.federated.protocol import is_masked
from medheaven.federated.server_optimiser import ServerOptimiser
from medheaven.federated.wire import PLAINTEXT_FINGERPRINT, RUN_ID, LocalTraining, RunDescription
from medheaven.model import ModelSpec
from medheaven.records import decode_record, encode_record
from medheaven.store.base import Store


@dataclass(frozen=True)
class RunConfig:
    run: str
    hospitals: tuple[str, ...]
    rounds: int
    min_hospitals: int
    round_timeout: float
    training: LocalTraining = field(default_factory=LocalTraining)
    evaluator: str | None = None  # key holder that encrypts round 0 and scores the test file
    test_path: str | None = None
    plaintext: bool = False  # INSECURE comparison mode: measures what encryption costs, nothing else
    server: ServerOptimiser = field(default_factory=ServerOptimiser)  # the hospitals' server step (model.json)

    def __post_init__(self) -> None:
        if not RUN_ID.fullmatch(self.run):
            raise ConfigurationError(f"run id {self.run!r}: use letters, digits, '.', '_' or '-' (max 64)")
        if not self.hospitals:
            raise ConfigurationError("a run needs at least one hospital (--hospitals a,b,c)")
        for hospital in self.hospitals:
            validate_hospital_id(hospital)
        if len(set(self.hospitals)) != len(self.hospitals):
            raise ConfigurationError(f"--hospitals lists a hospital twice: {','.join(self.hospitals)}")
        if not 1 <= self.min_hospitals <= len(self.hospitals):
            raise ConfigurationError(
                f"--min-hospitals must be between 1 and the {len(self.hospitals)} hospitals, got {self.min_hospitals}"
            )
        if self.rounds < 1:
            raise ConfigurationError(f"--rounds must be >= 1, got {self.rounds}")

    @property
    def key_holder(self) -> str:
        return self.evaluator or self.hospitals[0]

    def to_dict(self) -> dict[str, Any]:
        return encode_record(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunConfig:
        server = ServerOptimiser.from_dict(data["server"]) if data.get("server") else ServerOptimiser()
        return decode_record(
            cls, data, what=f"run.json of run {data.get('run')!r}", required=("training",), server=server
        )


def create_run(
    store: Store,
    config: RunConfig,
    *,
    model: ModelSpec,
    layout: FeatureLayout | Mapping[str, Any],
    max_abs_feature: float = 1000.0,
) -> RunDescription:
    """Write ``run.json`` and ``model.json`` for a new run; refuses to touch an existing run."""
    paths = RunPaths(config.run)
    if store.exists(paths.model):
        raise RunStateError(
            f"run {config.run!r} already exists in {store.location}: use `medheaven-coordinator resume "
            f"--run-id {config.run}` or choose another --run-id"
        )
    if not math.isfinite(max_abs_feature) or max_abs_feature <= 0:
        raise ConfigurationError(f"--max-abs-feature must be a positive number, got {max_abs_feature}")
    params: Parameters
    if config.plaintext:
        params, fingerprint = plan_ckks_parameters(), PLAINTEXT_FINGERPRINT
    else:
        if not store.exists(CONTEXT_KEY):
            raise ConfigurationError(
                f"{store.location} has no {CONTEXT_KEY}: publish the federation's public context with "
                "`medheaven federation publish --public-context keys/context.public`"
            )
        context = public_keys_from_bytes(store.get(CONTEXT_KEY), source=f"{store.location}/{CONTEXT_KEY}")
        params, fingerprint = context.params, context.fingerprint
    stats_lanes = None
    try:
        if isinstance(params, BfvParameters) and not config.plaintext:
            # bfv-masked: counts, and sums and squares in two limbs (bfv_planning.StatsLanes, derivation there)
            stats_lanes = plan_stats_lanes(params, max_abs_feature=max_abs_feature)
        else:
            stats_scale_bits(params, max_abs_feature=max_abs_feature)
    except (PackingError, ParameterPlanningError) as exc:
        raise ConfigurationError(
            f"--max-abs-feature {max_abs_feature:g} (MEDHEAVEN_MAX_ABS_FEATURE) is too large for this key set: {exc}"
        ) from exc
    registry = (
        HospitalRegistry.from_dict(store.get_json(REGISTRY_KEY)) if store.exists(REGISTRY_KEY) else HospitalRegistry()
    )
    unknown = [h for h in config.hospitals if h not in registry.keys]
    if unknown:
        raise ConfigurationError(
            f"hospitals {', '.join(unknown)} are not registered in {store.location}/{REGISTRY_KEY}: "
            "run `medheaven hospital register --id H --verify-key H.verify.hex` for each"
        )
    description = RunDescription(
        run=config.run,
        model=model,
        params=params,
        fingerprint=fingerprint,
        layout=layout if isinstance(layout, FeatureLayout) else FeatureLayout.from_dict(dict(layout)),
        plaintext=config.plaintext,
        max_abs_feature=max_abs_feature,
        server=config.server,
        stats_lanes=stats_lanes,
    )
    if is_masked(description):
        # every hospital's X25519 public key must be registered before round 1; old registries lack them
        registry.require_agreement_keys(config.hospitals)
    store.create_json(paths.config, config.to_dict())
    store.create_json(paths.model, description.to_dict())
    return description

"""The layout phase, run by ``medheaven-coordinator run`` when no ``--layout`` is given.

Proposals (level names, column kinds) come back as task results; the per-level patient counts are summed under
encryption as the statistics phase of a separate layout run ``<run>.layout`` (same key set, same aggregator path);
a key holder decrypts the sum in its own process and returns only the layout. The coordinator writes it to the
store as ``<run>.layout/layout.json``, which a later run can fetch with ``medheaven store get`` and pass to
``--layout``. See :mod:`medheaven.data.federated_layout`.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from coordinator.loop import Coordinator, Observer
from coordinator.run import RunConfig, create_run
from coordinator.transport import CeleryTransport
from medheaven.data.federated_layout import LevelProposal, candidate_columns, candidate_layout
from medheaven.errors import ConfigurationError, RunStateError
from medheaven.feature_layout import FeatureLayout
from medheaven.federated.layout_phase import layout_run_id
from medheaven.federated.paths import RunPaths
from medheaven.federated.phase import Phase
from medheaven.model import ModelSpec
from medheaven.store.base import Store

#: Default k: a hospital proposes a level only if at least this many of its patients hold it.
DEFAULT_MIN_PATIENTS = 10


class LayoutCoordinator(Coordinator):
    """The statistics phase of the layout run, answered by the hospitals' ``layout_counts`` task."""

    HOSPITAL_TASKS = {Phase.STATS: "layout_counts"}  # noqa: RUF012

    def layout(self, threshold: int) -> FeatureLayout:
        if self.manifest(Phase.STATS, 0) is None:
            self._phase(Phase.STATS, 0, base="")
        holder = self.config.key_holder
        ids = self.transport.send_hospital_task(
            "layout_decide", (self.config.run, holder, threshold), holder, fold=False
        )
        decided = self._await_task(ids["task"], f"layout decision by {holder!r}", self.config.round_timeout)
        return FeatureLayout.from_dict(decided)


def layout_key(run: str) -> str:
    return f"{layout_run_id(run)}/layout.json"


def build_layout(
    store: Store,
    transport: CeleryTransport,
    config: RunConfig,
    *,
    min_patients: int = DEFAULT_MIN_PATIENTS,
    threshold: int | None = None,
    observer: Observer | None = None,
    poll_interval: float = 0.2,
) -> FeatureLayout:
    """Run (or reuse) the layout phase of ``config.run``; returns the layout, also stored at ``layout_key``."""
    if min_patients < 1:
        raise ConfigurationError(f"--level-min-patients must be >= 1, got {min_patients}")
    needed = threshold if threshold is not None else min_patients
    key = layout_key(config.run)
    if store.exists(key):
        return FeatureLayout.from_dict(store.get_json(key))
    layout_config = replace(config, run=layout_run_id(config.run), rounds=1, test_path=None)
    coordinator = LayoutCoordinator(
        store, transport, layout_config, poll_interval=poll_interval, observer=observer,
        retry_advice=f"start `medheaven-coordinator run --run-id {config.run}` again",
    )  # fmt: skip
    proposals = _proposals(coordinator, min_patients)
    candidates, left_out = candidate_layout(proposals)
    coordinator.observer.message(
        f"layout proposals from {', '.join(sorted(proposals))}: {len(candidate_columns(candidates))} candidate "
        f"levels over {len(candidates.categorical)} categorical and {len(candidates.numeric)} numeric columns"
        + (f"; not at every hospital, left out: {', '.join(left_out)}" if left_out else "")
    )
    # only the categorical candidates are counted; the numeric columns were settled by the proposals' kinds
    counted = FeatureLayout(numeric=(), categorical=candidates.categorical)
    existing = RunPaths(layout_config.run).model
    if store.exists(existing):  # an interrupted layout phase: re-attach, but only to the same candidates
        if FeatureLayout.from_dict(store.get_json(existing)["layout"]) != counted:
            raise RunStateError(
                f"{layout_config.run} in {store.location} was started with other candidate levels (a hospital's "
                "data changed since): choose another --run-id"
            )
    else:
        create_run(
            store,
            layout_config,
            model=ModelSpec(n_features=max(len(candidate_columns(candidates)), 1), kind="logreg", seed=0),
            layout=counted,
            max_abs_feature=1.0,  # 0/1 indicators: the statistics' scale keeps all its precision for the counts
        )
    layout = FeatureLayout(numeric=candidates.numeric, categorical=coordinator.layout(needed).categorical)
    store.put_json(key, layout.to_dict())
    coordinator.observer.message(describe_layout(layout, store_key=key, min_patients=min_patients, threshold=needed))
    return layout


def _proposals(coordinator: Coordinator, min_patients: int) -> dict[str, LevelProposal]:
    sent = {
        h: coordinator.transport.send_hospital_task("layout_propose", (h, min_patients), h, fold=False)
        for h in coordinator.config.hospitals
    }
    out: dict[str, LevelProposal] = {}
    for hospital, ids in sent.items():
        result: dict[str, Any] = coordinator._await_task(
            ids["task"], f"layout proposal of {hospital!r}", coordinator.config.round_timeout
        )
        out[hospital] = LevelProposal.from_dict(result, hospital=hospital)
    return out


def describe_layout(layout: FeatureLayout, *, store_key: str, min_patients: int, threshold: int) -> str:
    lines = [
        f"feature layout ({layout.n_features} features; levels proposed by a hospital with >= {min_patients} "
        f"patients and held by >= {threshold} patients in all; the rest are 'other'), stored as {store_key}:"
    ]
    if layout.numeric:
        lines.append(f"  numeric: {', '.join(layout.numeric)}")
    lines.extend(f"  {column}: {', '.join(levels)}" for column, levels in layout.categorical)
    return "\n".join(lines)

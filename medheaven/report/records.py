"""A run's records, read from the store into typed rows the plots and the report work on.

Sources, in order of preference: ``history.json`` (one record per committed round, written by the coordinator)
and the round manifests (the commit records, written by the aggregator). The history is a convenience copy;
whatever it lacks (a round the coordinator did not get to record, the per-hospital timings the phase plot needs)
is taken from the manifests, which are authoritative. Nothing here needs a key: every file read is public to
the store.

Metrics of round ``r`` are those of the *incoming* model (the global model after round ``r - 1``) on each
hospital's own validation split; :attr:`RoundRow.evaluated_round` says which model they describe.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medheaven.errors import DataFileError, RunStateError
from medheaven.federated.fedavg import mean_metrics
from medheaven.federated.paths import CONTEXT_KEY, RunPaths
from medheaven.federated.phase import Phase
from medheaven.federated.wire import Manifest, RunDescription
from medheaven.privacy.spent import ModelPrivacy, model_privacy, run_dp
from medheaven.records import read_json_object
from medheaven.store.base import Store

PHASES = ("fetch_decrypt", "evaluate", "train", "encrypt_upload", "fold")
OTHER_PHASE = "broker/store/wait"
STATES = ("folded", "rejected", "late", "failed", "not selected")
SUMMARY_METRICS = ("loss", "roc_auc", "pr_auc", "brier", "accuracy")


@dataclass(frozen=True)
class RoundRow:
    """One committed training round."""

    round: int
    attempt: int
    evaluated_round: int
    seconds: float
    selected: tuple[str, ...]
    states: dict[str, str]  # hospital -> one of STATES
    rejected: dict[str, str]  # hospital -> reason
    metrics: dict[str, dict[str, float]]  # hospital -> metrics of the incoming model on its validation split
    weighted: dict[str, float]  # means over hospitals (unweighted: validation sizes are not reported)
    phases: dict[str, float]  # PHASES plus OTHER_PHASE; sums to ``seconds`` (see phase_breakdown)
    phase_source: str  # "critical path" or "per-phase maximum"
    bytes_up: int
    global_bytes: int
    # hospital -> the spent (ε, δ, z) it signed in this round's receipt under DP-SGD; empty without DP
    privacy: dict[str, dict[str, float]] = field(default_factory=dict)


@dataclass(frozen=True)
class ValidationPoint:
    """One global model's metrics on the hospitals' validation splits: the start of round ``model_round + 1``,
    or, for the last model, the coordinator's final validation (``final-validation.json``)."""

    model_round: int
    metrics: dict[str, dict[str, float]]
    weighted: dict[str, float]
    final: bool = False


@dataclass(frozen=True)
class StatsRow:
    """The standardisation phase (encrypted sufficient statistics)."""

    participants: tuple[str, ...]
    bytes_up: int
    result_bytes: int
    seconds: float


@dataclass(frozen=True)
class RunRecords:
    run: str
    location: str
    config: dict[str, Any]
    description: RunDescription
    rounds: tuple[RoundRow, ...]
    stats: StatsRow | None
    test: dict[str, Any] | None
    global_sha256: dict[int, str]
    context_bytes: int
    final_validation: ValidationPoint | None = None

    @property
    def validation(self) -> tuple[ValidationPoint, ...]:
        """Validation metrics per global model, in model order (the learning curve)."""
        points = [ValidationPoint(row.evaluated_round, row.metrics, row.weighted) for row in self.rounds]
        if self.final_validation is not None and all(
            p.model_round != self.final_validation.model_round for p in points
        ):
            points.append(self.final_validation)
        return tuple(points)

    @property
    def test_round(self) -> int | None:
        """The round whose model was scored on the held-out test set (the run's selected model)."""
        return int(self.test["round"]) if self.test is not None and "round" in self.test else None

    @property
    def hospitals(self) -> tuple[str, ...]:
        configured = tuple(str(h) for h in self.config.get("hospitals", ()))
        seen = {h for row in self.rounds for h in (*row.selected, *row.states)}
        return (*configured, *sorted(seen - set(configured)))

    @property
    def last_round(self) -> int:
        return max(self.global_sha256) if self.global_sha256 else -1

    def privacy(self, model_round: int | None = None) -> ModelPrivacy | None:
        """Each hospital's spent (ε, δ) behind the model of ``model_round`` (default: the last); None without DP."""
        return model_privacy(run_dp(self.config), [(row.round, row.privacy) for row in self.rounds], up_to=model_round)


@dataclass(frozen=True)
class Baseline:
    """The parts of ``medheaven baseline --json`` the report compares against (held-out test metrics)."""

    centralised: dict[str, float]
    local: dict[str, dict[str, float]]
    source: str
    details: dict[str, Any] = field(default_factory=dict)


def load_run_records(store: Store, run: str) -> RunRecords:
    paths = RunPaths(run)
    if not store.exists(paths.model):
        raise RunStateError(
            f"run {run!r} does not exist in store {store.location}: list the runs with `medheaven store ls`"
        )
    description = RunDescription.from_dict(store.get_json(paths.model))
    config = dict(store.get_json(paths.config)) if store.exists(paths.config) else {}
    history = {int(r["round"]): r for r in store.get_json(paths.history)} if store.exists(paths.history) else {}
    manifests = _update_manifests(store, paths)
    rounds = tuple(
        round_row(manifests[r], history.get(r, {}), hospitals=config.get("hospitals", ()))
        for r in sorted(manifests)
        if r > 0
    )
    stats_key = paths.manifest(Phase.STATS, 0)
    stats = _stats_row(Manifest.from_dict(store.get_json(stats_key))) if store.exists(stats_key) else None
    test = dict(store.get_json(paths.test_scores())) if store.exists(paths.test_scores()) else None
    final_validation = (
        _final_validation(store.get_json(paths.final_validation)) if store.exists(paths.final_validation) else None
    )
    context_bytes = len(store.get(CONTEXT_KEY)) if not description.plaintext and store.exists(CONTEXT_KEY) else 0
    return RunRecords(
        run=run,
        location=store.location,
        config=config,
        description=description,
        rounds=rounds,
        stats=stats,
        test=test,
        global_sha256={r: m.result_sha256 for r, m in manifests.items()},
        context_bytes=context_bytes,
        final_validation=final_validation,
    )


def _final_validation(record: dict[str, Any]) -> ValidationPoint:
    metrics = {str(h): {k: float(v) for k, v in dict(m).items()} for h, m in dict(record.get("metrics", {})).items()}
    weighted = {name: _weighted(metrics, name) for name in SUMMARY_METRICS}
    weighted.update({k: float(v) for k, v in dict(record.get("weighted", {})).items()})
    return ValidationPoint(int(record["round"]), metrics, weighted, final=True)


def _update_manifests(store: Store, paths: RunPaths) -> dict[int, Manifest]:
    manifests: dict[int, Manifest] = {}
    while store.exists(key := paths.manifest(Phase.UPDATE, len(manifests))):
        manifests[len(manifests)] = Manifest.from_dict(store.get_json(key))
    return manifests


def round_row(manifest: Manifest, history: dict[str, Any], *, hospitals: Any = ()) -> RoundRow:
    """One round from its manifest, preferring the coordinator's history record where it has a field."""
    metrics = {e.hospital: dict(e.metrics) for e in manifest.folded}
    weighted = {name: _weighted(metrics, name) for name in SUMMARY_METRICS}
    weighted.update({k: float(v) for k, v in dict(history.get("weighted", {})).items()})
    seconds = float(history.get("seconds", manifest.finalised_at - manifest.opened_at))
    phases, source = phase_breakdown(manifest, seconds, dict(history.get("phases_max", {})))
    return RoundRow(
        round=manifest.round,
        attempt=manifest.attempt,
        evaluated_round=int(history.get("evaluated_round", manifest.round - 1)),
        seconds=seconds,
        selected=tuple(str(h) for h in manifest.selected),
        states=participation(manifest, dict(history.get("statuses", {})), hospitals=tuple(hospitals)),
        rejected={r.hospital: r.reason or "rejected" for r in manifest.rejected},
        metrics=metrics,
        weighted=weighted,
        phases=phases,
        phase_source=source,
        bytes_up=int(history.get("bytes_up", sum(e.size for e in manifest.folded))),
        global_bytes=int(history.get("global_bytes", manifest.result_size)),
        privacy={e.hospital: dict(e.privacy) for e in manifest.folded if e.privacy},
    )


def _weighted(metrics: dict[str, dict[str, float]], name: str) -> float:
    return mean_metrics(metrics, (name,))[name]


def participation(manifest: Manifest, statuses: dict[str, Any], *, hospitals: tuple[str, ...]) -> dict[str, str]:
    """What happened to each hospital this round. The coordinator's statuses tell late from failed; without them
    a selected hospital that was neither folded nor rejected is counted as late."""
    folded = set(manifest.participants)
    rejected = {r.hospital for r in manifest.rejected}
    states: dict[str, str] = {}
    for hospital in (*hospitals, *manifest.selected):
        if hospital in folded:
            states[hospital] = "folded"
        elif hospital in rejected:
            states[hospital] = "rejected"
        elif hospital not in manifest.selected:
            states[hospital] = "not selected"
        else:
            state = str(statuses.get(hospital, "late"))
            states[hospital] = state if state in STATES else "late"
    return states


def phase_breakdown(manifest: Manifest, seconds: float, phases_max: dict[str, Any]) -> tuple[dict[str, float], str]:
    """Split the round's wall time into phases that add up to it.

    The round ends when the last hospital is folded (then the aggregator finalises), so the *critical path* is
    that hospital's own phases; everything else on the clock (queueing, broker and store round trips, waiting for
    the deadline, finalising) is the rest. Old records without fold times fall back to the per-phase maximum over
    hospitals that ``history.json`` keeps, which need not lie on one hospital's path.
    """
    last = max(manifest.folded, key=lambda e: e.at, default=None)
    if last is not None and last.at > 0.0:  # records written before fold times were kept have none
        timings = dict(last.timings)
        source = f"critical path ({last.hospital}, the last hospital folded)"
    else:
        timings = {k: float(v) for k, v in phases_max.items()}
        source = "per-phase maximum over hospitals"
    phases = {phase: max(timings.get(phase, 0.0), 0.0) for phase in PHASES}
    phases[OTHER_PHASE] = max(seconds - sum(phases.values()), 0.0)
    return phases, source


def _stats_row(manifest: Manifest) -> StatsRow:
    return StatsRow(
        participants=manifest.participants,
        bytes_up=sum(e.size for e in manifest.folded),
        result_bytes=manifest.result_size,
        seconds=manifest.finalised_at - manifest.opened_at,
    )


def load_baseline(path: Path) -> Baseline:
    """Read the output of ``medheaven baseline --json``."""
    remedy = "write it with `medheaven baseline --json`"
    data = read_json_object(path, what="baseline file", remedy=remedy, error=DataFileError)
    if not isinstance(data.get("centralised"), dict):
        raise DataFileError(
            f"baseline file {path} has no 'centralised' results: it must be the output of `medheaven baseline --json`"
        )
    local = data.get("local", {})
    if not isinstance(local, dict):
        raise DataFileError(f"baseline file {path}: 'local' must map hospitals to their results")
    details: dict[str, Any] = {k: data[k] for k in ("data", "schema", "split", "test", "training") if k in data}
    return Baseline(
        centralised=_numbers(data["centralised"]),
        local={str(h): _numbers(v) for h, v in local.items() if isinstance(v, dict)},
        source=str(path),
        details=details,
    )


def _numbers(values: dict[str, Any]) -> dict[str, float]:
    return {str(k): float(v) for k, v in values.items() if isinstance(v, int | float) and not isinstance(v, bool)}

"""The coordinator's records of a run: ``history.json`` (one record per committed training round) and
``failed-attempts.json`` (why each failed attempt failed), where ``status``, ``--json``, the report and model
selection read them. The manifests stay the commit; these are what the coordinator saw (each hospital's state and
reason, the per-round metrics)."""

from __future__ import annotations

from typing import Any

from coordinator.status import RoundProgress, failure_reasons
from medheaven.federated.fedavg import mean_metrics
from medheaven.federated.paths import RunPaths
from medheaven.federated.wire import Manifest, RoundSpec
from medheaven.store.base import Store


def read_history(store: Store, paths: RunPaths) -> list[dict[str, Any]]:
    if not store.exists(paths.history):
        return []
    return list(store.get_json(paths.history))


def read_failed_attempts(store: Store, paths: RunPaths) -> list[dict[str, Any]]:
    if not store.exists(paths.failed_attempts):
        return []
    return list(store.get_json(paths.failed_attempts))


def round_record(manifest: Manifest, progress: RoundProgress) -> dict[str, Any]:
    """Per-round metrics: the incoming model's validation metrics per hospital and their mean over hospitals; and
    each hospital's state in the committed attempt, with why it was not folded."""
    per_hospital = {e.hospital: dict(e.metrics) for e in manifest.folded}
    mean = mean_metrics(per_hospital)
    phases: dict[str, float] = {}
    for entry in manifest.folded:
        for phase, seconds in entry.timings.items():
            phases[phase] = max(phases.get(phase, 0.0), seconds)
    return {
        "round": manifest.round,
        "attempt": manifest.attempt,
        "status": "committed",
        "participants": list(manifest.participants),
        "rejected": [r.to_dict() for r in manifest.rejected],
        "evaluated_round": manifest.round - 1,
        "metrics": per_hospital,
        "weighted": mean,
        # spent (ε, δ) per hospital under DP-SGD, as each hospital signed it in its receipt; absent without DP
        "privacy": {e.hospital: dict(e.privacy) for e in manifest.folded if e.privacy},
        "seconds": manifest.finalised_at - manifest.opened_at,
        "phases_max": phases,
        "bytes_up": sum(e.size for e in manifest.folded),
        "global_bytes": manifest.result_size,
        "statuses": {h: s.state.value for h, s in progress.statuses.items()},
        "reasons": failure_reasons(progress),
    }


def record_round(store: Store, paths: RunPaths, record: dict[str, Any]) -> None:
    """Put a committed round's record into the history, replacing an earlier record of that round."""
    history = [r for r in read_history(store, paths) if r["round"] != record["round"]] + [record]
    store.put_json(paths.history, sorted(history, key=lambda r: int(r["round"])))


def record_failure(
    store: Store,
    paths: RunPaths,
    spec: RoundSpec,
    failure: dict[str, Any],
    progress: RoundProgress | None,
    reasons: dict[str, str],
    *,
    at: float,
) -> None:
    """Keep why an attempt failed where ``status`` and ``--json`` read it, not only in the workers' logs."""
    record = {
        "kind": spec.kind.value,
        "round": spec.round,
        "attempt": spec.attempt,
        "status": "failed",
        "quorum": spec.quorum,
        "folded": list(failure.get("folded", [])),
        "statuses": {h: s.state.value for h, s in progress.statuses.items()} if progress is not None else {},
        "reasons": reasons,
        "at": at,
    }
    earlier = read_failed_attempts(store, paths)
    kept = [r for r in earlier if (r["kind"], r["round"], r["attempt"]) != (spec.kind, spec.round, spec.attempt)]
    store.put_json(paths.failed_attempts, [*kept, record])

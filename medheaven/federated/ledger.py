"""Typed round ledger: what the aggregator has decided about each hospital's answer in one attempt.

``updates/<r>/a<attempt>/ledger.json`` is the source of truth for a round in flight (see ``aggregator.py``). Only
*verified* input reaches it: an entry exists for hospital X only when X's signed receipt and X's signed envelope
were both checked. Forged, replayed or unverifiable messages are counted as ``noise`` and never name a hospital.

The entry dicts keep the key names the manifest has always carried (``hospital``, ``key``, ``sha256``, ``size``,
``metrics``, ``timings``, ``folded_at`` for folded entries; ``hospital``, ``reason``, ``message``, ``at`` for
rejections), so committed manifests and the readers of older ones are unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Any

from medheaven.federated.phase import Phase


class EntryStatus(Enum):
    """What a verified answer became."""

    FOLDED = "folded"
    REJECTED = "rejected"


class FoldStatus(Enum):
    """What one fold message did to the round (the fold task's result)."""

    FOLDED = "folded"  # verified and added to the running sum; the ledger records it
    DUPLICATE = "duplicate"  # this hospital is already folded in this attempt; nothing changed
    REJECTED = "rejected"  # verified as this hospital's answer, but refused (late, bad shape...); the ledger records it
    NOISE = "noise"  # not backed by a correctly signed receipt and envelope: logged and counted, state unchanged
    CLOSED = "closed"  # the attempt is committed, failed or unknown; nothing changed


@dataclass(frozen=True)
class LedgerEntry:
    hospital: str
    status: EntryStatus
    at: float  # when the aggregator decided (unix time)
    key: str = ""
    sha256: str = ""
    size: int = 0
    completed_at: float = 0.0  # the hospital's signed completion time (what lateness is judged on)
    metrics: dict[str, float] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    reason: str = ""
    message: str = ""
    privacy: dict[str, float] = field(default_factory=dict)  # the hospital's signed spent (ε, δ) under DP-SGD

    def to_dict(self) -> dict[str, Any]:
        common: dict[str, Any] = {"hospital": self.hospital, "status": self.status.value}
        if self.status is EntryStatus.FOLDED:
            return {
                **common,
                "key": self.key,
                "sha256": self.sha256,
                "size": self.size,
                "completed_at": self.completed_at,
                "metrics": dict(self.metrics),
                "timings": dict(self.timings),
                "folded_at": self.at,
                **({"privacy": dict(self.privacy)} if self.privacy else {}),
            }
        return {
            **common,
            "reason": self.reason,
            "message": self.message,
            "at": self.at,
            "key": self.key,
            "sha256": self.sha256,
            "completed_at": self.completed_at,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, default: EntryStatus) -> LedgerEntry:
        status = EntryStatus(data.get("status", default.value))
        return cls(
            hospital=str(data["hospital"]),
            status=status,
            at=float(data.get("folded_at" if status is EntryStatus.FOLDED else "at", 0.0)),
            key=str(data.get("key", "")),
            sha256=str(data.get("sha256", "")),
            size=int(data.get("size", 0)),
            completed_at=float(data.get("completed_at", 0.0)),
            metrics={str(k): float(v) for k, v in dict(data.get("metrics", {})).items()},
            timings={str(k): float(v) for k, v in dict(data.get("timings", {})).items()},
            reason=str(data.get("reason", "")),
            message=str(data.get("message", "")),
            privacy={str(k): float(v) for k, v in dict(data.get("privacy", {})).items()},
        )


@dataclass(frozen=True)
class Ledger:
    run: str
    kind: Phase
    round: int
    attempt: int
    folded: tuple[LedgerEntry, ...] = ()
    rejected: tuple[LedgerEntry, ...] = ()
    noise: int = 0  # fold messages refused as unverifiable since this process started watching the attempt

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", Phase(self.kind))

    @property
    def folded_hospitals(self) -> frozenset[str]:
        return frozenset(entry.hospital for entry in self.folded)

    @property
    def rejected_hospitals(self) -> frozenset[str]:
        return frozenset(entry.hospital for entry in self.rejected)

    @property
    def answered(self) -> frozenset[str]:
        return self.folded_hospitals | self.rejected_hospitals

    def with_entry(self, entry: LedgerEntry) -> Ledger:
        if entry.status is EntryStatus.FOLDED:
            return replace(self, folded=(*self.folded, entry))
        return replace(self, rejected=(*self.rejected, entry))

    def with_noise(self) -> Ledger:
        return replace(self, noise=self.noise + 1)

    def to_dict(self) -> dict[str, Any]:
        return {
            "run": self.run,
            "kind": self.kind.value,
            "round": self.round,
            "attempt": self.attempt,
            "folded": [entry.to_dict() for entry in self.folded],
            "rejected": [entry.to_dict() for entry in self.rejected],
            "noise": self.noise,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Ledger:
        return cls(
            run=str(data["run"]),
            kind=Phase(data["kind"]),
            round=int(data["round"]),
            attempt=int(data["attempt"]),
            folded=tuple(LedgerEntry.from_dict(e, default=EntryStatus.FOLDED) for e in data.get("folded", [])),
            rejected=tuple(LedgerEntry.from_dict(e, default=EntryStatus.REJECTED) for e in data.get("rejected", [])),
            noise=int(data.get("noise", 0)),
        )

    @classmethod
    def empty(cls, run: str, kind: Phase, round_number: int, attempt: int) -> Ledger:
        return cls(run=run, kind=kind, round=round_number, attempt=attempt)


@dataclass(frozen=True)
class FoldOutcome:
    """The result of one fold task (msgpack over the result backend): small, no envelope, no secret."""

    status: FoldStatus
    hospital: str
    round: int
    reason: str = ""
    message: str = ""
    fold_seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"status": self.status.value, "hospital": self.hospital, "round": self.round}
        if self.reason or self.message:
            data.update(reason=self.reason, message=self.message)
        if self.status is FoldStatus.FOLDED:
            data["fold_seconds"] = self.fold_seconds
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FoldOutcome:
        return cls(
            status=FoldStatus(data["status"]),
            hospital=str(data.get("hospital", "")),
            round=int(data.get("round", 0)),
            reason=str(data.get("reason", "")),
            message=str(data.get("message", "")),
            fold_seconds=float(data.get("fold_seconds", 0.0)),
        )

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
from medheaven.records import decode_record


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
    at: float = 0.0  # when the aggregator decided (unix time); 0 in entries written before it was kept
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
        at = "folded_at" if status is EntryStatus.FOLDED else "at"
        return decode_record(
            cls,
            data,
            what=f"ledger entry of hospital {data.get('hospital')!r}",
            keys={"at": at},
            status=status,
        )


def entries_of(data: dict[str, Any], status: EntryStatus) -> tuple[LedgerEntry, ...]:
    """The entries of one status a stored record lists under that status' name (absent: none)."""
    return tuple(LedgerEntry.from_dict(e, default=status) for e in data.get(status.value, []))


def ledger_entries(data: dict[str, Any]) -> tuple[tuple[LedgerEntry, ...], tuple[LedgerEntry, ...]]:
    """The folded and the rejected entries a stored ledger or manifest lists (absent: none)."""
    return entries_of(data, EntryStatus.FOLDED), entries_of(data, EntryStatus.REJECTED)


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
        folded, rejected = ledger_entries(data)
        return decode_record(cls, data, what="round ledger", folded=folded, rejected=rejected)

    @classmethod
    def empty(cls, run: str, kind: Phase, round_number: int, attempt: int) -> Ledger:
        return cls(run=run, kind=kind, round=round_number, attempt=attempt)


@dataclass(frozen=True)
class AttemptTombstone:
    """``failed-<attempt>.json``: the record that closes an attempt for good (written by the aggregator's finalise).

    For a masked attempt it names the cohort and who was missing: nobody may ever fold into, complete or unmask
    this attempt again (hospitals refuse to upload into it; the aggregator refuses receipts for it), and the
    fresh attempt that follows leaves out only hospitals with no upload in it (``round_policy.unsafe_drops``).
    The keys are those the failure record has always had, plus ``cohort``, ``uploaded`` and ``format``.
    """

    run: str
    kind: str
    round: int
    attempt: int
    quorum: int = 0
    reason: str = ""
    at: float = 0.0
    folded: tuple[str, ...] = ()
    rejected: tuple[LedgerEntry, ...] = ()
    missing: tuple[str, ...] = ()  # cohort (or selected) members with no verified answer
    cohort: tuple[str, ...] = ()  # empty for an unmasked attempt
    uploaded: tuple[str, ...] = ()  # hospitals with an upload of this attempt in the store when it was closed
    noise: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": 2,
            "run": self.run,
            "kind": self.kind,
            "round": self.round,
            "attempt": self.attempt,
            "quorum": self.quorum,
            "folded": list(self.folded),
            "rejected": [entry.to_dict() for entry in self.rejected],
            "missing": list(self.missing),
            "cohort": list(self.cohort),
            "uploaded": list(self.uploaded),
            "noise": self.noise,
            "reason": self.reason,
            "at": self.at,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AttemptTombstone:
        # its "folded" lists hospital names, not entries: only the rejected list holds ledger entries
        return decode_record(cls, data, what="attempt failure record", rejected=entries_of(data, EntryStatus.REJECTED))


@dataclass(frozen=True)
class FoldOutcome:
    """The result of one fold task (msgpack over the result backend): small, no envelope, no secret."""

    status: FoldStatus
    hospital: str = ""
    round: int = 0
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
        return decode_record(cls, data, what="fold outcome")

"""The signed privacy reports the coordinator has of each hospital, read from the store for one attempt.

What is decided from them (who cannot afford the next round) is ``medheaven.privacy.budget``; this module only
finds the receipts: folded ledger entries and manifest entries carry the privacy fields each hospital signed.
"""

from __future__ import annotations

from collections.abc import Iterator

from medheaven.federated.ledger import Ledger
from medheaven.federated.paths import RunPaths
from medheaven.federated.phase import Phase
from medheaven.federated.wire import Manifest
from medheaven.store.base import Store

Receipt = tuple[str, dict[str, float], str]  # hospital, its signed privacy fields, which receipt said so


def privacy_receipts(store: Store, paths: RunPaths, round_number: int, attempt: int) -> Iterator[Receipt]:
    """Every folded receipt's privacy fields before ``attempt`` of training round ``round_number``, newest first:
    this round's failed attempts, then each earlier round's committed attempt and its failed ones, then the
    statistics phase. Lazy, so that a caller that has what it needs stops reading the store."""

    def manifest(kind: Phase, number: int) -> Manifest | None:
        key = paths.manifest(kind, number)
        return Manifest.from_dict(store.get_json(key)) if store.exists(key) else None

    def folded_in(committed: Manifest, where: str) -> Iterator[Receipt]:
        for entry in committed.folded:
            yield entry.hospital, dict(entry.privacy), where

    for number in range(round_number, 0, -1):
        last = attempt - 1
        if number < round_number:
            committed = manifest(Phase.UPDATE, number)
            if committed is None:
                continue
            yield from folded_in(committed, f"round {number} attempt {committed.attempt}")
            last = committed.attempt - 1
        for earlier in range(last, 0, -1):
            key = paths.ledger(Phase.UPDATE, number, earlier)
            if store.exists(key):
                for entry in Ledger.from_dict(store.get_json(key)).folded:
                    yield entry.hospital, dict(entry.privacy), f"round {number} attempt {earlier}"
    stats = manifest(Phase.STATS, 0)
    if stats is not None:
        yield from folded_in(stats, "the statistics phase")

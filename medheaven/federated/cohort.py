"""Reading a round's closed attempts from the store for the cohort rule (``round_policy.cohort_violations``).

The coordinator applies the rule before it opens a fresh attempt, and every hospital applies it again before it
uploads into an attempt after the first: a hospital's masked upload is only safe if no earlier attempt of the round
can be combined with the new one to isolate somebody's update, and it does not take the coordinator's word for it.
"""

from __future__ import annotations

from medheaven.federated.ledger import AttemptTombstone
from medheaven.federated.paths import RunPaths
from medheaven.federated.phase import Phase
from medheaven.federated.round_policy import EarlierAttempt
from medheaven.store.base import Store


def earlier_attempts(
    store: Store, run: str, kind: Phase, round_number: int, *, before: int
) -> tuple[EarlierAttempt, ...]:
    """Every failed attempt of the round numbered below ``before``, with who has an upload of it in the store *now*
    (a straggler's upload that landed after the attempt was closed counts: the store holds it)."""
    paths = RunPaths(run)
    found: list[EarlierAttempt] = []
    for attempt in range(1, before):
        key = paths.failure(kind, round_number, attempt)
        if not store.exists(key):
            continue
        tombstone = AttemptTombstone.from_dict(store.get_json(key))
        members = tombstone.cohort or tombstone.folded + tombstone.missing + tuple(
            e.hospital for e in tombstone.rejected
        )
        uploaded = frozenset(h for h in members if store.exists(paths.update(kind, round_number, attempt, h)))
        found.append(EarlierAttempt(attempt, tuple(members), uploaded))
    return tuple(found)

"""Reading committed results back: one path for every key holder (hospital workers, export, verification).

A committed result is trusted only after three checks: its bytes match the digest in its manifest, its envelope
header names this run, round, base model and key set, and it decrypts under the secret context.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from medheaven.crypto.codec import SecretKeys, hospital_codec
from medheaven.crypto.envelope import Envelope, check_envelope
from medheaven.crypto.packing import unpack_average
from medheaven.errors import DigestMismatchError, KeyCustodyError, RunStateError
from medheaven.federated.paths import RunPaths
from medheaven.federated.phase import Phase
from medheaven.federated.protocol import envelope_limits, expectation, sha256_hex
from medheaven.federated.wire import Manifest, RoundSpec, RunDescription
from medheaven.store.base import Store

if TYPE_CHECKING:
    from medheaven.data import Standardiser


def last_committed_round(store: Store, run: str) -> int:
    """Rounds commit in order, so the first missing manifest ends the run's committed history (-1: none)."""
    paths, committed = RunPaths(run), -1
    while store.exists(paths.manifest(Phase.UPDATE, committed + 1)):
        committed += 1
    return committed


def closed_reason(store: Store, spec: RoundSpec) -> str | None:
    """Why the attempt ``spec`` names can no longer take an update (None while it is open).

    Read before any work on a task: a task stranded in the broker (a worker killed as a whole, redelivered after the
    visibility timeout) must not train, encrypt or upload for a round that has moved on.
    """
    paths = RunPaths(spec.run)
    if store.exists(paths.manifest(spec.kind, spec.round)):
        return f"{spec.kind} round {spec.round} of {spec.run!r} is already committed"
    if store.exists(paths.failure(spec.kind, spec.round, spec.attempt)):
        return f"attempt {spec.attempt} of {spec.kind} round {spec.round} of {spec.run!r} has failed"
    key = paths.spec(spec.kind, spec.round)
    if store.exists(key):
        current = store.get_json(key).get("attempt")
        if current != spec.attempt:
            return f"{spec.kind} round {spec.round} of {spec.run!r} is at attempt {current}, not {spec.attempt}"
    return None


def committed_manifest(store: Store, run: str, *, kind: Phase, round_number: int) -> Manifest:
    key = RunPaths(run).manifest(kind, round_number)
    if not store.exists(key):
        raise RunStateError(f"run {run!r} has no committed {kind} round {round_number} ({key} is missing)")
    return Manifest.from_dict(store.get_json(key))


def open_committed(
    store: Store, description: RunDescription, secret: SecretKeys | None, manifest: Manifest
) -> np.ndarray:
    """Fetch a committed result, check it against its manifest and envelope header, and decrypt it."""
    length = manifest.kind.vector_length(description)
    data = store.get(manifest.result_key)
    if sha256_hex(data) != manifest.result_sha256:
        raise DigestMismatchError(
            f"{manifest.result_key} does not match the digest its manifest announced: the store's copy was altered "
            "or is incomplete"
        )
    envelope = Envelope.from_bytes(data, limits=envelope_limits(description, length=length))
    check_envelope(
        envelope,
        expect=expectation(
            description,
            phase=manifest.kind,
            result=True,
            round_number=manifest.round,
            base=manifest.base_sha256,
            length=length,
        ),
        registry=None,
    )
    if secret is None and not description.plaintext:
        raise KeyCustodyError(f"run {description.run!r} is encrypted: decrypting it needs the secret context")
    codec = hospital_codec(description.scheme, secret, slots=description.params.slots)
    return codec.decode_sum(envelope.chunks, length=envelope.length, scale_bits=envelope.scale_bits)


def committed_average(
    store: Store, description: RunDescription, secret: SecretKeys | None, round_number: int
) -> tuple[np.ndarray, int, Manifest]:
    """The averaged weights of a committed round, the total sample count, and the round's manifest."""
    manifest = committed_manifest(store, description.run, kind=Phase.UPDATE, round_number=round_number)
    summed = open_committed(store, description, secret, manifest)
    weights, total = unpack_average(summed, exact=description.scheme.exact)
    return weights, total, manifest


def committed_statistics(store: Store, description: RunDescription, secret: SecretKeys | None) -> np.ndarray:
    """The committed statistics phase as ``[counts, sums, squares]`` per feature, whatever lane layout the run
    was written in (``RunDescription.stats_from_sum``: the two-limb lanes are recombined exactly)."""
    manifest = committed_manifest(store, description.run, kind=Phase.STATS, round_number=0)
    return description.stats_from_sum(open_committed(store, description, secret, manifest))


def committed_standardiser(store: Store, description: RunDescription, secret: SecretKeys | None) -> Standardiser:
    """The federated standardiser of a run, from the sum of every hospital's sufficient statistics."""
    from medheaven.data import Standardiser, SufficientStats  # pandas; only the statistics need it

    summed = committed_statistics(store, description, secret)
    # counts and sums are integers or sums of exact feature values; CKKS noise is far below their resolution
    return Standardiser.from_stats(SufficientStats.from_vector(summed, summed.size // 3))

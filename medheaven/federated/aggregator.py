"""Aggregator side of a round: fold receipts as they arrive, finalise with the manifest as the commit.

State and its durability:

* The running encrypted sum lives in memory (one model's worth, whatever the number of hospitals).
* The *ledger* (``updates/<r>/ledger.json``) records which hospitals have been folded, written atomically after
  each fold and before the task is acknowledged. It is the source of truth: an aggregator that restarts rebuilds
  the sum by re-folding exactly the ledger's envelopes, which stay in the store until the round commits. A
  redelivered receipt whose hospital is already in the ledger is a no-op, so each hospital is folded at most once
  per round however often the broker delivers it.
* If anything fails after the in-memory sum changed but before the ledger was written, the in-memory sum is
  dropped and rebuilt from the ledger on next use.
* Finalising streams the result envelope to the store (``result_spool``), then writes the manifest with
  create-only semantics; the manifest's existence is the commit. Receipts for a committed or failed attempt are
  rejected.

Exactly one aggregator process (concurrency 1) serves the ``aggregate`` queue: the in-memory sum is per process.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medheaven.crypto.codec import PublicKeys, aggregator_codec, public_keys_from_bytes
from medheaven.crypto.envelope import Envelope, EnvelopeExpectation, check_envelope, read_envelope
from medheaven.crypto.signing import HospitalRegistry
from medheaven.errors import (
    DigestMismatchError,
    EnvelopeError,
    EnvelopeFormatError,
    MedHeavenError,
    QuorumNotReachedError,
    RoundClosedError,
    RoundMismatchError,
    SignatureError,
    StoreKeyNotFoundError,
    UnknownHospitalError,
)
from medheaven.federated.fold import Accumulator, fold_update
from medheaven.federated.ledger import AttemptTombstone, EntryStatus, FoldOutcome, FoldStatus, Ledger, LedgerEntry
from medheaven.federated.paths import CONTEXT_KEY, REGISTRY_KEY, RunPaths
from medheaven.federated.phase import Phase
from medheaven.federated.protocol import envelope_limits, expectation
from medheaven.federated.result_spool import SpooledResult, spool_result
from medheaven.federated.round_policy import Dropout, Verdict, decide, lateness
from medheaven.federated.wire import PLAINTEXT_FINGERPRINT, Manifest, Receipt, RoundSpec, RunDescription
from medheaven.store.base import Store

log = logging.getLogger(__name__)


@dataclass
class _RoundState:
    spec: RoundSpec
    accumulator: Accumulator
    ledger: Ledger

    def hospitals(self) -> frozenset[str]:
        return self.ledger.folded_hospitals


def _entry(receipt: Receipt, status: EntryStatus, **outcome: Any) -> LedgerEntry:
    """The ledger's record of a verified answer: what the receipt says, plus the outcome's own fields."""
    return LedgerEntry(
        hospital=receipt.hospital,
        status=status,
        at=time.time(),
        key=receipt.key,
        sha256=receipt.sha256,
        completed_at=receipt.completed_at,
        **outcome,
    )


def _reason(exc: MedHeavenError) -> str:
    return str(getattr(exc, "reason", type(exc).__name__))


class AggregatorNode:
    """Holds the public context and the registry only; it is typed so that it cannot be given a secret key."""

    def __init__(
        self,
        store: Store,
        *,
        expected_fingerprint: str | None = None,
        keep_updates: bool = True,
        spool_folder: Path | None = None,
    ) -> None:
        self.store = store
        #: where a finalise writes the serialised sum before the store (``result_spool``); None: the temp folder
        self.spool_folder = spool_folder
        self.keep_updates = keep_updates
        self.expected_fingerprint = expected_fingerprint
        self._context: PublicKeys | None = None
        self._runs: dict[str, RunDescription] = {}
        self._rounds: dict[tuple[str, str, int], _RoundState] = {}

    # -- loading -----------------------------------------------------------------------------------------
    def public_context(self) -> PublicKeys:
        if self._context is None:
            context = public_keys_from_bytes(self.store.get(CONTEXT_KEY), source=f"{self.store.location}/{CONTEXT_KEY}")
            if self.expected_fingerprint and context.fingerprint != self.expected_fingerprint:
                raise MedHeavenError(
                    f"the store's public context has fingerprint {context.fingerprint[:12]}…, this aggregator was "
                    f"configured for {self.expected_fingerprint[:12]}… (MEDHEAVEN_CONTEXT_FINGERPRINT)"
                )
            self._context = context
        return self._context

    def registry(self) -> HospitalRegistry:
        return HospitalRegistry.from_dict(self.store.get_json(REGISTRY_KEY))

    def run(self, run: str) -> RunDescription:
        if run not in self._runs:
            self._runs[run] = RunDescription.from_dict(self.store.get_json(RunPaths(run).model))
        return self._runs[run]

    def _spec(self, run: str, kind: Phase, round_number: int) -> RoundSpec:
        try:
            return RoundSpec.from_dict(self.store.get_json(RunPaths(run).spec(kind, round_number)))
        except StoreKeyNotFoundError as exc:
            raise RoundClosedError(f"run {run!r} has no open {kind} round {round_number}") from exc

    def _new_accumulator(self, description: RunDescription, length: int) -> Accumulator:
        """The scheme's running sum (``crypto/codec.py``): it can add uploads, never decrypt them."""
        if description.plaintext:
            return aggregator_codec(description.scheme, None, slots=description.params.slots).accumulator(length)
        context = self.public_context()
        if context.fingerprint != description.fingerprint:
            raise MedHeavenError(
                f"run {description.run!r} was keyed with {description.fingerprint[:12]}…, the store's public context "
                f"is {context.fingerprint[:12]}…"
            )
        return aggregator_codec(description.scheme, context).accumulator(length)

    def _load_envelope(self, description: RunDescription, kind: Phase, key: str, sha256: str) -> Envelope:
        # one digest pass: the hasher that yields the file digest also yields the signed body's (envelope format 2)
        envelope, digest = read_envelope(
            self.store.get(key), limits=envelope_limits(description, length=kind.vector_length(description))
        )
        if digest != sha256:
            raise DigestMismatchError(
                f"{key} does not match the digest in its receipt: the stored envelope was replaced or corrupted"
            )
        return envelope

    def _fold_envelope(self, state: _RoundState, description: RunDescription, envelope: Envelope) -> None:
        spec = state.spec
        fold_update(
            state.accumulator, envelope, expect=_upload_expectation(description, spec), registry=self.registry()
        )

    def _state(self, spec: RoundSpec) -> _RoundState:
        """The round's in-memory state, rebuilt from the ledger if this process has none (e.g. after a crash)."""
        slot = (spec.run, spec.kind, spec.round)
        state = self._rounds.get(slot)
        if state is not None and state.spec.attempt == spec.attempt:
            return state
        description = self.run(spec.run)
        paths = RunPaths(spec.run)
        ledger_key = paths.ledger(spec.kind, spec.round, spec.attempt)
        stored = Ledger.empty(spec.run, spec.kind, spec.round, spec.attempt)
        if self.store.exists(ledger_key):
            stored = Ledger.from_dict(self.store.get_json(ledger_key))
        state = _RoundState(spec, self._new_accumulator(description, spec.kind.vector_length(description)), stored)
        for entry in stored.folded:
            envelope = self._load_envelope(description, spec.kind, entry.key, entry.sha256)
            self._fold_envelope(state, description, envelope)
        if stored.folded or stored.rejected:
            log.info(
                "rebuilt %s round %s of %s from its ledger (%d folded)",
                spec.kind,
                spec.round,
                spec.run,
                len(stored.folded),
            )
        self._rounds[slot] = state
        return state

    def _write_ledger(self, state: _RoundState) -> None:
        spec = state.spec
        self.store.put_json(RunPaths(spec.run).ledger(spec.kind, spec.round, spec.attempt), state.ledger.to_dict())

    def _check_addressed(self, spec: RoundSpec, receipt: Receipt) -> None:
        """Receipt checks that need nothing but the spec; any failure here is noise (see ``fold``)."""
        paths = RunPaths(spec.run)
        if receipt.attempt != spec.attempt:
            raise RoundMismatchError(
                f"receipt from {receipt.hospital!r} is for attempt {receipt.attempt} of {spec.kind} round "
                f"{spec.round}; attempt {spec.attempt} is the open one"
            )
        if self.store.exists(paths.manifest(spec.kind, spec.round)):
            raise RoundClosedError(f"{spec.kind} round {spec.round} of {spec.run!r} is already committed")
        if self.store.exists(paths.failure(spec.kind, spec.round, spec.attempt)):
            raise RoundClosedError(f"attempt {spec.attempt} of {spec.kind} round {spec.round} has failed")
        if receipt.hospital not in spec.hospitals:
            raise UnknownHospitalError(f"hospital {receipt.hospital!r} was not selected for round {spec.round}")
        expected_key = paths.update(spec.kind, spec.round, spec.attempt, receipt.hospital)
        if receipt.key != expected_key:
            raise EnvelopeFormatError(
                f"receipt points at {receipt.key!r}; updates of this round live at {expected_key!r}"
            )

    def _verified_envelope(self, spec: RoundSpec, description: RunDescription, receipt: Receipt) -> Envelope:
        """The envelope the receipt names, once it is proven to be this hospital's answer to this attempt.

        Order matters: everything a party without the hospital's signing key could produce (a forged or altered
        receipt, a missing or replaced file, a replayed envelope of another round) fails here, before anything is
        recorded. ``registry.verify`` is called before ``check_envelope``'s header checks so that a header mismatch
        is attributed to the hospital only when the hospital signed it.
        """
        registry = self.registry()
        receipt.verify(registry)
        envelope = self._load_envelope(description, spec.kind, receipt.key, receipt.sha256)
        if envelope.hospital != receipt.hospital:
            raise EnvelopeFormatError(
                f"receipt names {receipt.hospital!r} but the envelope is from {envelope.hospital!r}"
            )
        if not envelope.signature:
            raise SignatureError(f"envelope claiming to be from {envelope.hospital!r} carries no signature")
        registry.verify(envelope.hospital, envelope.signed_message(), envelope.signature)
        expect = _upload_expectation(description, spec)
        # a correctly signed envelope of another run, round or base is a replay, not this attempt's answer
        if (envelope.kind, envelope.run, envelope.round, envelope.base) != (
            expect.kind,
            expect.run,
            expect.round,
            expect.base,
        ):
            check_envelope(envelope, expect=expect, registry=None)  # raises the specific mismatch error
        return envelope

    # -- the two tasks -----------------------------------------------------------------------------------
    def fold(self, raw_receipt: Any, *, now: float | None = None) -> dict[str, Any]:
        """Fold one hospital's update. Returns a ``FoldOutcome`` dict.

        Only verified input changes the round: a message that is not backed by the named hospital's signed receipt
        and signed envelope for this very attempt is *noise* (logged, counted, never recorded as that hospital's
        answer). A verified answer that is refused (late, wrong shape, unreadable ciphertext) is recorded in the
        ledger with its reason. A malformed receipt raises (the task fails; nothing is read from the store).
        """
        receipt = Receipt.from_dict(raw_receipt)
        try:
            spec = self._spec(receipt.run, receipt.kind, receipt.round)
        except RoundClosedError as exc:
            log.warning("refused update of %r: %s", receipt.hospital, exc)
            return FoldOutcome(FoldStatus.CLOSED, receipt.hospital, receipt.round, "closed", str(exc)).to_dict()
        description = self.run(spec.run)
        try:
            try:
                self._check_addressed(spec, receipt)
            except RoundClosedError as exc:
                log.warning("refused update of %r: %s", receipt.hospital, exc)
                return FoldOutcome(FoldStatus.CLOSED, receipt.hospital, spec.round, "closed", str(exc)).to_dict()
            state = self._state(spec)
            if receipt.hospital in state.hospitals():
                log.info("duplicate delivery of %s's update for round %s ignored", receipt.hospital, spec.round)
                return FoldOutcome(FoldStatus.DUPLICATE, receipt.hospital, spec.round).to_dict()
            envelope = self._verified_envelope(spec, description, receipt)
        except (EnvelopeError, StoreKeyNotFoundError) as exc:
            return self._noise(spec, receipt, exc)
        return self._fold_verified(state, description, receipt, envelope, now=time.time() if now is None else now)

    def _fold_verified(
        self, state: _RoundState, description: RunDescription, receipt: Receipt, envelope: Envelope, *, now: float
    ) -> dict[str, Any]:
        """The hospital's own answer: fold it, or record why it is refused."""
        spec = state.spec
        clock = time.perf_counter()
        late = lateness(spec, receipt.completed_at, now)
        if late is not None:
            return self._reject(state, receipt, "late", f"update of {receipt.hospital!r} refused: {late}")
        try:
            self._fold_envelope(state, description, envelope)
        except EnvelopeError as exc:
            return self._reject(state, receipt, _reason(exc), str(exc))
        except BaseException:
            self._rounds.pop((spec.run, spec.kind, spec.round), None)
            raise
        fold_seconds = time.perf_counter() - clock
        entry = _entry(
            receipt,
            EntryStatus.FOLDED,
            size=receipt.size,
            metrics=receipt.metrics,
            privacy=receipt.privacy,
            timings={**receipt.timings, "fold": fold_seconds},
        )
        state.ledger = state.ledger.with_entry(entry)
        try:
            self._write_ledger(state)
        except BaseException:
            self._rounds.pop((spec.run, spec.kind, spec.round), None)
            raise
        log.info(
            "folded %s into %s round %s of %s (%d so far)",
            receipt.hospital,
            spec.kind,
            spec.round,
            spec.run,
            len(state.ledger.folded),
        )
        return FoldOutcome(FoldStatus.FOLDED, receipt.hospital, spec.round, fold_seconds=fold_seconds).to_dict()

    def _noise(self, spec: RoundSpec, receipt: Receipt, exc: MedHeavenError) -> dict[str, Any]:
        """Count and log; the ledger's answers are untouched (the count is written with the next ledger write)."""
        state = self._rounds.get((spec.run, spec.kind, spec.round))
        if state is not None and state.spec.attempt == spec.attempt:
            state.ledger = state.ledger.with_noise()
        log.warning(
            "ignored a fold message naming %r for %s round %s attempt %s: %s (%s; not a verified answer of that "
            "hospital, the round is unchanged)",
            receipt.hospital,
            spec.kind,
            spec.round,
            receipt.attempt,
            exc,
            _reason(exc),
        )
        return FoldOutcome(FoldStatus.NOISE, receipt.hospital, spec.round, _reason(exc), str(exc)).to_dict()

    def _reject(self, state: _RoundState, receipt: Receipt, reason: str, message: str) -> dict[str, Any]:
        """A verified answer refused: recorded in the ledger (and so in the manifest or failure record)."""
        spec = state.spec
        log.warning("rejected update of %r for %s round %s: %s", receipt.hospital, spec.kind, spec.round, message)
        entry = _entry(receipt, EntryStatus.REJECTED, reason=reason, message=message)
        state.ledger = state.ledger.with_entry(entry)
        self._write_ledger(state)
        return FoldOutcome(FoldStatus.REJECTED, receipt.hospital, spec.round, reason, message).to_dict()

    def finalise(
        self,
        run: str,
        kind: Phase | str,
        round_number: int,
        attempt: int,
        dropouts: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        """Commit the round if the quorum was folded; otherwise record the failure. Idempotent.

        ``dropouts``: hospitals the coordinator knows gone (``round_policy.Dropout`` values), so that the policy
        names why a masked attempt is abandoned. They can only close an attempt the aggregator closes anyway (a
        finalise never commits an incomplete cohort), so whoever sends them gains nothing over sending a finalise."""
        kind = Phase(kind)  # the task's argument arrives as the phase's name
        gone = _parse_dropouts(dropouts or {}, run=run, kind=kind, round_number=round_number)
        paths = RunPaths(run)
        manifest_key = paths.manifest(kind, round_number)
        if self.store.exists(manifest_key):
            manifest = Manifest.from_dict(self.store.get_json(manifest_key))
            return {"status": "committed", "round": round_number, "sha256": manifest.result_sha256}
        spec = self._spec(run, kind, round_number)
        if spec.attempt != attempt:
            raise RoundMismatchError(f"finalise asked for attempt {attempt}, the open attempt is {spec.attempt}")
        state = self._state(spec)
        decision = decide(spec, state.ledger, time.time(), gone=gone, closing=True)
        if decision.verdict is not Verdict.COMMIT:
            ledger = state.ledger
            members = spec.cohort or spec.hospitals
            tombstone = AttemptTombstone(
                run=run,
                kind=kind.value,
                round=round_number,
                attempt=attempt,
                quorum=spec.quorum,
                reason=decision.reason,
                at=time.time(),
                folded=tuple(sorted(ledger.folded_hospitals)),
                rejected=ledger.rejected,
                missing=decision.outstanding,
                cohort=spec.cohort,
                uploaded=tuple(h for h in members if self.store.exists(paths.update(kind, round_number, attempt, h))),
                noise=ledger.noise,
            )
            failure = tombstone.to_dict()
            self.store.put_json(paths.failure(kind, round_number, attempt), failure)
            self._rounds.pop((run, kind, round_number), None)
            refused = "; ".join(f"{e.hospital}: {e.reason}" for e in ledger.rejected) or "none"
            raise QuorumNotReachedError(
                f"{kind} round {round_number} of {run!r} (attempt {attempt}) folded {len(ledger.folded)} of "
                f"{len(spec.hospitals)} hospitals, quorum is {spec.quorum} (refused: {refused}; no answer: "
                f"{', '.join(decision.outstanding) or 'none'}): the round is not committed and the previous global "
                f"model is untouched; resume with `medheaven-coordinator resume --run-id {run}`"
            )
        clock = time.perf_counter()
        result_key = paths.result(kind, round_number)
        # Streamed: the sum goes chunk by chunk into a file and from there to the store, so the serialised sum is
        # never in memory next to the ciphertexts (result_spool.py says why freeing those would not help, and why a
        # failure anywhere here leaves the in-memory sum intact for a retry). Not yet committed (no manifest), so a
        # result left by a crashed or failed finalise may be replaced.
        with self._spool_result(state) as spooled:
            self.store.put_file(result_key, spooled.file)
        manifest = Manifest(
            run=run,
            round=round_number,
            attempt=attempt,
            kind=kind,
            base_sha256=spec.base_sha256,
            result_key=result_key,
            result_sha256=spooled.sha256,
            result_size=spooled.size,
            selected=spec.hospitals,
            folded=state.ledger.folded,
            rejected=state.ledger.rejected,
            quorum=spec.quorum,
            opened_at=spec.opened_at,
            deadline=spec.deadline,
            finalised_at=time.time(),
            timings={"finalise": time.perf_counter() - clock},
        )
        self.store.create_json(manifest_key, manifest.to_dict())
        self._rounds.pop((run, kind, round_number), None)
        if not self.keep_updates:
            # only after the commit: until the manifest exists, a restarted aggregator rebuilds from these files
            for entry in state.ledger.folded:
                self.store.delete(entry.key)
        log.info("committed %s round %s of %s with %s", kind, round_number, run, manifest.participants)
        return {"status": "committed", "round": round_number, "sha256": manifest.result_sha256}

    def _spool_result(self, state: _RoundState) -> AbstractContextManager[SpooledResult]:
        spec = state.spec
        description = self.run(spec.run)
        result = Envelope(
            kind=spec.kind.result_kind,
            run=spec.run,
            round=spec.round,
            hospital="",
            fingerprint=PLAINTEXT_FINGERPRINT if description.plaintext else description.fingerprint,
            scheme=description.scheme.value,
            base=spec.base_sha256,
            length=state.accumulator.length,
            scale_bits=expectation(
                description, phase=spec.kind, round_number=spec.round, base="", length=state.accumulator.length
            ).scale_bits,
            chunks=(),
        )
        accumulator = state.accumulator
        return spool_result(result, accumulator.iter_chunks(), accumulator.chunk_count, folder=self.spool_folder)


def _upload_expectation(description: RunDescription, spec: RoundSpec) -> EnvelopeExpectation:
    """What every hospital's upload to the attempt ``spec`` must look like (one rule for fold and receipt checks)."""
    return expectation(
        description,
        phase=spec.kind,
        round_number=spec.round,
        base=spec.base_sha256,
        length=spec.kind.vector_length(description),
    )


def _parse_dropouts(raw: Mapping[str, str], *, run: str, kind: Phase, round_number: int) -> dict[str, Dropout]:
    try:
        return {str(h): Dropout(why) for h, why in dict(raw).items()}
    except (TypeError, ValueError):
        known = ", ".join(d.value for d in Dropout)
        raise RoundMismatchError(
            f"finalise of {kind} round {round_number} of {run!r} named dropouts {dict(raw)!r}: each must be one of "
            f"{known}; send the finalise again from a coordinator of this version"
        ) from None

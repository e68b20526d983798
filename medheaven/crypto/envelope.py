"""Signed msgpack envelopes: the only way ciphertexts travel.

An envelope is a msgpack map with exactly these keys::

    v      format version (1)            kind   "update" | "stats" | "global"
    run    run id                        round  round number
    hosp   hospital id ("" for global)   fp     sha256 fingerprint of the public context
    base   sha256 of the global model the update was trained from ("" when there is none)
    len    plaintext vector length       scale  CKKS scale exponent of every chunk
    chunks list of serialised CKKS vectors (raw bytes)
    sig    Ed25519 signature (64 bytes; empty for the global model, which the manifest identifies by digest)

The signature covers every header field and the sha256 of each chunk, so a flipped bit anywhere, a chunk moved,
added or removed, or a header edited after signing is detected. ``base`` binds an update to the exact model it was
trained from, so a replay from an earlier round (or an earlier attempt of a round) never matches.

msgpack, not pickle: loading a pickle runs code. The decoder bounds every size before it allocates.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, replace

import msgpack

from medheaven.crypto.signing import SIGNATURE_BYTES, HospitalRegistry, SigningKey
from medheaven.errors import (
    ContextMismatchError,
    EnvelopeFormatError,
    EnvelopeSizeError,
    EnvelopeVersionError,
    RoundMismatchError,
    RunMismatchError,
    ShapeMismatchError,
    SignatureError,
)

ENVELOPE_FORMAT = 1
KINDS = ("update", "stats", "global")
_FIELDS = frozenset({"v", "kind", "run", "round", "hosp", "fp", "base", "len", "scale", "chunks", "sig"})
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_DOMAIN = b"medheaven-envelope/1\x00"


@dataclass(frozen=True)
class EnvelopeLimits:
    """Sizes a decoder accepts; derived from the run's model and CKKS parameters."""

    max_chunks: int
    max_chunk_bytes: int
    max_length: int

    @property
    def max_total_bytes(self) -> int:
        return self.max_chunks * (self.max_chunk_bytes + 16) + 4096


@dataclass(frozen=True)
class EnvelopeExpectation:
    """What the receiver requires of an envelope, decided by the round, never by the sender."""

    kind: str
    run: str
    round: int
    fingerprint: str
    base: str
    length: int
    chunk_count: int
    scale_bits: int


@dataclass(frozen=True)
class Envelope:
    kind: str
    run: str
    round: int
    hospital: str
    fingerprint: str
    base: str
    length: int
    scale_bits: int
    chunks: tuple[bytes, ...]
    signature: bytes = b""

    def signed_message(self) -> bytes:
        header = [
            ENVELOPE_FORMAT,
            self.kind,
            self.run,
            self.round,
            self.hospital,
            self.fingerprint,
            self.base,
            self.length,
            self.scale_bits,
            [hashlib.sha256(chunk).digest() for chunk in self.chunks],
        ]
        packed: bytes = msgpack.packb(header, use_bin_type=True)
        return _DOMAIN + packed

    def signed_by(self, key: SigningKey) -> Envelope:
        if key.hospital_id != self.hospital:
            raise SignatureError(f"key of {key.hospital_id!r} cannot sign an envelope of {self.hospital!r}")
        return replace(self, signature=key.sign(self.signed_message()))

    def to_bytes(self) -> bytes:
        payload = {
            "v": ENVELOPE_FORMAT,
            "kind": self.kind,
            "run": self.run,
            "round": self.round,
            "hosp": self.hospital,
            "fp": self.fingerprint,
            "base": self.base,
            "len": self.length,
            "scale": self.scale_bits,
            "chunks": list(self.chunks),
            "sig": self.signature,
        }
        data: bytes = msgpack.packb(payload, use_bin_type=True)
        return data

    @classmethod
    def from_bytes(cls, data: bytes, *, limits: EnvelopeLimits) -> Envelope:
        if not isinstance(data, bytes | bytearray | memoryview):
            raise EnvelopeFormatError(f"envelope must be bytes, got {type(data).__name__}")
        if len(data) == 0:
            raise EnvelopeFormatError("envelope is empty (0 bytes)")
        if len(data) > limits.max_total_bytes:
            raise EnvelopeSizeError(
                f"envelope is {len(data)} bytes, more than the {limits.max_total_bytes} this model can need"
            )
        payload = _unpack_bounded(bytes(data), limits)
        return _from_payload(payload, limits)


def _unpack_bounded(data: bytes, limits: EnvelopeLimits) -> dict[str, object]:
    try:
        payload = msgpack.unpackb(
            data,
            raw=False,
            strict_map_key=True,
            max_bin_len=limits.max_chunk_bytes,
            max_str_len=256,
            max_array_len=limits.max_chunks,
            max_map_len=2 * len(_FIELDS),  # room to name unexpected fields; still bounded
            max_ext_len=0,
        )
    except ValueError as exc:
        if "exceeds max" in str(exc):
            raise EnvelopeSizeError(f"envelope field too large: {exc}") from exc
        raise EnvelopeFormatError(f"envelope is not valid msgpack: {exc}") from exc
    except (msgpack.UnpackException, TypeError) as exc:
        raise EnvelopeFormatError(f"envelope is not valid msgpack: {exc}") from exc
    if not isinstance(payload, dict):
        raise EnvelopeFormatError(f"envelope must be a msgpack map, got {type(payload).__name__}")
    return payload


def _field(payload: dict[str, object], name: str, kind: type) -> object:
    value = payload[name]
    # bool is an int subclass in Python; a msgpack true must not pass as a round number
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise EnvelopeFormatError(f"envelope field {name!r} must be {kind.__name__}, got {type(value).__name__}")
    return value


def _from_payload(payload: dict[str, object], limits: EnvelopeLimits) -> Envelope:
    version = payload.get("v")
    if type(version) is not int or version != ENVELOPE_FORMAT:
        raise EnvelopeVersionError(f"envelope format {version!r} is not supported (expected {ENVELOPE_FORMAT})")
    missing = _FIELDS - payload.keys()
    extra = payload.keys() - _FIELDS
    if missing or extra:
        raise EnvelopeFormatError(f"envelope fields wrong: missing {sorted(missing)}, unexpected {sorted(extra)}")
    kind = str(_field(payload, "kind", str))
    if kind not in KINDS:
        raise EnvelopeVersionError(f"envelope kind {kind!r} is unknown (expected one of {KINDS})")
    run = str(_field(payload, "run", str))
    if not _RUN_ID.fullmatch(run):
        raise EnvelopeFormatError(f"envelope run id {run!r} is malformed")
    round_number = int(_field(payload, "round", int))  # type: ignore[call-overload]
    if round_number < 0:
        raise EnvelopeFormatError(f"envelope round {round_number} is negative")
    hospital = str(_field(payload, "hosp", str))
    fingerprint = str(_field(payload, "fp", str))
    base = str(_field(payload, "base", str))
    if not _HEX64.fullmatch(fingerprint) or (base and not _HEX64.fullmatch(base)):
        raise EnvelopeFormatError("envelope fingerprint or base digest is not a lower-case sha256 hex string")
    length = int(_field(payload, "len", int))  # type: ignore[call-overload]
    if not 0 < length <= limits.max_length:
        raise EnvelopeSizeError(f"envelope declares vector length {length}; this model allows 1..{limits.max_length}")
    scale_bits = int(_field(payload, "scale", int))  # type: ignore[call-overload]
    chunks = _field(payload, "chunks", list)
    assert isinstance(chunks, list)
    if not chunks or not all(isinstance(c, bytes) and c for c in chunks):
        raise EnvelopeFormatError("envelope chunks must be a non-empty list of non-empty byte strings")
    signature = bytes(_field(payload, "sig", bytes))  # type: ignore[call-overload]
    if signature and len(signature) != SIGNATURE_BYTES:
        raise SignatureError(f"envelope signature is {len(signature)} bytes, an Ed25519 signature is 64")
    return Envelope(kind, run, round_number, hospital, fingerprint, base, length, scale_bits, tuple(chunks), signature)


def check_envelope(envelope: Envelope, *, expect: EnvelopeExpectation, registry: HospitalRegistry | None) -> None:
    """Header checks and signature verification; ciphertext validity is checked when folding.

    ``registry`` is None only for the unsigned global model, which is identified by its digest instead.
    """
    if envelope.kind != expect.kind:
        raise EnvelopeVersionError(f"expected a {expect.kind!r} envelope, got {envelope.kind!r}")
    if envelope.fingerprint != expect.fingerprint:
        raise ContextMismatchError(
            f"envelope from {envelope.hospital or 'the store'!r} was encrypted under context "
            f"{envelope.fingerprint[:12]}…, this run uses {expect.fingerprint[:12]}…: the sender has another key set"
        )
    if envelope.run != expect.run:
        raise RunMismatchError(f"envelope is for run {envelope.run!r}, not {expect.run!r}")
    if envelope.round != expect.round:
        raise RoundMismatchError(
            f"envelope from {envelope.hospital!r} is for round {envelope.round}, expected round {expect.round}"
        )
    if envelope.base != expect.base:
        raise RoundMismatchError(
            f"envelope from {envelope.hospital!r} was trained from model {envelope.base[:12] or '-'}…, "
            f"round {expect.round} started from {expect.base[:12] or '-'}… (stale or replayed update)"
        )
    if envelope.length != expect.length or len(envelope.chunks) != expect.chunk_count:
        raise ShapeMismatchError(
            f"envelope from {envelope.hospital!r} holds {envelope.length} values in {len(envelope.chunks)} chunks; "
            f"the model needs {expect.length} values in {expect.chunk_count} chunks"
        )
    if envelope.scale_bits != expect.scale_bits:
        raise ShapeMismatchError(
            f"envelope from {envelope.hospital!r} is encoded at scale 2^{envelope.scale_bits}, "
            f"expected 2^{expect.scale_bits}"
        )
    if registry is None:
        return
    if not envelope.signature:
        raise SignatureError(f"envelope claiming to be from {envelope.hospital!r} carries no signature")
    registry.verify(envelope.hospital, envelope.signed_message(), envelope.signature)

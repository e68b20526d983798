"""Signed msgpack envelopes: the only way ciphertexts travel.

An envelope is a msgpack map with exactly these keys (format 2 writes them in this order, ``sig`` last)::

    v      format version (2; 1 is read)  scheme "plaintext" | "ckks" | "bfv-masked" (format 2 only)
    kind   "update" | "stats" | "global"
    run    run id                        round  round number
    hosp   hospital id ("" for global)   fp     sha256 fingerprint of the public context
    base   sha256 of the global model the update was trained from ("" when there is none)
    len    plaintext vector length       scale  CKKS scale exponent of every chunk
    chunks list of serialised CKKS vectors (raw bytes)
    sig    Ed25519 signature (64 bytes; empty for the global model, which the manifest identifies by digest)

Format 2: one digest pass. The signed message is ``domain || sha256(body)``, where the body is the envelope's own
bytes up to the ``sig`` key: the map header, every header field and every chunk, exactly as received. The decoder
hashes the body once while it decodes and goes on hashing the ``sig`` field with the same hasher, which gives the
sha256 of the whole file, the digest receipts and manifests carry. ``read_envelope`` returns both, so a fold hashes
each envelope once (format 1 signed a list of per-chunk digests, so a fold hashed every byte twice). Signing the
received bytes rather than re-serialised fields is sound because the decoder accepts one parse only (no repeated
or unknown keys, no trailing bytes, ``sig`` last): the fields the receiver acts on are the fields the signer hashed.

Format 1 (read for committed runs): the signature covers every header field and the sha256 of each chunk.

Either way a flipped bit anywhere, a chunk moved, added or removed, or a header edited after signing is detected.
``base`` binds an update to the exact model it was trained from, so a replay from an earlier round (or an earlier
attempt of a round) never matches.

msgpack, not pickle: loading a pickle runs code. The decoder bounds every size before it allocates, and it does
not copy the chunks: each is a ``memoryview`` slice of the envelope's bytes, so decoding a 24 MB update adds
nothing to the memory the bytes already take (the aggregator's peak is the running sum plus one envelope).
"""

from __future__ import annotations

import hashlib
import io
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any

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
from medheaven.records import typed_field

ENVELOPE_FORMAT = 2
LEGACY_FORMAT = 1
KINDS = ("update", "stats", "global")
SCHEMES = ("plaintext", "ckks", "bfv-masked")  # codec.Scheme's values; envelope.py sits below the codec
_FIELDS_V1 = frozenset({"v", "kind", "run", "round", "hosp", "fp", "base", "len", "scale", "chunks", "sig"})
_FIELDS = _FIELDS_V1 | {"scheme"}
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_DOMAIN = b"medheaven-envelope/1\x00"
_DOMAIN_V2 = b"medheaven-envelope/2\x00"
_PLAINTEXT_FINGERPRINT = "0" * 64
#: msgpack bin 8/16/32 markers and the size of their length field
_BIN_LENGTH_BYTES = {0xC4: 1, 0xC5: 2, 0xC6: 4}
_MAX_MAP_LEN = 2 * len(_FIELDS)  # room to name unexpected fields; still bounded

#: a serialised CKKS vector (or float64 chunk): bytes when built, a zero-copy view into the envelope when decoded
Chunk = bytes | memoryview


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
    scheme: str | None = None  # None: any scheme (format 1 envelopes name none)


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
    chunks: tuple[Chunk, ...]
    signature: bytes = b""
    scheme: str = "ckks"
    version: int = ENVELOPE_FORMAT
    #: sha256 of the received body (format 2), set by the decoder; ``replace`` resets it (init=False)
    received_body_digest: bytes = field(default=b"", init=False, repr=False, compare=False)

    def body_digest(self) -> bytes:
        """Format 2's signed digest: of the received bytes when decoded, else of this envelope's serialised body."""
        return self.received_body_digest or hashlib.sha256(self._body()).digest()

    def signed_message(self) -> bytes:
        if self.version == ENVELOPE_FORMAT:
            return _DOMAIN_V2 + self.body_digest()
        header = [
            LEGACY_FORMAT,
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

    def _header_fields(self) -> tuple[tuple[str, object], ...]:
        """The fields before ``chunks``, in wire order."""
        scheme: tuple[tuple[str, object], ...] = (("scheme", self.scheme),) if self.version == ENVELOPE_FORMAT else ()
        return (
            ("v", self.version),
            *scheme,
            ("kind", self.kind),
            ("run", self.run),
            ("round", self.round),
            ("hosp", self.hospital),
            ("fp", self.fingerprint),
            ("base", self.base),
            ("len", self.length),
            ("scale", self.scale_bits),
        )

    def _body(self) -> bytes:
        """Everything before the ``sig`` key: what format 2 signs (by digest)."""
        return bytes(self.pack_streaming(self.chunks, len(self.chunks), with_signature=False))

    def to_bytes(self) -> bytes:
        payload = {**dict(self._header_fields()), "chunks": list(self.chunks), "sig": self.signature}
        data: bytes = msgpack.packb(payload, use_bin_type=True)
        return data

    def pack_streaming(self, chunks: Iterable[Chunk], count: int, *, with_signature: bool = True) -> bytearray:
        """The same bytes as ``to_bytes`` with ``chunks`` in place of ``self.chunks``, written one chunk at a time.

        Only one serialised chunk exists at a time next to the growing output, instead of every chunk plus a packed
        copy of them all (peak 2 models instead of 3). ``write_streaming`` writes the same bytes to a file instead.
        """
        out = bytearray()
        self.write_streaming(out.extend, chunks, count, with_signature=with_signature)
        return out

    def write_streaming(
        self, write: Callable[[bytes], object], chunks: Iterable[Chunk], count: int, *, with_signature: bool = True
    ) -> None:
        """``pack_streaming``'s bytes, handed to ``write`` piece by piece (the aggregator's finalise writes its sum
        to a file this way, so the serialised sum never sits in memory next to the ciphertexts it came from)."""
        packer = msgpack.Packer(use_bin_type=True)
        write(packer.pack_map_header(len(_FIELDS if self.version == ENVELOPE_FORMAT else _FIELDS_V1)))
        for name, value in self._header_fields():
            write(packer.pack(name))
            write(packer.pack(value))
        write(packer.pack("chunks"))
        write(packer.pack_array_header(count))
        written = 0
        for chunk in chunks:
            write(packer.pack(chunk))
            written += 1
        if written != count:
            raise ValueError(f"pack_streaming was promised {count} chunks and given {written}")
        if with_signature:
            write(packer.pack("sig"))
            write(packer.pack(self.signature))

    @classmethod
    def from_bytes(cls, data: bytes, *, limits: EnvelopeLimits) -> Envelope:
        return _decode(data, limits, file_digest=False)[0]


def read_envelope(data: bytes, *, limits: EnvelopeLimits) -> tuple[Envelope, str]:
    """Decode an envelope and return it with the sha256 hex of ``data``: the fold path's single digest pass.

    For format 2 the same hasher yields the signed body digest (kept on the envelope, so verifying the signature
    hashes nothing more) and, continued over the ``sig`` field, the file digest the receipt must match. Format 1
    envelopes cost their old second pass when their signature is checked.
    """
    return _decode(data, limits, file_digest=True)


def _decode(data: bytes, limits: EnvelopeLimits, *, file_digest: bool) -> tuple[Envelope, str]:
    if not isinstance(data, bytes | bytearray | memoryview):
        raise EnvelopeFormatError(f"envelope must be bytes, got {type(data).__name__}")
    if len(data) == 0:
        raise EnvelopeFormatError("envelope is empty (0 bytes)")
    if len(data) > limits.max_total_bytes:
        raise EnvelopeSizeError(
            f"envelope is {len(data)} bytes, more than the {limits.max_total_bytes} this model can need"
        )
    raw = bytes(data)  # no copy when data is already bytes
    payload, sig_offset = _unpack_bounded(raw, limits)
    envelope = _from_payload(payload, limits)
    if envelope.version != ENVELOPE_FORMAT:
        return envelope, hashlib.sha256(raw).hexdigest() if file_digest else ""
    if list(payload)[-1] != "sig":  # the payload dict keeps the wire order
        raise EnvelopeFormatError("format 2 envelope must end with its 'sig' field")
    hasher = hashlib.sha256(memoryview(raw)[:sig_offset])
    object.__setattr__(envelope, "received_body_digest", hasher.copy().digest())
    if not file_digest:
        return envelope, ""
    hasher.update(memoryview(raw)[sig_offset:])
    return envelope, hasher.hexdigest()


def _unpack_bounded(data: bytes, limits: EnvelopeLimits) -> tuple[dict[str, object], int]:
    """Walk the top-level map with msgpack's bounded streaming unpacker; chunks become views of ``data``.

    Also returns the offset at which the ``sig`` key starts (-1 if absent): the end of format 2's signed body."""
    unpacker = msgpack.Unpacker(
        io.BytesIO(data),  # shares data's buffer; the unpacker reads it in small pieces
        **_msgpack_bounds(limits),
        max_buffer_size=max(limits.max_chunk_bytes + 64, 1 << 20),
    )
    try:
        try:
            fields = unpacker.read_map_header()
        except ValueError:
            _refuse_non_map(data, limits)
            raise
        if fields > _MAX_MAP_LEN:
            raise EnvelopeSizeError(
                f"envelope map declares {fields} fields, which exceeds max_map_len ({_MAX_MAP_LEN})"
            )
        payload: dict[str, object] = {}
        sig_offset = -1
        for _ in range(fields):
            offset = unpacker.tell()
            key = unpacker.unpack()
            if key == "sig":
                sig_offset = offset
            if not isinstance(key, str):
                raise EnvelopeFormatError(f"envelope is not valid msgpack: a field name is {type(key).__name__}")
            if key in payload:
                raise EnvelopeFormatError(f"envelope field {key!r} appears twice")
            payload[key] = _chunk_views(data, unpacker, limits) if key == "chunks" else unpacker.unpack()
        if unpacker.tell() != len(data):
            raise EnvelopeFormatError(f"envelope has {len(data) - unpacker.tell()} bytes after its end")
    except ValueError as exc:
        if "exceeds max" in str(exc):
            raise EnvelopeSizeError(f"envelope field too large: {exc}") from exc
        raise EnvelopeFormatError(f"envelope is not valid msgpack: {exc}") from exc
    except msgpack.OutOfData as exc:
        raise EnvelopeFormatError("envelope is not valid msgpack: incomplete input (it ends inside a field)") from exc
    except (msgpack.UnpackException, TypeError) as exc:
        raise EnvelopeFormatError(f"envelope is not valid msgpack: {exc}") from exc
    return payload, sig_offset


def _msgpack_bounds(limits: EnvelopeLimits) -> dict[str, Any]:
    """The decoder's limits, checked by msgpack before it allocates (both decoders of an envelope use them)."""
    return {
        "raw": False,
        "strict_map_key": True,
        "max_bin_len": limits.max_chunk_bytes,
        "max_str_len": 256,
        "max_array_len": limits.max_chunks,
        "max_map_len": _MAX_MAP_LEN,
        "max_ext_len": 0,
    }


def _refuse_non_map(data: bytes, limits: EnvelopeLimits) -> None:
    """Name what a non-map envelope is, or why it is not msgpack at all (rare, so the plain bounded decoder).

    Decoding errors propagate to the caller, which classifies them like its own."""
    value = msgpack.unpackb(data, **_msgpack_bounds(limits))
    raise EnvelopeFormatError(f"envelope must be a msgpack map, got {type(value).__name__}")


def _chunk_views(data: bytes, unpacker: msgpack.Unpacker, limits: EnvelopeLimits) -> list[memoryview]:
    """The ``chunks`` array as zero-copy views; every element must be a msgpack bin within the size limit."""
    not_bytes = "envelope chunks must be a non-empty list of non-empty byte strings"
    start = unpacker.tell()
    if start < len(data) and not (0x90 <= data[start] <= 0x9F or data[start] in (0xDC, 0xDD)):
        value = unpacker.unpack()  # not an array: decode it (bounded) only to name its type
        raise EnvelopeFormatError(f"envelope field 'chunks' must be list, got {type(value).__name__}")
    count = unpacker.read_array_header()
    if count > limits.max_chunks:
        raise EnvelopeSizeError(
            f"envelope holds {count} chunks, which exceeds max_array_len ({limits.max_chunks} for this model)"
        )
    view = memoryview(data)
    chunks = []
    for index in range(count):
        start = unpacker.tell()
        if start >= len(data):
            raise msgpack.OutOfData
        width = _BIN_LENGTH_BYTES.get(data[start])
        if width is None:
            raise EnvelopeFormatError(f"{not_bytes}: chunk {index} is not a byte string")
        length = int.from_bytes(data[start + 1 : start + 1 + width], "big")
        if length > limits.max_chunk_bytes:
            raise EnvelopeSizeError(
                f"envelope chunk {index} is {length} bytes, which exceeds max_bin_len "
                f"({limits.max_chunk_bytes} for this model)"
            )
        unpacker.skip()  # checks the chunk is complete; at most one chunk is buffered
        body = start + 1 + width
        chunks.append(view[body : body + length])
    return chunks


def _field(payload: dict[str, object], name: str, kind: type) -> object:
    return typed_field(payload, name, kind, what="envelope", error=EnvelopeFormatError)


def _from_payload(payload: dict[str, object], limits: EnvelopeLimits) -> Envelope:
    version = payload.get("v")
    if type(version) is not int or version not in (ENVELOPE_FORMAT, LEGACY_FORMAT):
        raise EnvelopeVersionError(
            f"envelope format {version!r} is not supported (expected {ENVELOPE_FORMAT}, or {LEGACY_FORMAT})"
        )
    fields = _FIELDS if version == ENVELOPE_FORMAT else _FIELDS_V1
    missing = fields - payload.keys()
    extra = payload.keys() - fields
    if missing or extra:
        raise EnvelopeFormatError(f"envelope fields wrong: missing {sorted(missing)}, unexpected {sorted(extra)}")
    scheme = str(_field(payload, "scheme", str)) if version == ENVELOPE_FORMAT else ""
    if version == ENVELOPE_FORMAT and scheme not in SCHEMES:
        raise EnvelopeVersionError(f"envelope scheme {scheme!r} is unknown (expected one of {SCHEMES})")
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
    if not chunks or not all(isinstance(c, memoryview) and len(c) for c in chunks):
        raise EnvelopeFormatError("envelope chunks must be a non-empty list of non-empty byte strings")
    signature = bytes(_field(payload, "sig", bytes))  # type: ignore[call-overload]
    if signature and len(signature) != SIGNATURE_BYTES:
        raise SignatureError(f"envelope signature is {len(signature)} bytes, an Ed25519 signature is 64")
    if not scheme:  # format 1 predates bfv-masked: its envelopes are ckks, or the plaintext comparison mode
        scheme = "plaintext" if fingerprint == _PLAINTEXT_FINGERPRINT else "ckks"
    return Envelope(
        kind,
        run,
        round_number,
        hospital,
        fingerprint,
        base,
        length,
        scale_bits,
        tuple(chunks),
        signature,
        scheme,
        version,
    )


def check_envelope(envelope: Envelope, *, expect: EnvelopeExpectation, registry: HospitalRegistry | None) -> None:
    """Header checks and signature verification; ciphertext validity is checked when folding.

    ``registry`` is None only for the unsigned global model, which is identified by its digest instead.
    """
    if envelope.kind != expect.kind:
        raise EnvelopeVersionError(f"expected a {expect.kind!r} envelope, got {envelope.kind!r}")
    if expect.scheme is not None and envelope.scheme != expect.scheme:
        raise ContextMismatchError(
            f"envelope from {envelope.hospital or 'the store'!r} is encoded with scheme {envelope.scheme!r}, "
            f"this run uses {expect.scheme!r}"
        )
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

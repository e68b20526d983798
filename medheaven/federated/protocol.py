"""Round-protocol rules shared by hospitals and the aggregator: what an envelope of a round must look like."""

from __future__ import annotations

import hashlib

from medheaven.crypto.envelope import EnvelopeExpectation, EnvelopeLimits
from medheaven.federated.phase import Phase
from medheaven.federated.wire import PLAINTEXT_FINGERPRINT, RunDescription


def envelope_limits(run: RunDescription, *, length: int | None = None) -> EnvelopeLimits:
    vector = length if length is not None else run.vector_length
    chunks = run.params.chunk_count(vector)
    chunk_bytes = run.params.slots * 8 if run.plaintext else run.params.max_chunk_bytes()
    return EnvelopeLimits(max_chunks=chunks, max_chunk_bytes=chunk_bytes, max_length=vector)


def expectation(
    run: RunDescription, *, phase: Phase, round_number: int, base: str, length: int, result: bool = False
) -> EnvelopeExpectation:
    """What a hospital's upload of ``phase`` (or, with ``result``, the committed sum) must look like."""
    return EnvelopeExpectation(
        kind=phase.result_kind if result else phase.upload_kind,
        run=run.run,
        round=round_number,
        fingerprint=PLAINTEXT_FINGERPRINT if run.plaintext else run.fingerprint,
        base=base,
        length=length,
        chunk_count=run.params.chunk_count(length),
        scale_bits=0 if run.plaintext else phase.scale_bits(run),
    )


def sha256_hex(data: bytes | bytearray | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()

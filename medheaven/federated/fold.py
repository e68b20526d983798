"""The fold: add one verified envelope into a round's running sum, whatever the scheme.

``fold_update`` is the whole protocol step: the header checks and the signature (``check_envelope``), then the
scheme's accumulator (``medheaven.crypto.accumulators``, chosen once by ``medheaven.crypto.codec``) adds the chunks,
validating each and undoing a partial add exactly. This module knows no cryptographic library.
"""

from __future__ import annotations

from medheaven.crypto.accumulators import (
    Accumulator,
    BfvAccumulator,
    CkksAccumulator,
    EncryptedAccumulator,
    PlainAccumulator,
    plain_chunks,
)
from medheaven.crypto.envelope import Envelope, EnvelopeExpectation, check_envelope
from medheaven.crypto.signing import HospitalRegistry

__all__ = [
    "Accumulator",
    "BfvAccumulator",
    "CkksAccumulator",
    "EncryptedAccumulator",
    "PlainAccumulator",
    "fold_update",
    "plain_chunks",
]


def fold_update(
    accumulator: Accumulator,
    envelope: Envelope,
    *,
    expect: EnvelopeExpectation,
    registry: HospitalRegistry,
) -> None:
    """Verify one hospital's envelope against the round's expectations and add it to the running sum."""
    check_envelope(envelope, expect=expect, registry=registry)
    accumulator.add_chunks(envelope.chunks, source=f"{envelope.kind} of {envelope.hospital!r}")

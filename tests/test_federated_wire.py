"""Signed receipts (``wire.Receipt``): what binds a fold message to the hospital that completed the update."""

from __future__ import annotations

import json
from dataclasses import replace

import msgpack
import pytest
from crypto_fixtures import signing_key

from medheaven.crypto.signing import HospitalRegistry, SigningKey
from medheaven.errors import EnvelopeFormatError, SignatureError
from medheaven.federated.wire import Receipt


def registry_of(*keys: SigningKey) -> HospitalRegistry:
    registry = HospitalRegistry()
    for key in keys:
        registry = registry.with_hospital(key.hospital_id, key.verify_key_hex())
    return registry


RECEIPT = Receipt(
    "wire", 2, 1, "update", "h1", "wire/updates/2/a1/h1.ckks", "ab" * 32, 10, {"loss": 0.5}, {"train": 1}, 1234.5
)


def test_receipt_signature_survives_msgpack_and_json() -> None:
    key = signing_key("h1")
    signed = RECEIPT.signed_by(key)
    for decoded in (msgpack.unpackb(msgpack.packb(signed.to_dict())), json.loads(json.dumps(signed.to_dict()))):
        Receipt.from_dict(decoded).verify(registry_of(key))  # int timings come back as floats: still verifies


@pytest.mark.parametrize(
    "change", [{"attempt": 2}, {"sha256": "0" * 64}, {"completed_at": 1.0}, {"hospital": "h2"}, {"metrics": {}}]
)
def test_receipt_signature_covers_every_field(change: dict[str, object]) -> None:
    key, other = signing_key("h1"), signing_key("h2")
    altered = replace(RECEIPT.signed_by(key), **change)
    with pytest.raises(SignatureError):
        altered.verify(registry_of(key, other))


def test_receipt_unsigned_or_signed_by_another_hospital_refused() -> None:
    key, other = signing_key("h1"), signing_key("h2")
    with pytest.raises(SignatureError, match="carries no signature"):
        RECEIPT.verify(registry_of(key))
    with pytest.raises(SignatureError, match="cannot sign a receipt"):
        RECEIPT.signed_by(other)
    forged = replace(RECEIPT, signature=replace(RECEIPT, hospital="h2").signed_by(other).signature)
    with pytest.raises(SignatureError, match="does not verify"):
        forged.verify(registry_of(key, other))


@pytest.mark.parametrize("bad", [{"signature": "zz"}, {"signature": 5}, {"completed_at": float("inf")}])
def test_receipt_from_dict_refuses_malformed_signature_fields(bad: dict[str, object]) -> None:
    with pytest.raises(EnvelopeFormatError):
        Receipt.from_dict({**RECEIPT.to_dict(), **bad})

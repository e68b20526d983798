"""Hospital identities: Ed25519 signing keys (hospital-only, 0600) and the registry of verification keys.

The aggregator verifies every update against the registry, so a party that can write to the broker or the store
but holds no hospital's signing key cannot inject, replace or replay-as-another-hospital an update.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from medheaven.errors import ConfigurationError, SignatureError, UnknownHospitalError
from medheaven.private_files import check_private_file_mode, write_private_file, write_public_file

HOSPITAL_ID = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
SIGNATURE_BYTES = 64


def validate_hospital_id(hospital_id: str) -> str:
    if not isinstance(hospital_id, str) or not HOSPITAL_ID.fullmatch(hospital_id):
        raise ConfigurationError(
            f"hospital id {hospital_id!r} is not valid: use 1-63 lower-case letters, digits, '-' or '_' "
            "(it becomes a queue name and a file name)"
        )
    return hospital_id


@dataclass(frozen=True)
class SigningKey:
    hospital_id: str
    key: Ed25519PrivateKey

    def sign(self, message: bytes) -> bytes:
        return self.key.sign(message)

    def verify_key_hex(self) -> str:
        raw = self.key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return raw.hex()


def create_hospital_identity(hospital_id: str, out_dir: Path, *, force: bool = False) -> tuple[Path, Path]:
    """Write ``<id>.signing.pem`` (0600) and ``<id>.verify.hex`` into ``out_dir``."""
    validate_hospital_id(hospital_id)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    signing_path = out_dir / f"{hospital_id}.signing.pem"
    verify_path = out_dir / f"{hospital_id}.verify.hex"
    if not force:
        for path in (signing_path, verify_path):
            if path.exists():
                raise ConfigurationError(f"{path} exists; pass --force to replace this hospital's identity")
    write_private_file(signing_path, pem, force=force)
    verify_hex = SigningKey(hospital_id, key).verify_key_hex()
    write_public_file(verify_path, f"{verify_hex}\n".encode(), force=force)
    return signing_path, verify_path


def load_signing_key(path: Path, *, hospital_id: str) -> SigningKey:
    check_private_file_mode(path)
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigurationError(f"{path} is not a PEM Ed25519 signing key ({exc})") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigurationError(f"{path} holds a {type(key).__name__}, not an Ed25519 signing key")
    return SigningKey(validate_hospital_id(hospital_id), key)


def parse_verify_key(text: str, *, source: str) -> Ed25519PublicKey:
    try:
        raw = bytes.fromhex(text.strip())
        if len(raw) != 32:
            raise ValueError(f"{len(raw)} bytes, expected 32")
        return Ed25519PublicKey.from_public_bytes(raw)
    except ValueError as exc:
        raise ConfigurationError(f"{source}: not a hex Ed25519 verification key ({exc})") from exc


@dataclass(frozen=True)
class HospitalRegistry:
    """hospital id -> verification key; stored as ``hospitals.json`` (public material only)."""

    keys: dict[str, str] = field(default_factory=dict)

    def verify(self, hospital_id: str, message: bytes, signature: bytes) -> None:
        if hospital_id not in self.keys:
            raise UnknownHospitalError(
                f"hospital {hospital_id!r} is not registered; register it with `medheaven hospital register`"
            )
        public = parse_verify_key(self.keys[hospital_id], source=f"registry entry {hospital_id!r}")
        try:
            public.verify(signature, message)
        except InvalidSignature as exc:
            raise SignatureError(
                f"signature does not verify with hospital {hospital_id!r}'s registered key: the update was "
                "altered or signed by someone else"
            ) from exc

    def with_hospital(self, hospital_id: str, verify_key_hex: str) -> HospitalRegistry:
        validate_hospital_id(hospital_id)
        parse_verify_key(verify_key_hex, source=f"verification key of {hospital_id!r}")
        return HospitalRegistry({**self.keys, hospital_id: verify_key_hex.strip()})

    def without_hospital(self, hospital_id: str) -> HospitalRegistry:
        return HospitalRegistry({k: v for k, v in self.keys.items() if k != hospital_id})

    def to_dict(self) -> dict[str, Any]:
        return {"format": 1, "hospitals": {h: {"verify_key": k} for h, k in sorted(self.keys.items())}}

    @classmethod
    def from_dict(cls, data: Any, *, source: str = "hospitals.json") -> HospitalRegistry:
        try:
            entries = data["hospitals"]
            keys = {validate_hospital_id(h): str(v["verify_key"]) for h, v in entries.items()}
        except (KeyError, TypeError, AttributeError) as exc:
            raise ConfigurationError(f"{source} is not a hospital registry ({exc})") from exc
        return cls(keys)

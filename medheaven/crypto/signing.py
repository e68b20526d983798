"""Hospital identities: Ed25519 signing keys (hospital-only, 0600) and the registry of verification keys.

The aggregator verifies every update against the registry, so a party that can write to the broker or the store
but holds no hospital's signing key cannot inject, replace or replay-as-another-hospital an update.

The registry also carries each hospital's X25519 *agreement* public key (``crypto/masks.py``), from which its
cohort peers derive their pairwise masks. A registry written before masking has none: it still loads and serves
the ``ckks`` scheme, but a masked run refuses to start (``require_agreement_keys``) until each hospital has run
``medheaven hospital init`` and been registered again.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

from medheaven.errors import ConfigurationError, SignatureError, UnknownHospitalError
from medheaven.private_files import check_private_file_mode, write_private_file, write_public_file

PublicKey = TypeVar("PublicKey", Ed25519PublicKey, X25519PublicKey)

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


def load_private_pem(path: Path, *, what: str) -> PrivateKeyTypes:
    """A hospital's private key file (PEM, unencrypted, owner-only); the caller checks the key's type."""
    check_private_file_mode(path)
    try:
        return serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigurationError(f"{path} is not a PEM {what} ({exc})") from exc


def public_key_from_hex(text: str, parse: Callable[[bytes], PublicKey], *, source: str, what: str) -> PublicKey:
    """A 32-byte public key (Ed25519 or X25519) written as hex, as the ``.hex`` files hospitals send carry it."""
    try:
        raw = bytes.fromhex(text.strip())
        if len(raw) != 32:
            raise ValueError(f"{len(raw)} bytes, expected 32")
        return parse(raw)
    except ValueError as exc:
        raise ConfigurationError(f"{source}: not a hex {what} ({exc})") from exc


def load_signing_key(path: Path, *, hospital_id: str) -> SigningKey:
    key = load_private_pem(path, what="Ed25519 signing key")
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigurationError(f"{path} holds a {type(key).__name__}, not an Ed25519 signing key")
    return SigningKey(validate_hospital_id(hospital_id), key)


def parse_verify_key(text: str, *, source: str) -> Ed25519PublicKey:
    return public_key_from_hex(text, Ed25519PublicKey.from_public_bytes, source=source, what="Ed25519 verification key")


def agreement_key_path(signing_key: Path, hospital_id: str) -> Path:
    """Where a hospital's X25519 agreement key lives: beside its signing key (``<id>.agreement.pem``), as
    ``medheaven hospital init`` writes them, so a worker needs no second setting to find it."""
    return signing_key.with_name(f"{validate_hospital_id(hospital_id)}.agreement.pem")


def _parse_agreement(text: str, *, source: str) -> X25519PublicKey:
    from medheaven.crypto.masks import parse_agreement_key  # masks imports this module

    return parse_agreement_key(text, source=source)


@dataclass(frozen=True)
class HospitalRegistry:
    """hospital id -> verification key (and agreement public key); stored as ``hospitals.json`` (public only)."""

    keys: dict[str, str] = field(default_factory=dict)
    agreement: dict[str, str] = field(default_factory=dict)  # hospital id -> X25519 public key hex; may lack some

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

    def require_agreement_keys(self, hospitals: Iterable[str]) -> dict[str, X25519PublicKey]:
        """The agreement public keys of ``hospitals``; a masked run cannot start or mask without every one."""
        wanted = list(hospitals)
        lacking = [h for h in wanted if h not in self.agreement]
        if lacking:
            raise ConfigurationError(
                f"hospitals.json has no agreement key for {', '.join(lacking)}: a pairwise-masked (bfv-masked) run "
                "needs one per hospital. On each of those hospitals run `medheaven hospital init --id ID --out "
                "keys/` (it keeps an existing signing key) and send ID.agreement.hex to the operator for `medheaven "
                "hospital register --id ID --verify-key ID.verify.hex --agreement-key ID.agreement.hex`; or run the "
                "federation on the older `ckks` scheme"
            )
        return {
            h: _parse_agreement(self.agreement[h], source=f"agreement key of {h!r} in hospitals.json") for h in wanted
        }

    def with_hospital(
        self, hospital_id: str, verify_key_hex: str, agreement_key_hex: str | None = None
    ) -> HospitalRegistry:
        validate_hospital_id(hospital_id)
        parse_verify_key(verify_key_hex, source=f"verification key of {hospital_id!r}")
        agreement = {k: v for k, v in self.agreement.items() if k != hospital_id}
        if agreement_key_hex is not None:
            _parse_agreement(agreement_key_hex, source=f"agreement key of {hospital_id!r}")
            agreement[hospital_id] = agreement_key_hex.strip()
        return HospitalRegistry({**self.keys, hospital_id: verify_key_hex.strip()}, agreement)

    def without_hospital(self, hospital_id: str) -> HospitalRegistry:
        return HospitalRegistry(
            {k: v for k, v in self.keys.items() if k != hospital_id},
            {k: v for k, v in self.agreement.items() if k != hospital_id},
        )

    def to_dict(self) -> dict[str, Any]:
        hospitals: dict[str, dict[str, str]] = {}
        for hospital, key in sorted(self.keys.items()):
            hospitals[hospital] = {"verify_key": key}
            if hospital in self.agreement:
                hospitals[hospital]["agreement_key"] = self.agreement[hospital]
        return {"format": 1, "hospitals": hospitals}

    @classmethod
    def from_dict(cls, data: Any, *, source: str = "hospitals.json") -> HospitalRegistry:
        try:
            entries = data["hospitals"]
            keys = {validate_hospital_id(h): str(v["verify_key"]) for h, v in entries.items()}
            agreement = {h: str(v["agreement_key"]) for h, v in entries.items() if "agreement_key" in v}
        except (KeyError, TypeError, AttributeError) as exc:
            raise ConfigurationError(f"{source} is not a hospital registry ({exc})") from exc
        return cls(keys, agreement)

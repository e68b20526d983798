"""Key custody: secret and public CKKS contexts are different types.

``SecretContext`` can encrypt and decrypt and lives only in hospital processes. ``PublicContext`` can only hold
and add ciphertexts; aggregation code is typed to accept nothing else, and its serialisation path has no way to
include a secret key (TenSEAL's ``make_context_public`` drops it, and we re-check after loading).

Neither file carries relinearisation or Galois keys: FedAvg only adds, and Galois keys alone would make the
public context ~35 MB instead of ~125 KB.

Two encryption modes, chosen at the key ceremony and recorded in both files:

``symmetric`` (the default for new key sets)
    Hospitals encrypt with the shared secret key (SEAL's ``encrypt_symmetric``), which costs about half of a
    public-key encryption and adds less noise; ciphertexts are the same size. The aggregator's context then holds
    no key at all (~90 bytes: parameters only): it can deserialise and add ciphertexts but cannot encrypt, so it
    cannot make up a ciphertext of its own, only add up the ones it was sent.
``public-key``
    Hospitals encrypt with the public key, which the public context carries (~125 KB). Anyone holding the public
    context can encrypt. Key sets made before the mode existed are this mode.

The fingerprint names the key set. In public-key mode it is the sha256 of the public context's TenSEAL bytes. A
keyless context is the same for every key set with the same parameters, so in symmetric mode the fingerprint also
covers a key commitment, ``key_id = sha256(domain || secret context bytes)``, which both files carry: a hash of a
~6,500-bit secret reveals nothing of it, and a hospital recomputes it from its own key on load.

Files are msgpack maps ``{"format", "kind", "params", "fingerprint", "tenseal", "encryption", "scheme"}``
(``encryption`` absent means ``public-key``; ``scheme`` is ``"ckks"``, absent in files made before ``bfv-masked``
existed, see ``codec.py``); msgpack rather than pickle because loading a pickle runs code.
"""

from __future__ import annotations

import hashlib
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import tenseal as ts

from medheaven.crypto.planning import CkksParameters
from medheaven.errors import ConfigurationError, CryptoError, KeyCustodyError, ParameterPlanningError
from medheaven.private_files import check_private_file_mode

CONTEXT_FORMAT = 1
_MAX_CONTEXT_FILE = 64 * 1024 * 1024
SYMMETRIC = "symmetric"
PUBLIC_KEY = "public-key"
ENCRYPTION_MODES = (SYMMETRIC, PUBLIC_KEY)
_KEY_ID_DOMAIN = b"medheaven-key-commitment/1\x00"


def _serialise(context: ts.Context, *, secret: bool, encryption: str = PUBLIC_KEY) -> bytes:
    data: bytes = context.serialize(
        save_public_key=encryption == PUBLIC_KEY, save_secret_key=secret, save_galois_keys=False, save_relin_keys=False
    )
    return data


def _is_symmetric(context: ts.Context) -> bool:
    """TenSEAL exposes no getter for the encryption type; asking a symmetric context for its public key raises."""
    try:
        context.has_public_key()
    except ValueError:
        return True
    return False


def _public_form(context: ts.Context, encryption: str) -> ts.Context:
    """The same context without its secret key: with the public key (public-key mode) or with no key at all."""
    if encryption == PUBLIC_KEY:
        public = context.copy()
        public.make_context_public(generate_galois_keys=False, generate_relin_keys=False)
        return public
    # make_context_public refuses symmetric contexts; serialising without keys gives the parameters alone
    return ts.context_from(_serialise(context, secret=False, encryption=SYMMETRIC))


def _key_id(context: ts.Context, encryption: str) -> bytes:
    """Symmetric mode's key commitment (empty in public-key mode, whose public key already names the key set)."""
    if encryption == PUBLIC_KEY:
        return b""
    return hashlib.sha256(_KEY_ID_DOMAIN + _serialise(context, secret=True, encryption=SYMMETRIC)).digest()


def _fingerprint(public_raw: bytes, key_id: bytes) -> str:
    return hashlib.sha256(public_raw + key_id).hexdigest()


@dataclass(frozen=True)
class _KeySet:
    """What a public and a secret context both record. Only their own classes are ever handed around: code typed
    to take a ``PublicContext`` cannot be given a ``SecretContext`` (they are siblings, neither is the other)."""

    params: CkksParameters
    fingerprint: str
    tenseal: ts.Context
    encryption: str = PUBLIC_KEY


@dataclass(frozen=True)
class PublicContext(_KeySet):
    """Holds and adds ciphertexts; cannot decrypt."""

    key_id: bytes = b""

    def __post_init__(self) -> None:
        if self.tenseal.is_private() or self.tenseal.has_secret_key():
            raise KeyCustodyError("refusing to build a PublicContext around a context that holds a secret key")

    def to_bytes(self) -> bytes:
        raw = _serialise(self.tenseal, secret=False, encryption=self.encryption)
        return _wrap("public-context", self.params, self.fingerprint, raw, self.encryption, self.key_id)

    @classmethod
    def from_bytes(cls, data: bytes, *, source: str = "public context") -> PublicContext:
        kind, params, fingerprint, raw, encryption, key_id = _unwrap(data, source=source)
        if kind != "public-context":
            raise KeyCustodyError(
                f"{source} is a {kind} file; the aggregator and the store only ever take the public context"
            )
        if _fingerprint(raw, key_id) != fingerprint:
            raise CryptoError(f"{source}: fingerprint does not match its contents; the file is corrupt")
        context = ts.context_from(raw)
        return cls(params=params, fingerprint=fingerprint, tenseal=context, encryption=encryption, key_id=key_id)


@dataclass(frozen=True)
class SecretContext(_KeySet):
    """Encrypts and decrypts. Only hospitals (key holders) ever construct one."""

    def __post_init__(self) -> None:
        if not self.tenseal.has_secret_key():
            raise KeyCustodyError("a SecretContext needs a context with its secret key")
        if (self.encryption == SYMMETRIC) != _is_symmetric(self.tenseal):
            raise KeyCustodyError(
                f"the secret context is recorded as {self.encryption!r} encryption but its TenSEAL context is not; "
                "the file was edited: restore it from the key ceremony"
            )

    def public(self) -> PublicContext:
        return PublicContext(
            params=self.params,
            fingerprint=self.fingerprint,
            tenseal=_public_form(self.tenseal, self.encryption),
            encryption=self.encryption,
            key_id=_key_id(self.tenseal, self.encryption),
        )

    def to_bytes(self) -> bytes:
        raw = _serialise(self.tenseal, secret=True, encryption=self.encryption)
        return _wrap("secret-context", self.params, self.fingerprint, raw, self.encryption, b"")

    @classmethod
    def from_bytes(cls, data: bytes, *, source: str = "secret context") -> SecretContext:
        kind, params, fingerprint, raw, encryption, _ = _unwrap(data, source=source)
        if kind != "secret-context":
            raise KeyCustodyError(f"{source} is a {kind} file, not a secret context")
        context = ts.context_from(raw)
        context.global_scale = 2.0**params.scale_bits
        if (encryption == SYMMETRIC) != _is_symmetric(context):
            raise CryptoError(f"{source} says {encryption!r} encryption but holds the other kind of context")
        if _fingerprint_of(context, encryption) != fingerprint:
            raise CryptoError(f"{source}: fingerprint does not match the key inside; the file is corrupt or edited")
        return cls(params=params, fingerprint=fingerprint, tenseal=context, encryption=encryption)

    def encrypt(self, values: np.ndarray, *, scale_bits: int | None = None) -> bytes:
        bits = self.params.scale_bits if scale_bits is None else scale_bits
        vector = ts.ckks_vector(self.tenseal, values, scale=2.0**bits)
        data: bytes = vector.serialize()
        return data

    def decrypt(self, chunk: bytes | memoryview) -> np.ndarray:
        # TenSEAL takes bytes only: a decoded envelope's view is copied here, one chunk at a time (bytes pass as is)
        vector = ts.ckks_vector_from(self.tenseal, bytes(chunk))
        return np.asarray(vector.decrypt(), dtype=np.float64)


def create_key_material(params: CkksParameters, *, encryption: str = SYMMETRIC) -> SecretContext:
    """Generate a fresh CKKS key set for the federation (the key ceremony's only cryptographic step)."""
    if encryption not in ENCRYPTION_MODES:
        raise ConfigurationError(f"encryption mode {encryption!r} is unknown; use one of {', '.join(ENCRYPTION_MODES)}")
    context = ts.context(
        ts.SCHEME_TYPE.CKKS,
        poly_modulus_degree=params.poly_modulus_degree,
        coeff_mod_bit_sizes=list(params.coeff_mod_bit_sizes),
        encryption_type=ts.ENCRYPTION_TYPE.SYMMETRIC if encryption == SYMMETRIC else ts.ENCRYPTION_TYPE.ASYMMETRIC,
    )
    context.global_scale = 2.0**params.scale_bits
    fingerprint = _fingerprint_of(context, encryption)
    return SecretContext(params=params, fingerprint=fingerprint, tenseal=context, encryption=encryption)


def _fingerprint_of(secret_context: ts.Context, encryption: str) -> str:
    public = _public_form(secret_context, encryption)
    return _fingerprint(_serialise(public, secret=False, encryption=encryption), _key_id(secret_context, encryption))


def _wrap(kind: str, params: CkksParameters, fingerprint: str, raw: bytes, encryption: str, key_id: bytes) -> bytes:
    payload: dict[str, Any] = {
        "format": CONTEXT_FORMAT,
        "kind": kind,
        "params": params.to_dict(),
        "fingerprint": fingerprint,
        "tenseal": raw,
        "encryption": encryption,
        "scheme": "ckks",  # files made before the field existed are ckks too (codec.key_file_scheme)
    }
    if key_id:
        payload["key_id"] = key_id
    data: bytes = msgpack.packb(payload, use_bin_type=True)
    return data


def _unwrap(data: bytes, *, source: str) -> tuple[str, CkksParameters, str, bytes, str, bytes]:
    if len(data) > _MAX_CONTEXT_FILE:
        raise CryptoError(f"{source} is {len(data)} bytes, more than any MedHeaven context file")
    try:
        payload = msgpack.unpackb(data, raw=False, max_bin_len=_MAX_CONTEXT_FILE, max_str_len=4096)
        if not isinstance(payload, dict) or payload.get("format") != CONTEXT_FORMAT:
            raise ValueError("not a MedHeaven context file (format 1)")
        if payload.get("scheme", "ckks") != "ckks":
            raise ValueError(
                f"it holds a {payload.get('scheme')!r} key set, not a CKKS context: load it with "
                "medheaven.crypto.codec.load_secret_keys / load_public_keys"
            )
        kind = str(payload["kind"])
        params = CkksParameters.from_dict(payload["params"])
        fingerprint = str(payload["fingerprint"])
        raw = payload["tenseal"]
        if not isinstance(raw, bytes):
            raise ValueError("context bytes missing")
        encryption = payload.get("encryption", PUBLIC_KEY)
        if encryption not in ENCRYPTION_MODES:
            raise ValueError(f"encryption mode {encryption!r} is unknown")
        key_id = payload.get("key_id", b"")
        if not isinstance(key_id, bytes) or len(key_id) not in (0, 32):
            raise ValueError("key_id must be 32 bytes")
    except (ValueError, KeyError, TypeError, msgpack.UnpackException, ParameterPlanningError) as exc:
        raise CryptoError(f"{source} is not a MedHeaven context file ({exc}); run `medheaven keys init`") from exc
    return kind, params, fingerprint, raw, str(encryption), key_id


def load_secret_context(path: Path) -> SecretContext:
    check_private_file_mode(path)
    return SecretContext.from_bytes(path.read_bytes(), source=str(path))


def load_public_context(path: Path) -> PublicContext:
    if not path.is_file():
        raise ConfigurationError(f"public context file {path} does not exist; run `medheaven keys init`")
    return PublicContext.from_bytes(path.read_bytes(), source=str(path))


def describe_context_file(path: Path) -> dict[str, Any]:
    """What `medheaven keys show` prints: parameters, fingerprint, sizes, and whether a secret key is inside."""
    data = path.read_bytes()
    kind, params, fingerprint, raw, encryption, _ = _unwrap(data, source=str(path))
    context = ts.context_from(raw)
    return {
        "path": str(path),
        "kind": kind,
        "encryption": encryption,
        "fingerprint": fingerprint,
        "file_bytes": len(data),
        "has_secret_key": bool(context.has_secret_key()),
        "has_galois_keys": bool(context.has_galois_keys()),
        "has_relin_keys": bool(context.has_relin_keys()),
        "poly_modulus_degree": params.poly_modulus_degree,
        "coeff_mod_bit_sizes": list(params.coeff_mod_bit_sizes),
        "scale_bits": params.scale_bits,
        "max_abs_weight": params.max_abs_weight,
        "max_total_samples": params.max_total_samples,
        "precision": params.precision,
        "error_bound": params.error_bound,
        "mode": f"{stat.S_IMODE(path.stat().st_mode):o}",
    }

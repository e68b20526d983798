"""``bfv-masked`` key material and ciphertexts, on SEAL 4.1's low-level bindings (``tenseal.sealapi``).

Key custody by type, as in ``context.py``: ``BfvSecretKeys`` (hospitals only) holds the federation's shared BFV
secret key and can encrypt and decrypt; ``BfvPublicKeys`` (aggregator, store, audit) holds the parameters only and
can load and add ciphertexts but neither encrypt nor decrypt: in symmetric BFV there is no public key to hold. Its
file therefore names the key set through a key commitment ``key_id = sha256(domain || secret key bytes)``, and
``fingerprint = sha256(domain || parameters || key_id)``; both domains differ from the CKKS ones, so a CKKS and a BFV
key set never share a fingerprint.

Files are msgpack maps ``{"format": 1, "kind", "scheme": "bfv-masked", "params", "fingerprint", "key_id"}`` plus
``"seal"`` (SEAL's serialised secret key) in the secret file only; msgpack, not pickle, because loading a pickle
runs code.

Plaintexts are coefficient-encoded (see ``bfv_planning``): a chunk of up to N residues mod t is written in SEAL's
own plaintext serialisation (uncompressed) and loaded, which is also where SEAL checks every coefficient is below t.
"""

from __future__ import annotations

import functools
import hashlib
import struct
import zlib
from dataclasses import dataclass, field
from typing import Any

import msgpack
import numpy as np
import tenseal.sealapi as seal
import zstandard

from medheaven.crypto.bfv_planning import COEFF_MODULUS, SCHEME_NAME, BfvParameters
from medheaven.crypto.seal_files import load_bytes, save_bytes
from medheaven.errors import CiphertextError, CryptoError, KeyCustodyError

KEY_FORMAT = 1
_KEY_ID_DOMAIN = b"medheaven-bfv-key-commitment/1\x00"
_FINGERPRINT_DOMAIN = b"medheaven-bfv-fingerprint/1\x00"
_MAX_KEY_FILE = 1 << 20
_SEAL_MAGIC = 0xA15E
_HEADER = struct.Struct("<HBBBBHQ")  # magic, header size, version major, minor, compression mode, reserved, size
_COMPRESSION_MODES = (0, 1, 2)  # none, zlib, zstd: SEAL's save picks zstd in TenSEAL's build


@functools.lru_cache(maxsize=4)
def seal_context(plain_modulus_bits: int) -> seal.SEALContext:
    """One SEAL context per plain modulus (parameters only, no key): cheap to share, expensive to rebuild."""
    parms = seal.EncryptionParameters(seal.SCHEME_TYPE.BFV)
    parms.set_poly_modulus_degree(4096)
    parms.set_coeff_modulus(seal.CoeffModulus.Create(4096, [60]))
    parms.set_plain_modulus(seal.Modulus(1 << plain_modulus_bits))
    context = seal.SEALContext(parms, True, seal.SEC_LEVEL_TYPE.TC128)  # SEAL re-checks the 128-bit bound
    if not context.parameters_set():
        raise CryptoError(f"SEAL refuses the bfv-masked parameters: {context.parameters_error_message()}")
    q = context.first_context_data().parms().coeff_modulus()[0].value()
    if q != COEFF_MODULUS:
        raise CryptoError(f"SEAL chose q = {q}, the noise plan assumes {COEFF_MODULUS}: TenSEAL's SEAL changed")
    return context


@functools.lru_cache(maxsize=1)
def _seal_version() -> tuple[int, int]:
    header = save_bytes(seal.Plaintext())[: _HEADER.size]
    _, _, major, minor, _, _, _ = _HEADER.unpack(header)
    return major, minor


def plaintext_bytes(residues: np.ndarray) -> bytes:
    """SEAL's serialisation of a coefficient plaintext (``Plaintext::save`` with compression none).

    Layout: header | parms_id (4 x uint64, zero for a plaintext not in NTT form) | coeff_count | scale (double) |
    DynArray (its own header | element count | coefficients). Written by hand because the bindings have no way to
    set coefficients from an array other than one Python call per coefficient.
    """
    major, minor = _seal_version()
    count = residues.size
    array = struct.pack("<Q", count) + residues.astype("<u8", copy=False).tobytes()
    array = _HEADER.pack(_SEAL_MAGIC, _HEADER.size, major, minor, 0, 0, _HEADER.size + len(array)) + array
    body = bytes(32) + struct.pack("<Qd", count, 1.0) + array
    return _HEADER.pack(_SEAL_MAGIC, _HEADER.size, major, minor, 0, 0, _HEADER.size + len(body)) + body


def plaintext_residues(plain: seal.Plaintext, count: int) -> np.ndarray:
    """The first ``count`` coefficients of a decrypted plaintext, as uint64.

    ``Plaintext.save`` frames SEAL's serialisation (the inverse of ``plaintext_bytes``; SEAL trims trailing zero
    coefficients) and compresses it with zstd in TenSEAL's build; the frame is opened here, bounded by the size of a
    full plaintext.
    """
    data = save_bytes(plain)
    _, _, _, _, compression, _, declared = _HEADER.unpack_from(data)
    body = memoryview(data)[_HEADER.size : declared]
    limit = 32 + 16 + _HEADER.size + 8 + 8 * 4096
    if compression == 2:
        members = zstandard.ZstdDecompressor().decompress(body, max_output_size=limit)
    elif compression == 1:
        members = zlib.decompress(body, bufsize=limit)
    else:
        members = bytes(body)
    coefficients, _ = struct.unpack_from("<Qd", members, 32)
    (stored,) = struct.unpack_from("<Q", members, 48 + _HEADER.size)
    if stored != coefficients or coefficients > 4096 or len(members) != 48 + _HEADER.size + 8 + 8 * stored:
        raise CiphertextError(f"decrypted plaintext has an unexpected layout ({coefficients} / {stored} coefficients)")
    values = np.frombuffer(members, dtype="<u8", count=stored, offset=48 + _HEADER.size + 8)
    if stored > count and np.any(values[count:]):
        raise CiphertextError(f"decrypted chunk has values beyond its {count} lanes")
    out = np.zeros(count, dtype=np.uint64)
    out[: min(count, stored)] = values[:count]
    return out


def check_ciphertext_header(chunk: bytes | memoryview, *, max_bytes: int, what: str) -> None:
    """The SEAL frame of a ciphertext, before SEAL parses it: magic, version, compression, declared size.

    An upload must be *seeded* (its second polynomial replaced by a seed): ``max_bytes`` is then the seeded bound, so
    a full-size ciphertext, which would double the upload, is refused here.
    """
    if len(chunk) < _HEADER.size:
        raise CiphertextError(f"{what} is {len(chunk)} bytes, shorter than a SEAL header")
    magic, size, major, _, compression, _, declared = _HEADER.unpack(bytes(chunk[: _HEADER.size]))
    if magic != _SEAL_MAGIC or size != _HEADER.size or major != _seal_version()[0]:
        raise CiphertextError(f"{what} does not start with a SEAL {_seal_version()[0]}.x ciphertext header")
    if compression not in _COMPRESSION_MODES or declared != len(chunk):
        raise CiphertextError(
            f"{what} declares {declared} bytes (compression {compression}) but is {len(chunk)} bytes: corrupt header"
        )
    if len(chunk) > max_bytes:
        raise CiphertextError(
            f"{what} is {len(chunk)} bytes, more than a seeded ciphertext ({max_bytes}): uploads must be seeded"
        )


def load_ciphertext(context: seal.SEALContext, chunk: bytes | memoryview, *, max_bytes: int, what: str) -> Any:
    check_ciphertext_header(chunk, max_bytes=max_bytes, what=what)
    ciphertext = seal.Ciphertext(context)
    try:
        load_bytes(ciphertext, context, chunk)  # SEAL checks parameters, sizes and every coefficient < q
    except (RuntimeError, ValueError) as exc:
        raise CiphertextError(f"{what} is not a valid bfv-masked ciphertext for this key set: {exc}") from exc
    if ciphertext.size() != 2 or ciphertext.is_ntt_form():
        raise CiphertextError(f"{what} has {ciphertext.size()} polynomials; a fresh or summed ciphertext has 2")
    return ciphertext


def _key_id(secret_raw: bytes) -> bytes:
    return hashlib.sha256(_KEY_ID_DOMAIN + secret_raw).digest()


def _fingerprint(params: BfvParameters, key_id: bytes) -> str:
    packed: bytes = msgpack.packb(params.to_dict(), use_bin_type=True)
    return hashlib.sha256(_FINGERPRINT_DOMAIN + packed + key_id).hexdigest()


@dataclass(frozen=True)
class BfvPublicKeys:
    """Parameters and key commitment only: loads and adds ciphertexts, cannot encrypt or decrypt."""

    params: BfvParameters
    fingerprint: str
    key_id: bytes
    scheme: str = field(default=SCHEME_NAME, init=False)

    def __post_init__(self) -> None:
        if _fingerprint(self.params, self.key_id) != self.fingerprint:
            raise CryptoError("bfv-masked public keys: fingerprint does not match parameters and key commitment")

    @property
    def context(self) -> seal.SEALContext:
        return seal_context(self.params.plain_modulus_bits)

    def to_bytes(self) -> bytes:
        return _wrap("public-context", self.params, self.fingerprint, self.key_id, b"")

    @classmethod
    def from_bytes(cls, data: bytes, *, source: str = "public context") -> BfvPublicKeys:
        kind, params, fingerprint, key_id, raw = _unwrap(data, source=source)
        if kind != "public-context" or raw:
            raise KeyCustodyError(f"{source} is a {kind} file; the aggregator and the store only take the public one")
        return cls(params=params, fingerprint=fingerprint, key_id=key_id)


@dataclass(frozen=True)
class BfvSecretKeys:
    """The shared BFV secret key. Only hospitals (key holders) ever construct one."""

    params: BfvParameters
    fingerprint: str
    secret_raw: bytes = field(repr=False)
    scheme: str = field(default=SCHEME_NAME, init=False)
    _secret: Any = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if _fingerprint(self.params, _key_id(self.secret_raw)) != self.fingerprint:
            raise CryptoError("bfv-masked secret key: fingerprint does not match the key inside; restore the file")
        secret = seal.SecretKey()
        try:
            load_bytes(secret, self.context, self.secret_raw, secret=True)
        except (RuntimeError, ValueError) as exc:
            raise CryptoError(f"bfv-masked secret key does not load for these parameters: {exc}") from exc
        object.__setattr__(self, "_secret", secret)

    @property
    def context(self) -> seal.SEALContext:
        return seal_context(self.params.plain_modulus_bits)

    @functools.cached_property
    def _encryptor(self) -> seal.Encryptor:
        return seal.Encryptor(self.context, self._secret)

    @functools.cached_property
    def _decryptor(self) -> seal.Decryptor:
        return seal.Decryptor(self.context, self._secret)

    def public(self) -> BfvPublicKeys:
        return BfvPublicKeys(params=self.params, fingerprint=self.fingerprint, key_id=_key_id(self.secret_raw))

    def encrypt(self, residues: np.ndarray) -> bytes:
        """A seeded symmetric encryption of up to N residues mod t (SEAL's one-argument ``encrypt_symmetric``)."""
        plain = seal.Plaintext()
        try:
            load_bytes(plain, self.context, plaintext_bytes(residues))
        except (RuntimeError, ValueError) as exc:  # a residue >= t
            raise CryptoError(
                f"plaintext chunk is not a vector of residues mod 2^{self.params.plain_modulus_bits}"
            ) from exc
        return save_bytes(self._encryptor.encrypt_symmetric(plain))

    def decrypt(self, chunk: bytes | memoryview, *, count: int, what: str = "chunk") -> np.ndarray:
        ciphertext = load_ciphertext(self.context, chunk, max_bytes=self.params.max_chunk_bytes(), what=what)
        plain = seal.Plaintext()
        self._decryptor.decrypt(ciphertext, plain)
        return plaintext_residues(plain, count)

    def noise_budget(self, chunk: bytes | memoryview) -> int:
        """SEAL's remaining invariant noise budget in bits (0 means the chunk no longer decrypts reliably)."""
        ciphertext = load_ciphertext(self.context, chunk, max_bytes=self.params.max_chunk_bytes(), what="chunk")
        budget: int = self._decryptor.invariant_noise_budget(ciphertext)
        return budget

    def to_bytes(self) -> bytes:
        return _wrap("secret-context", self.params, self.fingerprint, _key_id(self.secret_raw), self.secret_raw)

    @classmethod
    def from_bytes(cls, data: bytes, *, source: str = "secret context") -> BfvSecretKeys:
        kind, params, fingerprint, key_id, raw = _unwrap(data, source=source)
        if kind != "secret-context" or not raw:
            raise KeyCustodyError(f"{source} is a {kind} file, not a secret context")
        if _key_id(raw) != key_id:
            raise CryptoError(f"{source}: key commitment does not match the key inside; the file is corrupt or edited")
        return cls(params=params, fingerprint=fingerprint, secret_raw=raw)


def create_bfv_key_material(params: BfvParameters) -> BfvSecretKeys:
    """Generate the federation's BFV secret key (the key ceremony's only cryptographic step for this scheme)."""
    generator = seal.KeyGenerator(seal_context(params.plain_modulus_bits))
    raw = save_bytes(generator.secret_key(), secret=True)
    return BfvSecretKeys(params=params, fingerprint=_fingerprint(params, _key_id(raw)), secret_raw=raw)


def _wrap(kind: str, params: BfvParameters, fingerprint: str, key_id: bytes, raw: bytes) -> bytes:
    payload: dict[str, Any] = {
        "format": KEY_FORMAT,
        "kind": kind,
        "scheme": SCHEME_NAME,
        "params": params.to_dict(),
        "fingerprint": fingerprint,
        "key_id": key_id,
    }
    if raw:
        payload["seal"] = raw
    data: bytes = msgpack.packb(payload, use_bin_type=True)
    return data


def _unwrap(data: bytes, *, source: str) -> tuple[str, BfvParameters, str, bytes, bytes]:
    if len(data) > _MAX_KEY_FILE:
        raise CryptoError(f"{source} is {len(data)} bytes, more than any bfv-masked key file")
    try:
        payload = msgpack.unpackb(data, raw=False, max_bin_len=_MAX_KEY_FILE, max_str_len=4096)
        if not isinstance(payload, dict) or payload.get("format") != KEY_FORMAT or payload.get("scheme") != SCHEME_NAME:
            raise ValueError("not a MedHeaven bfv-masked key file (format 1)")
        extra = set(payload) - {"format", "kind", "scheme", "params", "fingerprint", "key_id", "seal"}
        if extra:
            raise ValueError(f"unexpected fields {sorted(extra)}")
        kind = str(payload["kind"])
        params = BfvParameters.from_dict(payload["params"])
        fingerprint = str(payload["fingerprint"])
        key_id = payload["key_id"]
        raw = payload.get("seal", b"")
        if not isinstance(key_id, bytes) or len(key_id) != 32 or not isinstance(raw, bytes):
            raise ValueError("key_id must be 32 bytes and seal a byte string")
    except (ValueError, KeyError, TypeError, msgpack.UnpackException, CryptoError) as exc:
        raise CryptoError(f"{source} is not a MedHeaven key file ({exc}); run `medheaven keys init`") from exc
    return kind, params, fingerprint, key_id, raw

"""Pairwise masks: each hospital's upload is uniform noise to everyone but the sum over its cohort.

Each hospital holds an X25519 agreement key (hospital-only, 0600); its public half sits in ``hospitals.json``. For a
pair (a, b) of hospitals masked together, both derive the same 32-byte shared secret and expand it into a stream of
residues mod t, the BFV plain modulus. The hospital whose id sorts first adds the stream, the other subtracts it, so
over a cohort every pair's stream appears once with each sign and the masks sum to exactly 0 mod t.

Derivation, per pair and per :class:`MaskScope` (run, phase, round, attempt, cohort)::

    shared = X25519(own private key, peer public key)                       # 32 bytes, same for both
    key    = HKDF-SHA256(shared, salt=None, info=DOMAIN || scope || low id || high id, length=32)
    stream = ChaCha20(key, nonce=0).encrypt(zeros)                           # 8 bytes per value
    mask_i = stream_word_i mod t                                             # t = 2^47: the low 47 bits

* Domain separation: ``info`` names this use, the scope and the ordered pair; a new run, phase, round, attempt or
  cohort gives an unrelated key, so no mask is ever reused (a reused mask would leak the difference of two updates).
  HKDF-SHA256 is a PRF keyed by the (uniform after extraction) X25519 output (RFC 5869, RFC 7748 section 6.1).
* A fresh key per stream, so ChaCha20's fixed all-zero nonce never repeats under one key.
* Uniformity: t is a power of two (see ``bfv_planning``), so the low 47 bits of a uniform 64-bit word are exactly
  uniform mod t: the bias is 0, no rejection sampling or wide reduction is needed, and the arithmetic below is
  native uint64 arithmetic whose wrap-around (mod 2^64) agrees with mod t because t divides 2^64.
* The cohort is part of the scope, so a hospital cannot be tricked into reusing one attempt's masks in a cohort of
  a different membership, and a mask from another attempt or cohort does not cancel (the sum is then garbage; see
  ``codec`` for what detects it).
* Cost: one ChaCha20 stream per peer (K - 1 per hospital), 8 bytes of keystream per value per peer.

The masks hide a hospital's update from every other key holder as long as at least one of its cohort peers does
not collude: the coalition of the aggregator and hospitals C learns the sum of the updates outside C, and nothing
about any one of them when two or more are outside C (the masks between two honest hospitals are unknown to C).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import msgpack
import numpy as np
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from medheaven.crypto.signing import load_private_pem, public_key_from_hex, validate_hospital_id
from medheaven.errors import ConfigurationError, CryptoError
from medheaven.private_files import write_private_file, write_public_file

_DOMAIN = b"medheaven-pairwise-mask/1\x00"
_ZERO_NONCE = bytes(16)  # cryptography's ChaCha20 nonce: 4-byte counter || 12-byte nonce, both zero
#: bound the keystream one call produces (256 MiB), so a hostile length cannot exhaust memory in one allocation
_MAX_VALUES = 1 << 25


@dataclass(frozen=True)
class MaskScope:
    """What a mask is for. Every field enters the key derivation, so masks of different scopes are independent."""

    run: str
    phase: str
    round: int
    attempt: int
    cohort: tuple[str, ...]

    def __post_init__(self) -> None:
        if list(self.cohort) != sorted(set(self.cohort)):
            raise CryptoError(f"mask cohort {self.cohort!r} must be sorted and without repeats")
        for hospital in self.cohort:
            validate_hospital_id(hospital)
        if self.round < 0 or self.attempt < 0:
            raise CryptoError(f"mask scope round {self.round} / attempt {self.attempt} must not be negative")

    def info(self, low: str, high: str) -> bytes:
        """HKDF ``info``: the domain, the scope and the ordered pair, as one unambiguous msgpack array."""
        packed: bytes = msgpack.packb(
            [self.run, self.phase, self.round, self.attempt, list(self.cohort), low, high], use_bin_type=True
        )
        return _DOMAIN + packed


def _stream(shared: bytes, info: bytes, length: int) -> np.ndarray:
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(shared)
    encryptor = Cipher(algorithms.ChaCha20(key, _ZERO_NONCE), mode=None).encryptor()
    keystream = encryptor.update(bytes(8 * length))
    return np.frombuffer(keystream, dtype="<u8")


def pair_stream(
    own_id: str, own_key: X25519PrivateKey, peer_id: str, peer_key: X25519PublicKey, scope: MaskScope, length: int
) -> np.ndarray:
    """The uint64 stream both hospitals of a pair derive (before reduction mod t and before the sign)."""
    try:
        shared = own_key.exchange(peer_key)
    except ValueError as exc:  # cryptography refuses low-order points (an all-zero shared secret)
        raise CryptoError(f"agreement key of {peer_id!r} is degenerate ({exc}); re-register that hospital") from exc
    low, high = (own_id, peer_id) if own_id < peer_id else (peer_id, own_id)
    return _stream(shared, scope.info(low, high), length)


def pairwise_mask(
    own_id: str,
    own_key: X25519PrivateKey,
    peers: Mapping[str, X25519PublicKey],
    scope: MaskScope,
    length: int,
    modulus: int,
) -> np.ndarray:
    """This hospital's mask: ``sum_{peer > own} stream - sum_{peer < own} stream (mod modulus)``, as uint64.

    ``peers`` holds the agreement keys of the *other* hospitals of ``scope.cohort`` (exactly those). ``modulus``
    must be a power of two up to 2^63 (the BFV plain modulus).
    """
    if modulus < 2 or modulus & (modulus - 1) or modulus > 1 << 63:
        raise CryptoError(f"mask modulus {modulus} must be a power of two between 2 and 2^63")
    if not 0 < length <= _MAX_VALUES:
        raise CryptoError(f"mask length {length} must be in 1..{_MAX_VALUES}")
    if own_id not in scope.cohort:
        raise CryptoError(f"hospital {own_id!r} is not in the mask cohort {list(scope.cohort)}")
    expected = set(scope.cohort) - {own_id}
    if set(peers) != expected:
        raise CryptoError(
            f"mask peers of {own_id!r} are {sorted(peers)}, the cohort needs exactly {sorted(expected)}: "
            "a hospital's agreement key is missing from hospitals.json or an extra one was passed"
        )
    # plus and minus are summed separately in uint64 (wrapping mod 2^64, which t divides) and reduced once
    plus = np.zeros(length, dtype=np.uint64)
    minus = np.zeros(length, dtype=np.uint64)
    for peer in sorted(peers):
        stream = pair_stream(own_id, own_key, peer, peers[peer], scope, length)
        target = plus if own_id < peer else minus
        np.add(target, stream, out=target)
    np.subtract(plus, minus, out=plus)
    np.bitwise_and(plus, np.uint64(modulus - 1), out=plus)
    return plus


# --- agreement keys: create, load, parse --------------------------------------------------------------------------


def agreement_key_paths(hospital_id: str, out_dir: Path) -> tuple[Path, Path]:
    """``<id>.agreement.pem`` (private, 0600) and ``<id>.agreement.hex`` (public) in ``out_dir``."""
    validate_hospital_id(hospital_id)
    return out_dir / f"{hospital_id}.agreement.pem", out_dir / f"{hospital_id}.agreement.hex"


def create_agreement_key(hospital_id: str, out_dir: Path, *, force: bool = False) -> tuple[Path, Path]:
    """Write a fresh X25519 agreement key pair; the private half via ``write_private_file`` (0600, link-safe)."""
    private_path, public_path = agreement_key_paths(hospital_id, out_dir)
    if not force:
        for path in (private_path, public_path):
            if path.exists():
                raise ConfigurationError(f"{path} exists; pass --force to replace this hospital's agreement key")
    key = X25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    write_private_file(private_path, pem, force=force)
    write_public_file(public_path, f"{agreement_public_hex(key)}\n".encode(), force=force)
    return private_path, public_path


def agreement_public_hex(key: X25519PrivateKey) -> str:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw).hex()


def load_agreement_key(path: Path) -> X25519PrivateKey:
    key = load_private_pem(path, what="X25519 agreement key")
    if not isinstance(key, X25519PrivateKey):
        raise ConfigurationError(f"{path} holds a {type(key).__name__}, not an X25519 agreement key")
    return key


def parse_agreement_key(text: str, *, source: str) -> X25519PublicKey:
    return public_key_from_hex(text, X25519PublicKey.from_public_bytes, source=source, what="X25519 agreement key")

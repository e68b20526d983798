"""One boundary between the round protocol and the cryptography: a codec per scheme, chosen once.

Hospital side (``HospitalCodec``, built from secret material): ``encode(packed float64 values, scale_bits, mask)``
-> chunks (bytes), and ``decode_sum(chunks, length, scale_bits)`` -> float64. Aggregator side (``AggregatorCodec``,
built from public material only): ``accumulator(length)``, which can add uploads but not decrypt them. Nothing
outside ``medheaven.crypto`` needs to know which scheme a run uses beyond picking the codec with
``hospital_codec``/``aggregator_codec`` from the ``Scheme`` recorded in the key files and the run description.

Schemes:

``bfv-masked`` (the default for new key sets)
    Exact: quantised fixed-point values (``bfv_planning``) plus pairwise masks (``masks``) as residues mod t, one
    per coefficient of a seeded symmetric BFV ciphertext: 8.05 B/value up, 16.03 B/value for the sum. A key holder
    who decrypts one hospital's upload sees uniform residues; only the cohort's sum unmasks.
``ckks``
    The scheme of key sets made before ``bfv-masked`` (their files carry no ``scheme`` field) and of committed runs
    made with them: approximate, unmasked, 32.2 B/value. Kept readable and usable; new key sets should not use it.
``plaintext``
    INSECURE comparison mode: float64 chunks in the clear, to measure what encryption costs.

What the cryptography cannot tell: an *unmasked* bfv-masked upload is a valid ciphertext like any other. If its
sender's peers masked against it, the cohort's sum does not unmask: every lane, the sample total included, decodes
to noise, which ``packing.unpack_average(..., exact=True)`` refuses (the total must be an integer in range: a
uniform residue passes with probability about 2^-24). If *every* hospital sends unmasked, the sum is right and only the
hospitals' own confidentiality suffers; ``encode`` therefore demands a mask for this scheme, and the upload path
always derives one. A mask from another attempt or cohort breaks the sum the same way.
"""

from __future__ import annotations

import stat
from abc import ABC, abstractmethod
from collections.abc import Sequence
from enum import StrEnum
from pathlib import Path

import msgpack
import numpy as np

from medheaven.crypto.accumulators import Accumulator, BfvAccumulator, CkksAccumulator, PlainAccumulator, plain_chunks
from medheaven.crypto.bfv import BfvPublicKeys, BfvSecretKeys, create_bfv_key_material
from medheaven.crypto.bfv_planning import BfvParameters
from medheaven.crypto.context import PublicContext, SecretContext, create_key_material, describe_context_file
from medheaven.crypto.envelope import Chunk
from medheaven.crypto.packing import decrypt_chunks, encrypt_chunks
from medheaven.crypto.planning import CkksParameters
from medheaven.errors import ConfigurationError, CryptoError, KeyCustodyError, PackingError
from medheaven.private_files import check_private_file_mode


class Scheme(StrEnum):
    PLAINTEXT = "plaintext"
    CKKS = "ckks"
    BFV_MASKED = "bfv-masked"

    @property
    def masked(self) -> bool:
        """Uploads carry pairwise masks, so a cohort is fixed when an attempt opens."""
        return self is Scheme.BFV_MASKED

    @property
    def exact(self) -> bool:
        """Sums decrypt exactly (to the quantised values): integer lanes must decode to integers."""
        return self is not Scheme.CKKS

    @property
    def encrypted(self) -> bool:
        return self is not Scheme.PLAINTEXT


DEFAULT_SCHEME = Scheme.BFV_MASKED
SecretKeys = SecretContext | BfvSecretKeys
PublicKeys = PublicContext | BfvPublicKeys
Parameters = CkksParameters | BfvParameters


def scheme_of(keys: SecretKeys | PublicKeys) -> Scheme:
    return Scheme.BFV_MASKED if isinstance(keys, BfvSecretKeys | BfvPublicKeys) else Scheme.CKKS


class HospitalCodec(ABC):
    scheme: Scheme
    slots: int

    def chunk_count(self, length: int) -> int:
        return max(1, -(-length // self.slots))

    @property
    def mask_modulus(self) -> int | None:
        """The modulus masks are drawn from (``masks.pairwise_mask``), or None for an unmasked scheme."""
        return None

    @abstractmethod
    def encode(self, values: np.ndarray, *, scale_bits: int, mask: np.ndarray | None) -> tuple[bytes, ...]: ...

    @abstractmethod
    def decode_sum(self, chunks: Sequence[Chunk], *, length: int, scale_bits: int) -> np.ndarray: ...

    def _refuse_mask(self, mask: np.ndarray | None) -> None:
        if mask is not None:
            raise CryptoError(f"scheme {self.scheme} cannot carry pairwise masks; only bfv-masked uploads are masked")


class PlaintextCodec(HospitalCodec):
    """INSECURE comparison mode."""

    scheme = Scheme.PLAINTEXT

    def __init__(self, *, slots: int) -> None:
        self.slots = slots

    def encode(self, values: np.ndarray, *, scale_bits: int, mask: np.ndarray | None) -> tuple[bytes, ...]:
        self._refuse_mask(mask)
        return plain_chunks(values, slots=self.slots)

    def decode_sum(self, chunks: Sequence[Chunk], *, length: int, scale_bits: int) -> np.ndarray:
        return np.concatenate([np.frombuffer(chunk, dtype="<f8") for chunk in chunks])[:length].astype(np.float64)


class CkksCodec(HospitalCodec):
    scheme = Scheme.CKKS

    def __init__(self, secret: SecretContext) -> None:
        self.secret = secret
        self.slots = secret.params.slots

    def encode(self, values: np.ndarray, *, scale_bits: int, mask: np.ndarray | None) -> tuple[bytes, ...]:
        self._refuse_mask(mask)
        return encrypt_chunks(self.secret, values, scale_bits=scale_bits)

    def decode_sum(self, chunks: Sequence[Chunk], *, length: int, scale_bits: int) -> np.ndarray:
        return decrypt_chunks(self.secret, chunks, length=length)


class BfvMaskedCodec(HospitalCodec):
    scheme = Scheme.BFV_MASKED

    def __init__(self, secret: BfvSecretKeys) -> None:
        self.secret = secret
        self.params = secret.params
        self.slots = secret.params.slots

    @property
    def mask_modulus(self) -> int:
        return self.params.plain_modulus

    def quantise(self, values: np.ndarray, *, scale_bits: int) -> np.ndarray:
        """``rint(values * 2^s)`` as int64, refusing any value whose cohort sum could wrap (``bfv_planning``)."""
        vector = np.asarray(values, dtype=np.float64)
        if vector.ndim != 1 or vector.size == 0 or not np.all(np.isfinite(vector)):
            raise PackingError("bfv-masked encodes a non-empty flat vector of finite values")
        if not 0 <= scale_bits <= self.params.scale_bits:
            raise PackingError(f"scale 2^-{scale_bits} is outside this key set's 2^0..2^-{self.params.scale_bits}")
        scaled = np.ldexp(vector, scale_bits)  # exact: multiplying by a power of two
        limit = self.params.plain_modulus / 2 - self.params.max_hospitals / 2 - 1
        largest = float(np.max(np.abs(scaled)))
        if largest > limit:
            raise PackingError(
                f"a value of magnitude {largest / 2**scale_bits:.4g} does not fit this key set at scale 2^-{scale_bits} "
                f"(at most {limit / 2**scale_bits:.4g}); re-key with larger bounds"
            )
        return np.rint(scaled).astype(np.int64)

    def encode(self, values: np.ndarray, *, scale_bits: int, mask: np.ndarray | None) -> tuple[bytes, ...]:
        quantised = self.quantise(values, scale_bits=scale_bits)
        if mask is None:
            raise CryptoError(
                "bfv-masked uploads must carry the cohort's pairwise mask (masks.pairwise_mask); an unmasked upload "
                "would be readable by every other key holder"
            )
        if mask.shape != quantised.shape or mask.dtype != np.uint64:
            raise CryptoError(f"mask is {mask.dtype}{mask.shape}; expected uint64{quantised.shape}")
        # int64 -> uint64 reinterprets two's complement: the residue mod 2^64, hence mod t (t divides 2^64)
        residues = quantised.view(np.uint64) + mask
        np.bitwise_and(residues, np.uint64(self.params.plain_modulus - 1), out=residues)
        return tuple(self.secret.encrypt(residues[i : i + self.slots]) for i in range(0, residues.size, self.slots))

    def decode_residues(self, chunks: Sequence[Chunk], *, length: int) -> np.ndarray:
        """The decrypted residues mod t (uint64), before sign recovery: what a key holder sees of any envelope."""
        if len(chunks) != self.chunk_count(length):
            raise CryptoError(f"{len(chunks)} chunks cannot hold {length} values ({self.chunk_count(length)} needed)")
        out = np.empty(length, dtype=np.uint64)
        for index, chunk in enumerate(chunks):
            start = index * self.slots
            end = min(start + self.slots, length)
            out[start:end] = self.secret.decrypt(chunk, count=end - start, what=f"chunk {index}")
        return out

    def decode_sum(self, chunks: Sequence[Chunk], *, length: int, scale_bits: int) -> np.ndarray:
        residues = self.decode_residues(chunks, length=length)
        half = np.uint64(self.params.plain_modulus // 2)
        # signed representative in [-t/2, t/2): ((r + t/2) mod t) - t/2
        signed = ((residues + half) & np.uint64(self.params.plain_modulus - 1)).astype(np.int64) - np.int64(half)
        return np.ldexp(signed.astype(np.float64), -scale_bits)


class AggregatorCodec:
    """Public material only: sizes for the envelope decoder and a running sum that can add but not decrypt."""

    def __init__(self, scheme: Scheme, keys: PublicKeys | None, *, slots: int) -> None:
        self.scheme = scheme
        self.keys = keys
        self.slots = slots

    def chunk_count(self, length: int) -> int:
        return max(1, -(-length // self.slots))

    def max_upload_chunk_bytes(self) -> int:
        if isinstance(self.keys, BfvPublicKeys):
            return self.keys.params.max_upload_chunk_bytes()
        return self.max_sum_chunk_bytes()

    def max_sum_chunk_bytes(self) -> int:
        if self.keys is None:
            return self.slots * 8
        return self.keys.params.max_chunk_bytes()

    def accumulator(self, length: int) -> Accumulator:
        if isinstance(self.keys, BfvPublicKeys):
            return BfvAccumulator(self.keys, length=length)
        if isinstance(self.keys, PublicContext):
            return CkksAccumulator(self.keys, length=length)
        return PlainAccumulator(slots=self.slots, length=length)


def hospital_codec(scheme: Scheme, keys: SecretKeys | None, *, slots: int | None = None) -> HospitalCodec:
    """The hospital's codec for ``scheme``; refuses key material of another scheme (``slots``: plaintext only)."""
    if scheme is Scheme.PLAINTEXT:
        if slots is None:
            raise ConfigurationError("the plaintext comparison mode needs a chunk size (slots)")
        return PlaintextCodec(slots=slots)
    if scheme is Scheme.CKKS and isinstance(keys, SecretContext):
        return CkksCodec(keys)
    if scheme is Scheme.BFV_MASKED and isinstance(keys, BfvSecretKeys):
        return BfvMaskedCodec(keys)
    raise ConfigurationError(
        f"the run uses scheme {scheme} but this hospital's key file is "
        f"{'missing' if keys is None else scheme_of(keys).value}: install the run's secret context "
        "(`medheaven keys init --scheme ...` made it)"
    )


def aggregator_codec(scheme: Scheme, keys: PublicKeys | None, *, slots: int | None = None) -> AggregatorCodec:
    if not isinstance(keys, BfvPublicKeys | PublicContext | None):
        raise KeyCustodyError(f"the aggregator only ever takes public key material, not {type(keys).__name__}")
    if scheme is Scheme.PLAINTEXT:
        if slots is None:
            raise ConfigurationError("the plaintext comparison mode needs a chunk size (slots)")
        return AggregatorCodec(scheme, None, slots=slots)
    if keys is None or scheme_of(keys) is not scheme:
        raise ConfigurationError(
            f"the run uses scheme {scheme} but the public context is "
            f"{'missing' if keys is None else scheme_of(keys).value}: copy the run's public context"
        )
    return AggregatorCodec(scheme, keys, slots=keys.params.slots)


# --- key files of either scheme -------------------------------------------------------------------------------


def key_file_scheme(data: bytes, *, source: str) -> Scheme:
    """A key file's scheme: files made before ``bfv-masked`` existed carry none and are ``ckks``."""
    try:
        payload = msgpack.unpackb(data, raw=False, max_bin_len=len(data), max_str_len=4096)
    except (ValueError, msgpack.UnpackException) as exc:
        raise CryptoError(f"{source} is not a MedHeaven key file ({exc}); run `medheaven keys init`") from exc
    name = payload.get("scheme", Scheme.CKKS.value) if isinstance(payload, dict) else None
    try:
        return Scheme(str(name))
    except ValueError as exc:
        raise CryptoError(f"{source} names scheme {name!r}, which this MedHeaven does not know") from exc


def secret_keys_from_bytes(data: bytes, *, source: str = "secret context") -> SecretKeys:
    if key_file_scheme(data, source=source) is Scheme.BFV_MASKED:
        return BfvSecretKeys.from_bytes(data, source=source)
    return SecretContext.from_bytes(data, source=source)


def public_keys_from_bytes(data: bytes, *, source: str = "public context") -> PublicKeys:
    if key_file_scheme(data, source=source) is Scheme.BFV_MASKED:
        return BfvPublicKeys.from_bytes(data, source=source)
    return PublicContext.from_bytes(data, source=source)


def load_secret_keys(path: Path) -> SecretKeys:
    check_private_file_mode(path)
    return secret_keys_from_bytes(path.read_bytes(), source=str(path))


def load_public_keys(path: Path) -> PublicKeys:
    if not path.is_file():
        raise ConfigurationError(f"public context file {path} does not exist; run `medheaven keys init`")
    return public_keys_from_bytes(path.read_bytes(), source=str(path))


def create_keys(params: Parameters, *, encryption: str | None = None) -> SecretKeys:
    """The key ceremony for either scheme; ``encryption`` (symmetric / public-key) applies to ``ckks`` only."""
    if isinstance(params, BfvParameters):
        if encryption not in (None, "symmetric"):
            raise ConfigurationError("bfv-masked encrypts with the shared secret key only; drop --encryption")
        return create_bfv_key_material(params)
    return create_key_material(params) if encryption is None else create_key_material(params, encryption=encryption)


def parameters_from_dict(data: dict[str, object]) -> Parameters:
    """Run descriptions and key files store parameters as a dict; ``scheme`` absent means ``ckks``."""
    if data.get("scheme") == Scheme.BFV_MASKED.value:
        return BfvParameters.from_dict(dict(data))
    return CkksParameters.from_dict(dict(data))


def describe_key_file(path: Path) -> dict[str, object]:
    """What `medheaven keys show` prints, for a key file of either scheme."""
    data = path.read_bytes()
    if key_file_scheme(data, source=str(path)) is not Scheme.BFV_MASKED:
        return {"scheme": Scheme.CKKS.value, **describe_context_file(path)}
    secret = key_file_kind(data) == "secret-context"
    keys: SecretKeys | PublicKeys = (
        BfvSecretKeys.from_bytes(data, source=str(path)) if secret else BfvPublicKeys.from_bytes(data, source=str(path))
    )
    params = keys.params
    assert isinstance(params, BfvParameters)
    return {
        "path": str(path),
        "scheme": Scheme.BFV_MASKED.value,
        "kind": "secret-context" if secret else "public-context",
        "fingerprint": keys.fingerprint,
        "file_bytes": len(data),
        "has_secret_key": secret,
        **params.to_dict(),
        "plain_modulus": params.plain_modulus,
        "error_bound": params.error_bound,
        "mode": f"{stat.S_IMODE(path.stat().st_mode):o}",
    }


def key_file_kind(data: bytes) -> str:
    payload = msgpack.unpackb(data, raw=False, max_bin_len=len(data), max_str_len=4096)
    return str(payload.get("kind", "")) if isinstance(payload, dict) else ""

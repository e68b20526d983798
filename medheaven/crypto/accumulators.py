"""Running sums of chunked vectors, one per scheme, behind one base class (moved here from ``federated/fold.py``).

Memory is O(one model): an accumulator holds one ciphertext (or float64 block) per chunk, and an update is read one
chunk at a time from its serialised envelope. Each chunk is validated as it is added; if any chunk of an update
fails, the chunks already added are subtracted again (exact: ciphertext addition is modular), so a malformed update
never leaves a half-added accumulator behind.

``CkksAccumulator`` (scheme ``ckks``) and ``BfvAccumulator`` (scheme ``bfv-masked``) hold public material only: they
can add ciphertexts but never decrypt them. ``PlainAccumulator`` is the INSECURE comparison mode, which exists only
to measure what encryption costs and is labelled insecure wherever it appears.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import tenseal as ts
import tenseal.sealapi as seal

from medheaven.crypto.bfv import BfvPublicKeys, load_ciphertext
from medheaven.crypto.context import PublicContext
from medheaven.crypto.envelope import Chunk
from medheaven.crypto.seal_files import save_bytes
from medheaven.errors import CiphertextError


class Accumulator(ABC):
    """A running sum of chunked vectors."""

    def __init__(self, *, slots: int, length: int) -> None:
        self.slots = slots
        self.length = length
        self.count = 0

    def check_chunk_count(self, chunks: Sequence[Chunk], source: str) -> None:
        if len(chunks) != self.chunk_count:
            raise CiphertextError(f"{source} has {len(chunks)} chunks; the model needs {self.chunk_count}")

    def chunk_size(self, index: int) -> int:
        return min(self.slots, self.length - index * self.slots)

    @abstractmethod
    def add_chunks(self, chunks: Sequence[Chunk], *, source: str) -> None: ...

    @abstractmethod
    def iter_chunks(self) -> Iterator[bytes]:
        """The running sum, serialised one chunk at a time (see ``Envelope.pack_streaming``)."""

    @property
    def chunk_count(self) -> int:
        return -(-self.length // self.slots)

    def to_chunks(self) -> tuple[bytes, ...]:
        return tuple(self.iter_chunks())


class CiphertextSum(Accumulator):
    """A running sum of ciphertexts, one per chunk: the add loop with its exact undo, shared by both schemes.

    Subclasses say how one chunk is loaded (validated) and how two ciphertexts are added and subtracted in place.
    """

    sums: list[Any]

    @abstractmethod
    def _load(self, chunk: Chunk, index: int, source: str) -> Any: ...

    @abstractmethod
    def _add(self, index: int, ciphertext: Any, source: str) -> None: ...

    @abstractmethod
    def _subtract(self, index: int, ciphertext: Any) -> None: ...

    def add_chunks(self, chunks: Sequence[Chunk], *, source: str) -> None:
        self.check_chunk_count(chunks, source)
        if self.count == 0:
            # the first update becomes the sum; it is adopted only once every chunk has loaded
            self.sums = [self._load(chunk, index, source) for index, chunk in enumerate(chunks)]
            self.count = 1
            return
        # One pass that validates while it adds, and undoes on failure. Ciphertext addition is exact modulo q, so
        # subtracting the chunks already added restores the sum bit for bit; a good update (the common case) is
        # deserialised once instead of twice (BENCHMARKS.md: 1.7x faster add_chunks, ~14% off a whole fold).
        added = 0
        try:
            for index, chunk in enumerate(chunks):
                self._add(index, self._load(chunk, index, source), source)
                added += 1
        except BaseException:
            for index in range(added):
                self._subtract(index, self._load(chunks[index], index, source))
            raise
        self.count += 1


class CkksAccumulator(CiphertextSum):
    """Adds CKKS ciphertexts under a public context; it cannot decrypt anything it holds."""

    def __init__(self, context: PublicContext, *, length: int) -> None:
        super().__init__(slots=context.params.slots, length=length)
        self.context = context
        self.sums: list[ts.CKKSVector] = []

    def _load(self, chunk: Chunk, index: int, source: str) -> ts.CKKSVector:
        try:
            # TenSEAL takes bytes only; copying one view at a time keeps the envelope itself uncopied (bytes pass as is)
            vector = ts.ckks_vector_from(self.context.tenseal, bytes(chunk))
        except Exception as exc:  # TenSEAL/SEAL raise several unrelated types for corrupt input
            raise CiphertextError(
                f"chunk {index} of {source} is not a valid ciphertext for this context: {exc}"
            ) from exc
        if vector.size() != self.chunk_size(index):
            raise CiphertextError(
                f"chunk {index} of {source} holds {vector.size()} values, expected {self.chunk_size(index)}"
            )
        return vector

    def _add(self, index: int, ciphertext: Any, source: str) -> None:
        try:
            self.sums[index].add_(ciphertext)  # TenSEAL checks scale and size before it touches the sum
        except ValueError as exc:
            raise CiphertextError(f"chunk {index} of {source} cannot be added to the sum: {exc}") from exc

    def _subtract(self, index: int, ciphertext: Any) -> None:
        self.sums[index].sub_(ciphertext)

    def iter_chunks(self) -> Iterator[bytes]:
        for vector in self.sums:
            yield vector.serialize()


class PlainAccumulator(Accumulator):
    """INSECURE comparison mode: float64 little-endian chunks, added in the clear."""

    def __init__(self, *, slots: int, length: int) -> None:
        super().__init__(slots=slots, length=length)
        self.total = np.zeros(length, dtype=np.float64)

    def add_chunks(self, chunks: Sequence[Chunk], *, source: str) -> None:
        self.check_chunk_count(chunks, source)
        arrays = [self._load(chunk, index, source) for index, chunk in enumerate(chunks)]
        self.total += np.concatenate(arrays)
        self.count += 1

    def _load(self, chunk: Chunk, index: int, source: str) -> np.ndarray:
        expected = self.chunk_size(index)
        if len(chunk) != expected * 8:
            raise CiphertextError(f"chunk {index} of {source} has {len(chunk)} bytes, expected {expected * 8}")
        values = np.frombuffer(chunk, dtype="<f8")
        if not np.all(np.isfinite(values)):
            raise CiphertextError(f"chunk {index} of {source} holds non-finite values")
        return values

    def iter_chunks(self) -> Iterator[bytes]:
        for start in range(0, self.length, self.slots):
            yield self.total[start : start + self.slots].astype("<f8").tobytes()


def plain_chunks(values: np.ndarray, *, slots: int) -> tuple[bytes, ...]:
    data = np.asarray(values, dtype="<f8")
    return tuple(data[i : i + slots].tobytes() for i in range(0, data.size, slots))


class BfvAccumulator(CiphertextSum):
    """Adds seeded bfv-masked uploads under parameters alone (no key: it can neither encrypt nor decrypt).

    Every upload chunk must be a *seeded* ciphertext (header checked against the seeded size bound before SEAL
    parses it); SEAL's load expands the seed and checks every coefficient; the sum is a full-size ciphertext.
    """

    def __init__(self, keys: BfvPublicKeys, *, length: int) -> None:
        super().__init__(slots=keys.params.slots, length=length)
        self.keys = keys
        self.context = keys.context
        self.evaluator = seal.Evaluator(self.context)
        self.sums: list[Any] = []
        self._max_upload = keys.params.max_upload_chunk_bytes()

    def _load(self, chunk: Chunk, index: int, source: str) -> Any:
        return load_ciphertext(self.context, chunk, max_bytes=self._max_upload, what=f"chunk {index} of {source}")

    def _add(self, index: int, ciphertext: Any, source: str) -> None:
        self.evaluator.add_inplace(self.sums[index], ciphertext)

    def _subtract(self, index: int, ciphertext: Any) -> None:
        self.evaluator.sub_inplace(self.sums[index], ciphertext)

    def iter_chunks(self) -> Iterator[bytes]:
        for ciphertext in self.sums:
            yield save_bytes(ciphertext)


#: the name ``federated/fold.py`` used before the bfv-masked scheme existed
EncryptedAccumulator = CkksAccumulator

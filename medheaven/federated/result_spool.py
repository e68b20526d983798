"""A round's result envelope, serialised chunk by chunk into an anonymous file before it goes to the store.

Why a file and not a bytes buffer. The running sum lives in SEAL ciphertexts, and SEAL keeps the memory of a freed
ciphertext in its global memory pool for reuse: it is never handed back to the OS, and ``tenseal.sealapi`` binds no
``MemoryPoolHandle`` to allocate the sum anywhere else. Freeing the sum ciphertext by ciphertext while serialising it
into a buffer therefore still leaves the process holding both (measured on a 16 MiB sum of 256 ciphertexts: RSS
grew by 10 MiB while the 16 MiB buffer filled and every ciphertext was freed as soon as it was written). With a
buffer, a finalise peaked at 2.28-2.30x a global model above idle on the 1M-parameter aggregator benchmark; written
to this file, the serialised sum is page cache (written back and reclaimed by the kernel), not anonymous memory of
the aggregator, and the finalise holds the sum plus one serialised chunk at a time.

The file comes from ``tempfile.TemporaryFile``: created 0600 with ``O_EXCL`` (``O_TMPFILE`` on Linux) and unlinked at
once, so it has no name anybody could open or plant a link at, and it disappears when closed or when the process
dies. It only ever holds the encrypted sum, which is public material (the store will hold the same bytes).

Why a failed commit stays retryable: serialising reads the accumulator and never changes it, so the SEAL sum is
intact after any failure here or in the store write, and a retried finalise serialises it again (SEAL's serialisation
is deterministic, so a result already written by a failed attempt is replaced by the same bytes). Keeping the
ciphertexts costs nothing extra for the same pool reason. A process that dies instead rebuilds the sum from the
ledger's envelopes (``AggregatorNode._state``). Nothing committed can be touched: the result key is only written
while no manifest exists, and the manifest is written with ``create``.
"""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from medheaven.crypto.envelope import Chunk, Envelope


@dataclass(frozen=True)
class SpooledResult:
    """The serialised result: an open file positioned anywhere, its sha256 and its size."""

    file: BinaryIO
    sha256: str
    size: int


@contextmanager
def spool_result(
    header: Envelope, chunks: Iterable[Chunk], count: int, *, folder: Path | None = None
) -> Iterator[SpooledResult]:
    """``header`` with ``chunks`` as its chunks (``Envelope.write_streaming``), in a file closed on exit."""
    with tempfile.TemporaryFile(dir=folder) as handle:
        digest = hashlib.sha256()
        size = 0

        def write(piece: bytes) -> None:
            nonlocal size
            digest.update(piece)
            handle.write(piece)
            size += len(piece)

        header.write_streaming(write, chunks, count)
        handle.flush()
        yield SpooledResult(file=handle, sha256=digest.hexdigest(), size=size)

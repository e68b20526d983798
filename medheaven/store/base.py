"""The global server: a small key -> bytes interface that only ever holds public material and ciphertexts.

Keys are relative POSIX paths (``<run>/rounds/3/global.ckks``). Two write verbs make the commit protocol safe:

* ``put`` replaces atomically: a reader sees the old bytes or the new bytes, never a mix.
* ``create`` refuses to replace an existing key (``StoreConflictError``); committed files (global models and
  manifests) are only ever written with ``create``, so no failed or repeated operation can overwrite them.
"""

from __future__ import annotations

import json
import re
from abc import ABC, abstractmethod
from typing import Any, BinaryIO

from medheaven.errors import StoreError

_KEY_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def validate_key(key: str) -> str:
    """Reject keys that could escape the store's root or collide on case-insensitive backends in odd ways."""
    parts = key.split("/")
    if not key or any(not _KEY_PART.fullmatch(part) or part in {".", ".."} for part in parts):
        raise StoreError(
            f"invalid store key {key!r}: use '/'-separated parts of letters, digits, '.', '_' or '-' "
            "(no leading '/', no '..')"
        )
    return key


class Store(ABC):
    """Abstract store. Subclasses implement the seven byte-level verbs; JSON helpers are shared."""

    #: human-readable location (path or folder id) used in error messages
    location: str

    @abstractmethod
    def put(self, key: str, data: bytes | bytearray) -> None:
        """Write ``data`` under ``key``, atomically replacing what was there."""

    @abstractmethod
    def put_file(self, key: str, source: BinaryIO) -> None:
        """``put`` of everything in the seekable file ``source``, streamed from it rather than read into memory
        (the aggregator's finalise writes a round's sum this way: see ``federated/result_spool.py``)."""

    @abstractmethod
    def create(self, key: str, data: bytes | bytearray) -> None:
        """Write ``data`` under a key that must not exist yet; raise StoreConflictError otherwise."""

    @abstractmethod
    def get(self, key: str) -> bytes:
        """Return the bytes under ``key``; raise StoreKeyNotFoundError if there are none."""

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def list(self, prefix: str = "") -> list[str]:
        """Every key under ``prefix`` (a folder path, '' for all), sorted."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove ``key``; removing a missing key is not an error (deletes are retried)."""

    def put_json(self, key: str, value: Any) -> None:
        self.put(key, json_bytes(value))

    def create_json(self, key: str, value: Any) -> None:
        self.create(key, json_bytes(value))

    def get_json(self, key: str) -> Any:
        raw = self.get(key)
        try:
            return json.loads(raw)
        except ValueError as exc:
            raise StoreError(f"{self.location}/{key} is not valid JSON ({exc}); restore it from a backup") from exc


def json_bytes(value: Any) -> bytes:
    return json.dumps(value, indent=2, sort_keys=True).encode("utf-8") + b"\n"

"""Local-folder backend: the default global server, and what a shared network folder would use."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from medheaven.errors import StoreAccessError, StoreConflictError, StoreKeyNotFoundError
from medheaven.store.base import Store, validate_key


class LocalStore(Store):
    def __init__(self, root: Path, *, create: bool = True) -> None:
        self.root = Path(root).resolve()
        self.location = str(self.root)
        if create:
            self.root.mkdir(parents=True, exist_ok=True)
        elif not self.root.is_dir():
            raise StoreAccessError(f"store folder {self.root} does not exist: create it or fix MEDHEAVEN_STORE")

    def _path(self, key: str) -> Path:
        return self.root.joinpath(*validate_key(key).split("/"))

    def _write_temp(self, path: Path, fill: Callable[[BinaryIO], object]) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as handle:
                fill(handle)
                handle.flush()
                os.fsync(handle.fileno())
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        return Path(tmp)

    def put(self, key: str, data: bytes | bytearray) -> None:
        path = self._path(key)
        tmp = self._write_temp(path, lambda handle: handle.write(data))
        os.replace(tmp, path)

    def put_file(self, key: str, source: BinaryIO) -> None:
        path = self._path(key)
        source.seek(0)
        tmp = self._write_temp(path, lambda handle: shutil.copyfileobj(source, handle, 1 << 20))
        os.replace(tmp, path)

    def create(self, key: str, data: bytes | bytearray) -> None:
        path = self._path(key)
        tmp = self._write_temp(path, lambda handle: handle.write(data))
        try:
            # link() fails if the target exists, so the complete file appears at once or not at all
            os.link(tmp, path)
        except FileExistsError as exc:
            raise StoreConflictError(f"{path} already exists and is committed; MedHeaven never overwrites it") from exc
        finally:
            os.unlink(tmp)

    def get(self, key: str) -> bytes:
        path = self._path(key)
        try:
            return path.read_bytes()
        except FileNotFoundError as exc:
            raise StoreKeyNotFoundError(f"{path} not found in store {self.location}") from exc

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list(self, prefix: str = "") -> list[str]:
        base = self._path(prefix) if prefix else self.root
        if not base.is_dir():
            return []
        keys = [
            p.relative_to(self.root).as_posix() for p in base.rglob("*") if p.is_file() and not p.name.startswith(".")
        ]
        return sorted(keys)

    def delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._path(key).unlink()

"""Bytes in and out of SEAL objects through files, because ``tenseal.sealapi`` has no bytes or stream API.

TenSEAL 0.3.18 binds ``save(path)`` and ``load(context, path)`` only (the C++ ``save(std::ostream&)`` overloads are
not exposed; TenSEAL's own high-level vectors serialise full, unseeded ciphertexts through protobuf instead). So
every object is written to and read from a file in one private folder per process: made by ``mkdtemp`` (0700, so
no other user can read a file in it or plant a link at one of its names) on ``/dev/shm`` when it is writable (RAM,
never a disk), else in the default temporary folder. Each thread reuses one file name for ciphertexts (they are
public material; a write truncates the old content); a secret key is written to a fresh name and unlinked at once.
The folder is removed at exit.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Protocol

_lock = threading.Lock()
_folder: dict[int, Path] = {}  # pid -> folder: a forked worker makes its own instead of sharing its parent's
_counter = iter(range(1 << 62))
_RAM_FOLDER = "/dev/shm"  # noqa: S108


class _Saveable(Protocol):
    def save(self, path: str, /) -> None: ...


class _Loadable(Protocol):
    def load(self, context: object, path: str, /) -> None: ...


def _private_folder() -> Path:
    pid = os.getpid()
    with _lock:
        folder = _folder.get(pid)
        if folder is None or not folder.is_dir():
            # mkdtemp makes a fresh 0700 folder with an unpredictable name, so a shared /dev/shm is safe here
            parent = _RAM_FOLDER if os.access(_RAM_FOLDER, os.W_OK | os.X_OK) else None
            _sweep_dead(Path(parent or tempfile.gettempdir()))
            folder = Path(tempfile.mkdtemp(prefix=f"medheaven-seal-{pid}-", dir=parent))
            _folder[pid] = folder
            atexit.register(shutil.rmtree, folder, True)
        return folder


def _sweep_dead(parent: Path) -> None:
    """Remove this user's folders left by processes that ended without running ``atexit`` (forked pool workers end
    with ``os._exit``). They hold public ciphertext scratch files only: secret keys are unlinked as soon as read."""
    for folder in parent.glob("medheaven-seal-*-*"):
        try:
            owner_pid = int(folder.name.split("-")[2])
            if folder.stat().st_uid != os.getuid() or owner_pid == os.getpid():
                continue
            os.kill(owner_pid, 0)  # alive (or not ours to signal): keep it
        except ProcessLookupError:
            shutil.rmtree(folder, ignore_errors=True)
        except (ValueError, IndexError, OSError):
            continue


def _scratch(*, fresh: bool) -> Path:
    name = f"{threading.get_ident()}-{next(_counter)}" if fresh else f"{threading.get_ident()}"
    return _private_folder() / name


_open_files: dict[tuple[int, int], tuple[Path, int]] = {}  # (pid, thread) -> this thread's public scratch file


def _public_file() -> tuple[Path, int]:
    """This thread's public scratch file, kept open: a fold writes and SEAL reads it once per chunk, and reusing one
    descriptor saves an open and a close each time (SEAL opens the path itself and sees the same inode)."""
    slot = (os.getpid(), threading.get_ident())
    entry = _open_files.get(slot)
    if entry is None or not entry[0].exists():
        path = _scratch(fresh=False)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        entry = _open_files[slot] = (path, fd)
    return entry


def _write(path: Path, data: bytes | memoryview) -> None:
    # O_NOFOLLOW: the folder is ours (0700), so nobody can plant a link; refuse one anyway
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def save_bytes(obj: _Saveable, *, secret: bool = False) -> bytes:
    if not secret:
        path, fd = _public_file()
        obj.save(str(path))  # SEAL truncates and rewrites the same inode
        return os.pread(fd, os.fstat(fd).st_size, 0)
    path = _scratch(fresh=True)
    try:
        obj.save(str(path))
        return path.read_bytes()
    finally:
        path.unlink(missing_ok=True)


def load_bytes(obj: _Loadable, context: object, data: bytes | memoryview, *, secret: bool = False) -> None:
    if not secret:
        obj.load(context, load_path(data))
        return
    path = _scratch(fresh=True)
    try:
        _write(path, data)
        obj.load(context, str(path))
    finally:
        path.unlink(missing_ok=True)


def load_path(data: bytes | memoryview) -> str:
    """Write public bytes to this thread's scratch file and return its path (for loaders with other signatures)."""
    path, fd = _public_file()
    written = os.pwrite(fd, data, 0)
    if written != len(data):
        raise OSError(f"short write to {path}: {written} of {len(data)} bytes")
    if os.fstat(fd).st_size != written:
        os.ftruncate(fd, written)
    return str(path)

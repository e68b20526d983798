"""Writing files that must never be read by anyone else, or written through a planted link.

One writer for every secret or plaintext-model file MedHeaven creates (secret contexts, signing keys, agreement keys,
exported models and their preprocessing): the bytes go to a fresh file made by ``mkstemp`` (``O_CREAT | O_EXCL``,
mode 0600, so a file or symlink planted at any name cannot receive them), are flushed to disk, and are renamed over
the destination. ``os.replace`` replaces a symlink at the destination itself; it never writes through it. Public files
use the same path and are then widened to 0644, so they get the same protection against a planted temporary name.
"""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

from medheaven.errors import ConfigurationError, KeyCustodyError

PRIVATE_MODE = 0o600
PUBLIC_MODE = 0o644


def _write_atomically(path: Path, data: bytes, *, mode: int, force: bool, what: str) -> None:
    if (path.exists() or path.is_symlink()) and not force:
        raise ConfigurationError(f"{path} exists; pass --force to replace it{what}")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            if mode != PRIVATE_MODE:
                os.fchmod(handle.fileno(), mode)
            os.fsync(handle.fileno())
        os.replace(name, path)
    except BaseException:
        Path(name).unlink(missing_ok=True)
        raise


def write_private_file(path: Path, data: bytes, *, force: bool = False) -> None:
    """Create ``path`` readable by its owner only (0600), never widening permissions even for an instant."""
    _write_atomically(path, data, mode=PRIVATE_MODE, force=force, what=" (the old key or model will be lost)")


def write_public_file(path: Path, data: bytes, *, force: bool = False) -> None:
    """Create ``path`` world-readable (0644), through the same link-safe temporary file as a private one."""
    _write_atomically(path, data, mode=PUBLIC_MODE, force=force, what="")


def private_staging_dir(parent: Path, *, prefix: str) -> Path:
    """A fresh 0700 folder in ``parent``, for libraries (Keras) that insist on writing to a path themselves."""
    return Path(tempfile.mkdtemp(prefix=prefix, dir=parent))


def check_private_file_mode(path: Path) -> None:
    """A secret file readable by group or others is refused: fix it with chmod 600."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError as exc:
        raise ConfigurationError(f"secret key file {path} does not exist") from exc
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyCustodyError(
            f"secret key file {path} is accessible by group or others (mode {stat.S_IMODE(mode):o}); "
            f"run `chmod 600 {path}`"
        )

"""Store selection: ``MEDHEAVEN_STORE`` is ``file:///abs``, ``file://./rel`` or ``drive://<folder-id>``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from medheaven.errors import ConfigurationError
from medheaven.store.base import Store, validate_key
from medheaven.store.local import LocalStore

if TYPE_CHECKING:
    from medheaven.settings import Settings

__all__ = ["LocalStore", "Store", "open_store", "validate_key"]


def open_store(url: str, *, settings: Settings | None = None) -> Store:
    if url.startswith("file://"):
        return LocalStore(Path(url.removeprefix("file://") or "."))
    if url.startswith("drive://"):
        from medheaven.store.drive import open_drive_store

        if settings is None:
            raise ConfigurationError("the Drive store needs settings (service account or OAuth settings file)")
        return open_drive_store(url.removeprefix("drive://"), settings=settings)
    raise ConfigurationError(f"store URL {url!r}: use file:///path, file://./path or drive://<folder-id>")

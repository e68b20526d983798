"""Google Drive backend of the global server, built on pydrive2 (Drive API v2).

One Drive folder per federation, named by id: ``MEDHEAVEN_STORE=drive://<folder-id>`` (the id is the last part of
the folder's URL). Key ``rounds/3/global.ckks`` is the file titled ``global.ckks`` in sub-folder ``rounds/3``;
sub-folders are created on demand and their ids cached.

How the ``Store`` contract maps onto Drive, which allows several files with one title in a folder:

* ``put`` uploads a new revision of the existing file, or inserts one. A revision becomes visible only when its
  upload completes, so readers see the old bytes or the new ones. If the store meets duplicate titles (Drive
  allows them; racing inserts make them), every writer keeps the newest file and trashes the others with a log
  warning, so writers agree on one survivor (last writer wins); ``get`` reads the newest.
* ``create`` refuses when the title exists. Drive has no conditional insert, so after inserting, ``create``
  lists the title again: when creators raced, the oldest file wins everywhere, the others are trashed, and every
  loser raises ``StoreConflictError``.
* Payloads use the resumable protocol in chunks of ``MEDHEAVEN_DRIVE_CHUNK_SIZE``; every request, each chunk
  included, is retried with bounded exponential backoff and jitter on 5xx, 429 and rate-limit 403s. A 401
  makes oauth2client fetch a fresh token and resend once. MD5 sums are checked both ways.

Credentials (service account or a user's saved OAuth sign-in) and the API endpoints are set up as described in
``medheaven.store.drive_auth``.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import io
import json
import logging
import mimetypes
import random
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO, TypeVar

import httplib2
from googleapiclient.errors import HttpError
from googleapiclient.http import MediaIoBaseDownload, MediaIoBaseUpload
from oauth2client.client import AccessTokenRefreshError, HttpAccessTokenRefreshError
from pydrive2.auth import AuthError
from pydrive2.drive import GoogleDrive
from pydrive2.files import ApiRequestError

from medheaven.errors import ConfigurationError, StoreAccessError, StoreConflictError, StoreError, StoreKeyNotFoundError
from medheaven.settings import Settings
from medheaven.store.base import Store, validate_key
from medheaven.store.drive_auth import DriveIdentity, build_drive_auth

__all__ = ["DriveStore", "open_drive_store"]

log = logging.getLogger(__name__)

T = TypeVar("T")

FOLDER_MIME = "application/vnd.google-apps.folder"
# Drive ids are URL-safe base64-ish; refusing anything else also keeps ids out of reach of query injection
_FOLDER_ID = re.compile(r"^[A-Za-z0-9_-]{1,256}$")
_RATE_LIMIT_REASONS = frozenset({"rateLimitExceeded", "userRateLimitExceeded"})
# Drive requires every chunk but the last to be a multiple of 256 KiB
_CHUNK_QUANTUM = 256 * 1024
# exceptions a Drive call can raise that _failure() knows how to read; anything else is a bug and propagates
_TRANSPORT_ERRORS = (OSError, http.client.HTTPException, httplib2.HttpLib2Error)
_DRIVE_ERRORS = (HttpError, ApiRequestError, AccessTokenRefreshError, AuthError, *_TRANSPORT_ERRORS)
# Drive file resources as pydrive2 returns them (GoogleDriveFile, a dict); named here because DriveStore.list
# shadows the builtin inside the class
_Items = list[Any]


def open_drive_store(
    folder_id: str,
    *,
    settings: Settings,
    max_tries: int = 5,
    backoff_base: float = 0.2,
    http_timeout: float = 120.0,
) -> DriveStore:
    """Sign in as configured and check that ``folder_id`` is a folder the credential can reach."""
    if not _FOLDER_ID.fullmatch(folder_id):
        raise ConfigurationError(
            f"drive://{folder_id}: a Drive folder id is the last part of the folder's URL (letters, digits, - and _)"
        )
    auth, identity = build_drive_auth(settings, http_timeout=http_timeout)
    store = DriveStore(
        GoogleDrive(auth),
        folder_id,
        identity=identity,
        chunk_size=settings.drive_chunk_size,
        max_tries=max_tries,
        backoff_base=backoff_base,
    )
    store.check_folder()
    return store


@dataclass(frozen=True)
class _Failure:
    """What went wrong in one Drive call: HTTP status (None when no response came) and Drive's error reason."""

    status: int | None
    reason: str
    message: str
    retry_after: float | None = None

    @property
    def retryable(self) -> bool:
        if self.reason == "token":
            return self.status is not None and self.status >= 500
        if self.status is None:
            return True
        return self.status >= 500 or self.status == 429 or self.reason in _RATE_LIMIT_REASONS

    @property
    def detail(self) -> str:
        return f"{self.status or 'no response'} {self.reason} {self.message}".strip()

    @property
    def rejects_credential(self) -> bool:
        return self.status == 401 or (self.reason == "token" and not self.retryable)


def _failure_from_response(status: int, content: bytes, retry_after: str | None) -> _Failure:
    reason, message = "", ""
    try:
        error = json.loads(content)["error"]
        message = str(error.get("message", ""))
        reason = str(error["errors"][0]["reason"])
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        message = message or content[:200].decode("utf-8", errors="replace")
    delay = float(retry_after) if retry_after and retry_after.isdigit() else None
    return _Failure(status, reason, message, delay)


def _failure(exc: BaseException) -> _Failure:
    if isinstance(exc, ApiRequestError):  # pydrive2's wrapper around the HttpError it caught
        exc = exc.args[0] if exc.args and isinstance(exc.args[0], HttpError) else exc
    if isinstance(exc, HttpError):
        return _failure_from_response(exc.resp.status, exc.content or b"", exc.resp.get("retry-after"))
    if isinstance(exc, AuthError) and isinstance(exc.__context__, AccessTokenRefreshError):
        exc = exc.__context__  # pydrive2's RefreshError hides the token endpoint's status
    if isinstance(exc, HttpAccessTokenRefreshError):
        return _Failure(exc.status, "token", str(exc))
    if isinstance(exc, AccessTokenRefreshError | AuthError):
        return _Failure(None, "token", str(exc))
    return _Failure(None, "transport", repr(exc))  # connection refused or reset, timeout, bad status line


class _ChunkBytesUpload(MediaIoBaseUpload):  # type: ignore[misc]  # googleapiclient ships no types
    """Resumable upload that hands each chunk to httplib2 as ``bytes``, not as a slice of the stream.

    After a 401, oauth2client refreshes the token and resends the same body; a stream slice would already be
    read to its end and the chunk would go out empty under a non-empty Content-Length.
    """

    def has_stream(self) -> bool:
        return False


class DriveStore(Store):
    def __init__(
        self,
        drive: Any,
        folder_id: str,
        *,
        identity: DriveIdentity,
        chunk_size: int = 8 * 1024 * 1024,
        max_tries: int = 5,
        backoff_base: float = 0.2,
        backoff_cap: float = 4.0,
    ) -> None:
        self._drive = drive
        self._auth = drive.auth
        self.folder_id = folder_id
        self.location = f"drive://{folder_id}"
        self._identity = identity
        self._chunk_size = max(_CHUNK_QUANTUM, chunk_size // _CHUNK_QUANTUM * _CHUNK_QUANTUM)
        self._max_tries = max(1, max_tries)
        self._backoff_base = backoff_base
        self._backoff_cap = backoff_cap
        self._folders: dict[str, str] = {}  # sub-folder path -> id
        self._shared_drive: str | None = None  # set by check_folder when the folder lives in a shared drive
        self._folders_lock = threading.Lock()

    # --- the Store verbs --------------------------------------------------------------------------------------

    def put(self, key: str, data: bytes | bytearray) -> None:
        self._with_fresh_folders(lambda: self._put(key, io.BytesIO(data)))

    def put_file(self, key: str, source: BinaryIO) -> None:
        # the resumable upload reads the file one chunk (``chunk_size``) at a time: never the whole file in memory
        self._with_fresh_folders(lambda: self._put(key, source))

    def create(self, key: str, data: bytes | bytearray) -> None:
        self._with_fresh_folders(lambda: self._create(key, io.BytesIO(data)))

    def get(self, key: str) -> bytes:
        for _ in range(2):
            _, _, found = self._lookup(key, create=False)
            if not found:
                raise StoreKeyNotFoundError(f"{key} not found in store {self.location}")
            target = _newest(found)
            if len(found) > 1:
                log.warning(
                    "%s: %d files share this key on Drive; reading the newest, %s", key, len(found), target["id"]
                )
            data = self._download(target["id"], f"downloading {key}")
            expected = target.get("md5Checksum")
            if not expected or _md5(data) == expected:
                return data
            # a put replaced the file between listing and download: list and read again
        raise StoreError(f"{self.location}/{key}: downloaded bytes disagree with Drive's MD5 twice; try again")

    def exists(self, key: str) -> bool:
        return bool(self._lookup(key, create=False)[2])

    def list(self, prefix: str = "") -> list[str]:
        parts = validate_key(prefix).split("/") if prefix else []
        start = self._folder(parts, create=False)
        if start is None:
            return []
        keys: set[str] = set()
        pending = [(start, prefix)]
        while pending:
            folder_id, path = pending.pop()
            for item in self._children(folder_id):
                title = str(item.get("title", ""))
                if not _is_key_part(title):
                    continue  # something people dropped into the folder by hand, not a store key
                child = f"{path}/{title}" if path else title
                if item.get("mimeType") == FOLDER_MIME:
                    pending.append((item["id"], child))
                elif not str(item.get("mimeType", "")).startswith("application/vnd.google-apps."):
                    keys.add(child)
        return sorted(keys)

    def delete(self, key: str) -> None:
        for item in self._lookup(key, create=False)[2]:
            # deleted meanwhile by someone else: the outcome that was asked for
            with contextlib.suppress(StoreKeyNotFoundError):
                self._call(f"deleting {key}", self._drive.CreateFile({"id": item["id"]}).Delete)

    def check_folder(self) -> None:
        """Fail early, with the fix in the message, if the federation folder is missing or unreachable."""
        folder = self._drive.CreateFile({"id": self.folder_id})
        try:
            self._call(f"opening folder {self.folder_id}", folder.FetchMetadata)
        except StoreKeyNotFoundError as exc:
            raise StoreAccessError(
                f"Drive folder {self.folder_id} not found: check MEDHEAVEN_STORE=drive://{self.folder_id} and that "
                f"the folder is shared with {self._identity.share_with}"
            ) from exc
        if folder.get("mimeType") != FOLDER_MIME:
            raise ConfigurationError(
                f"drive://{self.folder_id} is the file {folder.get('title')!r}, not a folder: fix MEDHEAVEN_STORE"
            )
        if folder.get("labels", {}).get("trashed"):
            raise StoreAccessError(f"Drive folder {self.folder_id} is in the trash: restore it or fix MEDHEAVEN_STORE")
        self._shared_drive = folder.get("driveId")

    # --- writing ----------------------------------------------------------------------------------------------

    def _put(self, key: str, data: BinaryIO) -> None:
        folder_id, title, found = self._lookup(key, create=True)
        if found:
            keep = _newest(found)
            self._upload(key, data, folder_id, title, file_id=keep["id"])
        else:
            self._upload(key, data, folder_id, title, file_id=None)
            # a concurrent put may have inserted the same title meanwhile: everyone keeps the newest
            found = self._children(folder_id, title=title, folders=False)
            keep = _newest(found)
        self._trash_duplicates(key, found, keep["id"])

    def _create(self, key: str, data: BinaryIO) -> None:
        folder_id, title, found = self._lookup(key, create=True)
        if found:
            raise StoreConflictError(
                f"{self.location}/{key} already exists and is committed; MedHeaven never overwrites it"
            )
        mine = self._upload(key, data, folder_id, title, file_id=None)
        found = self._children(folder_id, title=title, folders=False) or [mine]
        first = min(found, key=lambda item: (item.get("createdDate", ""), item["id"]))
        self._trash_duplicates(key, found, first["id"])
        if first["id"] != mine["id"]:
            raise StoreConflictError(
                f"{self.location}/{key} was created concurrently by another writer; theirs is kept"
            )

    def _upload(self, key: str, data: BinaryIO, folder_id: str, title: str, *, file_id: str | None) -> dict[str, Any]:
        mime = mimetypes.guess_type(title)[0] or "application/octet-stream"
        sent_md5 = _md5_of_file(data)
        media = _ChunkBytesUpload(data, mime, chunksize=self._chunk_size, resumable=True)
        files = self._auth.service.files()
        if file_id is None:
            body = {"title": title, "mimeType": mime, "parents": [{"id": folder_id}]}
            request = files.insert(body=body, media_body=media, supportsAllDrives=True)
        else:
            request = files.update(fileId=file_id, media_body=media, supportsAllDrives=True)
        # one HttpRequest across attempts: after a failed chunk googleapiclient asks Drive how much it holds
        # and resumes from there instead of starting over
        response: dict[str, Any] | None = None
        while response is None:
            response = self._call(f"uploading {key}", lambda: request.next_chunk(http=self._http())[1])
        stored = response.get("md5Checksum")
        if stored and stored != sent_md5:
            raise StoreError(
                f"{self.location}/{key}: Drive stored bytes whose MD5 differs from what was sent; put again"
            )
        return response

    def _trash_duplicates(self, key: str, found: Sequence[Any], keep_id: str) -> None:
        others = [item["id"] for item in found if item["id"] != keep_id]
        if not others:
            return
        # Drive allows duplicate titles; racing inserts (or people) make them
        log.warning("%s: %d files on Drive; keeping %s, trashing %s", key, len(found), keep_id, ", ".join(others))
        for file_id in others:
            with contextlib.suppress(StoreKeyNotFoundError):  # another writer trashed it first
                self._call(f"trashing a duplicate of {key}", self._drive.CreateFile({"id": file_id}).Trash)

    def _with_fresh_folders(self, op: Callable[[], None]) -> None:
        try:
            op()
        except StoreKeyNotFoundError:
            # a cached folder id went stale (the folder was deleted or moved on Drive): look the path up again
            with self._folders_lock:
                self._folders.clear()
            op()

    # --- reading ----------------------------------------------------------------------------------------------

    def _download(self, file_id: str, what: str) -> bytes:
        buffer = io.BytesIO()
        request = self._auth.service.files().get_media(fileId=file_id, supportsAllDrives=True)
        request.http = self._http()
        downloader = MediaIoBaseDownload(buffer, request, chunksize=self._chunk_size)
        done = False
        while not done:
            # a failed chunk leaves the downloader's position alone, so the retry asks for the same range
            done = self._call(what, lambda: bool(downloader.next_chunk()[1]))
        return buffer.getvalue()

    def _lookup(self, key: str, *, create: bool) -> tuple[str, str, _Items]:
        """(folder id, title, files with exactly that title); the folder id is '' if the folder does not exist."""
        *folders, title = validate_key(key).split("/")
        folder_id = self._folder(folders, create=create)
        if folder_id is None:
            return "", title, []
        return folder_id, title, self._children(folder_id, title=title, folders=False)

    def _folder(self, parts: Sequence[str], *, create: bool) -> str | None:
        folder_id = self.folder_id
        for depth, title in enumerate(parts):
            path = "/".join(parts[: depth + 1])
            # held across the lookup: threads of one process wait for one creator instead of racing it
            # (processes still race; _child_folder settles that on Drive)
            with self._folders_lock:
                cached = self._folders.get(path)
                if cached is None:
                    cached = self._child_folder(folder_id, title, create=create)
                    if cached is None:
                        return None
                    self._folders[path] = cached
            folder_id = cached
        return folder_id

    def _child_folder(self, parent_id: str, title: str, *, create: bool) -> str | None:
        found = self._children(parent_id, title=title, folders=True)
        mine: str | None = None
        if not found and create:
            folder = self._drive.CreateFile({"title": title, "mimeType": FOLDER_MIME, "parents": [{"id": parent_id}]})
            self._call(f"creating folder {title!r} in {parent_id}", folder.Upload)
            mine = str(folder["id"])
            found = self._children(parent_id, title=title, folders=True)
        if not found:
            return None
        # racing creators all pick the oldest folder; only the one we just made (still empty) may be trashed
        first = str(min(found, key=lambda item: (item.get("createdDate", ""), item["id"]))["id"])
        if len(found) > 1:
            log.warning("Drive folder %s holds %d folders titled %r; using %s", parent_id, len(found), title, first)
            if mine is not None and mine != first:
                self._call(f"trashing duplicate folder {title!r}", self._drive.CreateFile({"id": mine}).Trash)
        return first

    def _children(self, folder_id: str, *, title: str | None = None, folders: bool | None = None) -> _Items:
        clauses = [f"'{folder_id}' in parents", "trashed = false"]
        if title is not None:
            clauses.append("title = '{}'".format(title.replace("\\", "\\\\").replace("'", "\\'")))
        if folders is not None:
            clauses.append(f"mimeType {'=' if folders else '!='} '{FOLDER_MIME}'")
        params = {"q": " and ".join(clauses)}
        if self._shared_drive:
            # the default corpus holds a user's own and shared-with-them files, not all of a shared drive's
            params |= {"corpora": "drive", "driveId": self._shared_drive}
        # GetList() without maxResults follows nextPageToken to the last page
        items: _Items = self._call(f"listing folder {folder_id}", lambda: self._drive.ListFile(params).GetList())
        if title is not None:
            # Drive matches titles case-insensitively; keys are case-sensitive
            items = [item for item in items if item.get("title") == title]
        return items

    # --- calling Drive ----------------------------------------------------------------------------------------

    def _call(self, what: str, op: Callable[[], T]) -> T:
        """Run one Drive call with bounded retries; translate what cannot be retried into a StoreError."""
        for attempt in range(1, self._max_tries + 1):
            try:
                self._refresh_expired_token()
                return op()
            except _DRIVE_ERRORS as exc:
                failure = _failure(exc)
                if not failure.retryable or attempt == self._max_tries:
                    raise self._store_error(failure, what, attempt) from exc
                delay = self._backoff(attempt, failure.retry_after)
                log.info("Drive %s failed (%s); retry %d in %.2fs", what, failure.detail, attempt, delay)
                time.sleep(delay)
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        delay = min(self._backoff_cap, self._backoff_base * 2.0 ** (attempt - 1))
        delay *= 0.5 + random.random() / 2  # jitter: many workers must not retry in lockstep
        if retry_after is not None:
            delay = max(delay, min(retry_after, self._backoff_cap))
        return delay

    def _store_error(self, failure: _Failure, what: str, tries: int) -> StoreError:
        detail = failure.detail
        if failure.rejects_credential:
            return StoreAccessError(
                f"Google rejected {self._identity.credential} while {what} ({detail}): check that the credential "
                "is still valid (a deleted key or revoked sign-in) and that the settings point at the right file"
            )
        if failure.reason == "storageQuotaExceeded":
            return StoreAccessError(
                f"Drive storage quota exceeded for {self._identity.credential} while {what} ({detail}): free space, "
                "or (service accounts have no quota of their own) put the folder in a shared drive"
            )
        if failure.status == 403 and not failure.retryable:
            return StoreAccessError(
                f"no access to Drive folder {self.folder_id} while {what} ({detail}): share the folder with "
                f"{self._identity.share_with} as Editor"
            )
        if failure.status == 404:
            return StoreKeyNotFoundError(f"not found on Drive while {what} ({detail})")
        if failure.retryable:
            return StoreError(f"Google Drive kept failing while {what}, {tries} tries ({detail}); try again later")
        return StoreError(f"Google Drive refused {what} ({detail})")

    def _refresh_expired_token(self) -> None:
        # Refreshing ahead keeps pydrive2 from reaching for its interactive browser flow when a user token has
        # expired; a plain Http because the authorised one would put the stale token on the token request.
        credentials = self._auth.credentials
        if credentials is not None and credentials.access_token_expired:
            credentials.refresh(httplib2.Http(timeout=self._auth.http_timeout))

    def _http(self) -> Any:
        # httplib2 connections are not thread-safe; share pydrive2's per-thread authorised Http
        local = self._auth.thread_local
        if getattr(local, "http", None) is None:
            local.http = self._auth.Get_Http_Object()
        return local.http


def _newest(found: Sequence[Any]) -> Any:
    return max(found, key=lambda item: (item.get("modifiedDate", ""), item["id"]))


def _md5(data: bytes | bytearray) -> str:
    # Drive reports MD5 sums; this checks transfers, not authenticity (envelopes carry signatures)
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def _md5_of_file(source: BinaryIO) -> str:
    """``_md5`` of everything in ``source``, read in 1 MiB pieces (the upload seeks to each chunk itself)."""
    digest = hashlib.md5(usedforsecurity=False)
    source.seek(0)
    while piece := source.read(1 << 20):
        digest.update(piece)
    source.seek(0)
    return digest.hexdigest()


def _is_key_part(title: str) -> bool:
    try:
        validate_key(title)
    except StoreError:
        return False
    return "/" not in title

"""A TEST DOUBLE of Google Drive API v2 and Google's OAuth token endpoint. It is not Google's service.

MedHeaven's tests cannot reach Google, yet the Drive store must be tested through the real pydrive2,
google-api-python-client and oauth2client code. ``DriveServer`` answers that code over real HTTP on 127.0.0.1:

* ``POST /token``: JWT-bearer grants (RS256 signature checked with the service account's public key, ``aud``,
  ``exp``) and refresh-token grants; unknown accounts and tokens get 401.
* ``/drive/v2/about``; ``files`` list (``q``, see ``drive_query``; ``maxResults``/``pageToken`` paging, capped by
  ``page_size``), insert (metadata), get (metadata, or ``alt=media`` honouring ``Range``), patch/update, delete,
  trash, untrash.
* Uploads to ``/upload/drive/v2/files[/<id>]``: resumable (sessions, ``Content-Range`` chunks answered 308 until
  complete, ``bytes */N`` status queries), multipart and media.
* Faults for tests: ``inject()`` an error status, a delay or a token revocation on matching requests;
  ``revoke_tokens()``; folders marked read-only answer writes with 403.

Not implemented: permissions and sharing beyond read-only folders, revisions, shared drives, ``fields``
projections (full resources are always returned), ``orderBy``, Docs export, batch requests, quotas, ETags,
changes, and upload session expiry. Every response is HTTP/1.1 with a Content-Length.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import re
import secrets
import socket
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from drive_query import QueryError, compile_query

FOLDER = "application/vnd.google-apps.folder"
OCTET = "application/octet-stream"
DEFAULT_REASONS = {401: "authError", 403: "userRateLimitExceeded", 404: "notFound", 429: "rateLimitExceeded"}


# --- service accounts ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ServiceAccount:
    """A service account with a real RSA key: oauth2client signs JWTs with it, so a dummy key would not do."""

    email: str
    key_id: str
    private_key_pem: str

    def public_key(self) -> rsa.RSAPublicKey:
        key = serialization.load_pem_private_key(self.private_key_pem.encode(), password=None)
        assert isinstance(key, rsa.RSAPrivateKey)
        return key.public_key()

    def key_file_dict(self, token_uri: str) -> dict[str, str]:
        """The JSON key file Google's console would hand out, with ``token_uri`` pointing where asked."""
        return {
            "type": "service_account",
            "project_id": "medheaven-test",
            "private_key_id": self.key_id,
            "private_key": self.private_key_pem,
            "client_email": self.email,
            "client_id": str(int(hashlib.sha256(self.email.encode()).hexdigest()[:15], 16)),
            "auth_uri": "https://accounts.google.com/o/oauth2/auth",
            "token_uri": token_uri,
        }

    def write(self, path: Path, token_uri: str) -> Path:
        path.write_text(json.dumps(self.key_file_dict(token_uri), indent=2), encoding="utf-8")
        return path


def make_service_account(email: str = "medheaven-test@medheaven-test.iam.gserviceaccount.com") -> ServiceAccount:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    return ServiceAccount(email=email, key_id=secrets.token_hex(20), private_key_pem=pem)


@functools.cache
def default_service_account() -> ServiceAccount:
    """One key per test session: generating RSA keys is the slowest part of starting a server."""
    return make_service_account()


# --- state -----------------------------------------------------------------------------------------------------


@dataclass
class StoredFile:
    id: str
    title: str
    mime_type: str
    parents: list[str]
    created: str
    modified: str
    content: bytes = b""
    trashed: bool = False
    version: int = 1
    drive_id: str | None = None  # the shared drive holding the file, None in My Drive

    @property
    def is_folder(self) -> bool:
        return self.mime_type == FOLDER


@dataclass
class LoggedRequest:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # lower-case names
    body_size: int
    status: int = 0


@dataclass
class Fault:
    status: int | None
    reason: str
    method: str | None
    path: str | None  # regular expression searched in the request path
    times: int
    after: int
    delay: float
    revoke: bool

    def matches(self, method: str, path: str) -> bool:
        return (self.method is None or self.method == method) and (
            self.path is None or re.search(self.path, path) is not None
        )


@dataclass
class _Session:
    file_id: str | None  # None: a new file
    metadata: dict[str, Any]
    mime_type: str
    total: int | None
    received: bytearray = field(default_factory=bytearray)
    result: str | None = None  # id of the file once complete


@dataclass
class _Response:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


class ApiError(Exception):
    def __init__(self, status: int, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason or DEFAULT_REASONS.get(status, "backendError" if status >= 500 else "invalid")

    def response(self, *, oauth: bool) -> _Response:
        if oauth:  # the token endpoint speaks OAuth's error format, not Drive's
            return _json(self.status, {"error": self.reason, "error_description": str(self)})
        error = {"domain": "global", "reason": self.reason, "message": str(self)}
        return _json(self.status, {"error": {"code": self.status, "message": str(self), "errors": [error]}})


def _json(status: int, value: Any, headers: dict[str, str] | None = None) -> _Response:
    return _Response(status, json.dumps(value).encode(), {"Content-Type": "application/json", **(headers or {})})


def _b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


# --- the server ------------------------------------------------------------------------------------------------


class DriveServer:
    """Start with ``with DriveServer() as server:`` (or ``start()``/``stop()``); point the client at ``url``."""

    def __init__(self, *, page_size: int = 1000) -> None:
        self.page_size = page_size
        self.files: dict[str, StoredFile] = {}
        self.request_log: list[LoggedRequest] = []
        self.token_grants: list[str] = []  # "jwt:<email>" or "refresh:<token prefix>", in order
        self.read_only: set[str] = set()  # folders whose subtree answers writes with 403
        self._lock = threading.RLock()
        self._faults: list[Fault] = []
        self._access_tokens: dict[str, str] = {}  # token -> principal
        self._refresh_tokens: dict[str, str] = {}
        self._accounts: dict[str, rsa.RSAPublicKey] = {}
        self._sessions: dict[str, _Session] = {}
        self._last_ms = 0
        self._httpd = _HTTPServer(("127.0.0.1", 0), _Handler)
        self._httpd.drive = self
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self.token_uri = f"{self.url}/token"
        self.root_folder_id = self._new_file("My Drive", FOLDER, []).id
        self._thread: threading.Thread | None = None

    # --- lifecycle and setup -------------------------------------------------------------------------------

    def start(self) -> DriveServer:
        # a short poll interval: shutdown() waits for it, and every test stops a server
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.02}, name="drive-test-double", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> DriveServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def add_service_account(self, account: ServiceAccount) -> None:
        with self._lock:
            self._accounts[account.email] = account.public_key()

    def service_account_file(self, path: Path, account: ServiceAccount | None = None) -> Path:
        """Register ``account`` (the session's default one if None) and write its key file, token_uri here."""
        account = account or default_service_account()
        self.add_service_account(account)
        return account.write(path, self.token_uri)

    def issue_refresh_token(self) -> str:
        token = secrets.token_urlsafe(24)
        with self._lock:
            self._refresh_tokens[token] = "user@example.org"
        return token

    def create_folder(self, title: str, parent: str | None = None, *, shared_drive: str | None = None) -> str:
        """A folder; with ``shared_drive``, the top folder of that shared drive (its files inherit the drive)."""
        folder = self.add_file(title, parent=parent, mime_type=FOLDER)
        folder.drive_id = shared_drive or folder.drive_id
        return folder.id

    def add_file(
        self, title: str, content: bytes = b"", *, parent: str | None = None, mime_type: str = OCTET
    ) -> StoredFile:
        """Create a file directly, as another Drive client would (duplicates titles if asked to)."""
        with self._lock:
            return self._new_file(title, mime_type, [parent or self.root_folder_id], content)

    def children(self, folder_id: str, *, trashed: bool = False) -> list[StoredFile]:
        with self._lock:
            return [f for f in self.files.values() if folder_id in f.parents and f.trashed == trashed]

    def inject(
        self,
        status: int | None = None,
        *,
        method: str | None = None,
        path: str | None = None,
        times: int = 1,
        after: int = 0,
        delay: float = 0.0,
        revoke: bool = False,
        reason: str | None = None,
    ) -> None:
        """Fault for the next ``times`` requests matching ``method`` and ``path``, after letting ``after`` pass.

        ``status`` answers with that error; ``delay`` sleeps before answering; ``revoke`` revokes every access
        token first, so the request itself gets 401 and the client must fetch a new token.
        """
        default = DEFAULT_REASONS.get(status or 0, "backendError")
        with self._lock:
            self._faults.append(Fault(status, reason or default, method, path, times, after, delay, revoke))

    def revoke_tokens(self) -> None:
        with self._lock:
            self._access_tokens.clear()

    def requests(self, method: str | None = None, path: str = "") -> list[LoggedRequest]:
        """Logged requests with that method whose path matches the regular expression ``path``."""
        with self._lock:
            log = list(self.request_log)
        return [r for r in log if (method is None or r.method == method) and re.search(path, r.path)]

    # --- request handling ----------------------------------------------------------------------------------

    def handle(self, method: str, target: str, headers: Mapping[str, str], body: bytes) -> _Response:
        url = urlsplit(target)
        path = unquote(url.path)
        query = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        entry = LoggedRequest(method, path, query, {k.lower(): v for k, v in headers.items()}, len(body))
        with self._lock:
            self.request_log.append(entry)
            fault = self._take_fault(method, path)
        if fault is not None and fault.delay:
            time.sleep(fault.delay)
        try:
            with self._lock:
                if fault is not None and fault.revoke:
                    self._access_tokens.clear()
                if fault is not None and fault.status:
                    raise ApiError(fault.status, "injected fault", fault.reason)
                response = self._route(method, path, query, entry.headers, body)
        except ApiError as error:
            response = error.response(oauth=path == "/token")
        entry.status = response.status
        return response

    def _take_fault(self, method: str, path: str) -> Fault | None:
        for fault in self._faults:
            if not fault.matches(method, path):
                continue
            if fault.after > 0:
                fault.after -= 1
                continue
            fault.times -= 1
            if fault.times <= 0:
                self._faults.remove(fault)
            return fault
        return None

    def _route(  # noqa: PLR0911 - a routing table reads best as one flat list of returns
        self, method: str, path: str, query: dict[str, str], headers: dict[str, str], body: bytes
    ) -> _Response:
        if path == "/token" and method == "POST":
            return self._grant(body)
        self._authenticate(headers)
        if path == "/drive/v2/about" and method == "GET":
            return _json(200, {"kind": "drive#about", "rootFolderId": self.root_folder_id, "name": "test"})
        if path == "/drive/v2/files":
            if method == "GET":
                return self._list(query)
            if method == "POST":
                return _json(200, self._resource(self._insert(_load_json(body), b"", "")))
        if match := re.fullmatch(r"/drive/v2/files/([^/]+)(?:/(trash|untrash))?", path):
            return self._file_request(method, match.group(1), match.group(2), query, headers, body)
        if match := re.fullmatch(r"/upload/drive/v2/files(?:/([^/]+))?", path):
            return self._upload_request(method, match.group(1), query, headers, body)
        if (match := re.fullmatch(r"/upload/session/([^/]+)", path)) and method == "PUT":
            return self._session_put(match.group(1), headers, body)
        raise ApiError(404, f"no such endpoint in the Drive test double: {method} {path}")

    # --- OAuth -----------------------------------------------------------------------------------------------

    def _grant(self, body: bytes) -> _Response:
        form = {k: v[-1] for k, v in parse_qs(body.decode()).items()}
        grant = form.get("grant_type", "")
        if grant == "urn:ietf:params:oauth:grant-type:jwt-bearer":
            principal = self._verify_assertion(form.get("assertion", ""))
            self.token_grants.append(f"jwt:{principal}")
        elif grant == "refresh_token":
            principal = self._refresh_tokens.get(form.get("refresh_token", ""), "")
            if not principal:
                raise ApiError(401, "unknown or revoked refresh token", "invalid_grant")
            self.token_grants.append(f"refresh:{form['refresh_token'][:6]}")
        else:
            raise ApiError(400, f"unsupported grant_type {grant!r}", "unsupported_grant_type")
        token = secrets.token_urlsafe(24)
        self._access_tokens[token] = principal
        return _json(200, {"access_token": token, "token_type": "Bearer", "expires_in": 3600})

    def _verify_assertion(self, assertion: str) -> str:
        try:
            header_b64, payload_b64, signature_b64 = assertion.split(".")
            header = json.loads(_b64url_decode(header_b64))
            claims = json.loads(_b64url_decode(payload_b64))
            signature = _b64url_decode(signature_b64)
        except ValueError as exc:
            raise ApiError(400, f"malformed JWT: {exc}", "invalid_grant") from exc
        key = self._accounts.get(str(claims.get("iss")))
        if key is None:
            raise ApiError(401, f"unknown service account {claims.get('iss')!r}", "invalid_client")
        if header.get("alg") != "RS256":
            raise ApiError(400, "only RS256 assertions are accepted", "invalid_grant")
        try:
            key.verify(signature, f"{header_b64}.{payload_b64}".encode(), padding.PKCS1v15(), hashes.SHA256())
        except InvalidSignature as exc:
            raise ApiError(400, "Invalid JWT Signature.", "invalid_grant") from exc
        now = time.time()
        if claims.get("aud") != self.token_uri:
            raise ApiError(400, f"JWT aud must be {self.token_uri}", "invalid_grant")
        if not claims.get("iat", now + 1e9) - 300 <= now < claims.get("exp", 0):
            raise ApiError(400, "JWT is expired or not yet valid", "invalid_grant")
        return str(claims["iss"])

    def _authenticate(self, headers: dict[str, str]) -> str:
        scheme, _, token = headers.get("authorization", "").partition(" ")
        principal = self._access_tokens.get(token) if scheme.lower() == "bearer" else None
        if principal is None:
            raise ApiError(401, "Invalid Credentials")
        return principal

    # --- files -----------------------------------------------------------------------------------------------

    def _list(self, query: dict[str, str]) -> _Response:
        try:
            predicate = compile_query(query.get("q", ""), root_id=self.root_folder_id) if query.get("q") else None
        except QueryError as exc:
            raise ApiError(400, f"Invalid query: {exc}", "invalid") from exc
        matches = [
            f
            for f in self.files.values()
            if f.id != self.root_folder_id
            and (predicate is None or predicate({"title": f.title, "mimeType": f.mime_type, "parents": f.parents,
                                                 "trashed": f.trashed}))
        ]  # fmt: skip
        if query.get("corpora") == "drive":
            if not query.get("driveId"):
                raise ApiError(400, "corpora=drive needs driveId", "invalid")
            matches = [f for f in matches if f.drive_id == query["driveId"]]
        token = query.get("pageToken", "0")
        if not token.isdigit():
            raise ApiError(400, f"Invalid pageToken {token!r}", "invalid")
        start, size = int(token), min(int(query.get("maxResults", "100")), self.page_size)
        result: dict[str, Any] = {
            "kind": "drive#fileList",
            "items": [self._resource(f) for f in matches[start : start + size]],
        }
        if start + size < len(matches):
            result["nextPageToken"] = str(start + size)
        return _json(200, result)

    def _file_request(
        self, method: str, file_id: str, action: str | None, query: dict[str, str], headers: dict[str, str], body: bytes
    ) -> _Response:
        stored = self._get(file_id)
        if action is not None and method == "POST":
            self._check_writable(stored.parents)
            stored.trashed = action == "trash"
            return _json(200, self._resource(stored))
        if method == "GET" and query.get("alt") == "media":
            return self._media(stored, headers.get("range"))
        if method == "GET":
            return _json(200, self._resource(stored))
        self._check_writable(stored.parents)
        if method in ("PATCH", "PUT"):
            self._apply_metadata(stored, _load_json(body), query)
            return _json(200, self._resource(stored))
        if method == "DELETE":
            self._delete_tree(stored.id)
            return _Response(204)
        raise ApiError(405, f"{method} is not supported on files")

    def _media(self, stored: StoredFile, range_header: str | None) -> _Response:
        if stored.is_folder:
            raise ApiError(403, "Only files with binary content can be downloaded.", "fileNotDownloadable")
        total = len(stored.content)
        match = re.fullmatch(r"bytes=(\d+)-(\d*)", range_header or "")
        if match is None:
            return _Response(200, stored.content, {"Content-Type": stored.mime_type})
        start = int(match.group(1))
        end = min(int(match.group(2)) if match.group(2) else total - 1, total - 1)
        if start >= total:
            return _Response(416, b"", {"Content-Range": f"bytes */{total}"})
        headers = {"Content-Type": stored.mime_type, "Content-Range": f"bytes {start}-{end}/{total}"}
        return _Response(206, stored.content[start : end + 1], headers)

    # --- uploads ---------------------------------------------------------------------------------------------

    def _upload_request(
        self, method: str, file_id: str | None, query: dict[str, str], headers: dict[str, str], body: bytes
    ) -> _Response:
        if (method, file_id is None) not in (("POST", True), ("PUT", False)):
            raise ApiError(405, f"{method} upload {'to a new file' if file_id is None else 'of ' + file_id}")
        if file_id is not None:
            self._check_writable(self._get(file_id).parents)
        kind = query.get("uploadType", "media")
        if kind == "resumable":
            metadata = _load_json(body)
            if file_id is None:
                self._check_parents(metadata)
            size = headers.get("x-upload-content-length")
            mime = headers.get("x-upload-content-type") or metadata.get("mimeType") or OCTET
            session_id = secrets.token_urlsafe(16)
            self._sessions[session_id] = _Session(file_id, metadata, mime, int(size) if size else None)
            return _Response(200, b"", {"Location": f"{self.url}/upload/session/{session_id}"})
        if kind == "multipart":
            metadata, content, mime = _parse_multipart(headers.get("content-type", ""), body)
        elif kind == "media":
            metadata, content, mime = {}, body, headers.get("content-type", OCTET)
        else:
            raise ApiError(400, f"unknown uploadType {kind!r}", "invalid")
        return _json(200, self._resource(self._store_upload(file_id, metadata, content, mime)))

    def _session_put(self, session_id: str, headers: dict[str, str], body: bytes) -> _Response:
        session = self._sessions.get(session_id)
        if session is None:
            raise ApiError(404, "No such upload session")
        if session.result is not None:  # a client that missed our final answer asks again
            return _json(200, self._resource(self._get(session.result)))
        content_range = headers.get("content-range")
        if content_range is None:
            session.received[:] = body  # a single PUT carrying the whole content (or nothing, for empty files)
            session.total = len(body)
        elif match := re.fullmatch(r"bytes \*/(\d+|\*)", content_range):
            if match.group(1) != "*":
                session.total = int(match.group(1))
        elif match := re.fullmatch(r"bytes (\d+)-(\d+)/(\d+|\*)", content_range):
            start, end = int(match.group(1)), int(match.group(2))
            if end - start + 1 != len(body) or start > len(session.received):
                raise ApiError(400, f"Content-Range {content_range} does not fit {len(body)} bytes after "
                               f"{len(session.received)} received", "badContent")  # fmt: skip
            session.received[start:] = body
            if match.group(3) != "*":
                session.total = int(match.group(3))
        else:
            raise ApiError(400, f"bad Content-Range {content_range!r}", "badContent")
        if session.total is not None and len(session.received) == session.total:
            stored = self._store_upload(session.file_id, session.metadata, bytes(session.received), session.mime_type)
            session.result = stored.id
            return _json(200, self._resource(stored))
        received = len(session.received)
        return _Response(308, b"", {"Range": f"bytes=0-{received - 1}"} if received else {})

    def _store_upload(self, file_id: str | None, metadata: dict[str, Any], content: bytes, mime: str) -> StoredFile:
        if file_id is None:
            return self._insert(metadata, content, mime)
        stored = self._get(file_id)
        self._apply_metadata(stored, metadata, {})
        stored.content = content
        stored.modified = self._timestamp()
        stored.version += 1
        return stored

    # --- helpers ---------------------------------------------------------------------------------------------

    def _insert(self, metadata: dict[str, Any], content: bytes, mime: str) -> StoredFile:
        parents = self._check_parents(metadata)
        mime = metadata.get("mimeType") or mime or OCTET
        return self._new_file(str(metadata.get("title") or "Untitled"), mime, parents, content)

    def _check_parents(self, metadata: dict[str, Any]) -> list[str]:
        parents = [str(p["id"]) for p in metadata.get("parents") or []] or [self.root_folder_id]
        parents = [self.root_folder_id if p == "root" else p for p in parents]
        for parent in parents:
            if not self._get(parent).is_folder:
                raise ApiError(400, f"{parent} is not a folder", "invalidParent")
        self._check_writable(parents)
        return parents

    def _check_writable(self, parents: list[str]) -> None:
        pending = list(parents)
        while pending:
            folder_id = pending.pop()
            if folder_id in self.read_only:
                raise ApiError(403, "The user does not have sufficient permissions for this file.",
                               "insufficientFilePermissions")  # fmt: skip
            pending.extend(self.files[folder_id].parents if folder_id in self.files else [])

    def _apply_metadata(self, stored: StoredFile, metadata: dict[str, Any], query: dict[str, str]) -> None:
        if "title" in metadata:
            stored.title = str(metadata["title"])
        if metadata.get("mimeType"):
            stored.mime_type = str(metadata["mimeType"])
        if "parents" in metadata:
            stored.parents = self._check_parents(metadata)
        if "trashed" in (metadata.get("labels") or {}):
            stored.trashed = bool(metadata["labels"]["trashed"])
        for parent in filter(None, query.get("addParents", "").split(",")):
            stored.parents.append(self._get(parent).id)
        removed = set(query.get("removeParents", "").split(","))
        stored.parents = [p for p in stored.parents if p not in removed]
        stored.modified = self._timestamp()

    def _delete_tree(self, file_id: str) -> None:
        for child in [f.id for f in self.files.values() if file_id in f.parents]:
            self._delete_tree(child)
        self.files.pop(file_id, None)

    def _get(self, file_id: str) -> StoredFile:
        stored = self.files.get(self.root_folder_id if file_id == "root" else file_id)
        if stored is None:
            raise ApiError(404, f"File not found: {file_id}.")
        return stored

    def _new_file(self, title: str, mime: str, parents: list[str], content: bytes = b"") -> StoredFile:
        now = self._timestamp()
        stored = StoredFile(secrets.token_urlsafe(21).replace("-", "x"), title, mime, parents, now, now, content)
        stored.drive_id = self.files[parents[0]].drive_id if parents else None
        self.files[stored.id] = stored
        return stored

    def _timestamp(self) -> str:
        # strictly increasing, so "newest" and "oldest" are never ties even within one millisecond
        self._last_ms = max(int(time.time() * 1000), self._last_ms + 1)
        seconds, millis = divmod(self._last_ms, 1000)
        return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{millis:03d}Z"

    def _resource(self, stored: StoredFile) -> dict[str, Any]:
        resource: dict[str, Any] = {
            "kind": "drive#file",
            "id": stored.id,
            "title": stored.title,
            "mimeType": stored.mime_type,
            "parents": [{"kind": "drive#parentReference", "id": p, "isRoot": p == self.root_folder_id}
                        for p in stored.parents],
            "labels": {"trashed": stored.trashed, "starred": False, "hidden": False, "restricted": False},
            "createdDate": stored.created,
            "modifiedDate": stored.modified,
            "version": str(stored.version),
        }  # fmt: skip
        if stored.drive_id:
            resource["driveId"] = stored.drive_id
        if not stored.is_folder:
            resource["fileSize"] = str(len(stored.content))
            resource["md5Checksum"] = hashlib.md5(stored.content, usedforsecurity=False).hexdigest()
            resource["downloadUrl"] = f"{self.url}/drive/v2/files/{stored.id}?alt=media"
        return resource


def _load_json(body: bytes) -> dict[str, Any]:
    if not body.strip():
        return {}
    try:
        value = json.loads(body)
    except ValueError as exc:
        raise ApiError(400, f"Parse Error: {exc}", "parseError") from exc
    if not isinstance(value, dict):
        raise ApiError(400, "the request body must be a JSON object", "parseError")
    return value


def _parse_multipart(content_type: str, body: bytes) -> tuple[dict[str, Any], bytes, str]:
    """multipart/related with a JSON part and a media part, as googleapiclient writes it."""
    match = re.search(r'boundary="?([^";]+)"?', content_type)
    if not content_type.startswith("multipart/related") or match is None:
        raise ApiError(400, "multipart uploads need Content-Type multipart/related with a boundary", "badContent")
    delimiter = b"--" + match.group(1).encode()
    parts = []
    for raw in body.split(delimiter)[1:]:
        if raw.startswith(b"--"):
            break
        part = raw.removeprefix(b"\r\n").removeprefix(b"\n")
        head, sep, payload = part.partition(b"\r\n\r\n")
        if not sep:
            head, _, payload = part.partition(b"\n\n")
        payload = payload.removesuffix(b"\n").removesuffix(b"\r")
        mime = re.search(rb"(?im)^content-type:\s*([^\r\n;]+)", head)
        parts.append((mime.group(1).decode() if mime else OCTET, payload))
    if len(parts) != 2:
        raise ApiError(400, f"multipart upload with {len(parts)} parts, expected 2", "badContent")
    return _load_json(parts[0][1]), parts[1][1], parts[1][0]


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    drive: DriveServer


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as Google's front ends; every response carries Content-Length
    server: _HTTPServer
    timeout = 60  # an abandoned keep-alive connection must not hold a thread forever

    def setup(self) -> None:
        super().setup()
        # headers and body leave in separate writes; without this Nagle + delayed ACK add 40 ms per request
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # keep test output quiet

    def _serve(self) -> None:
        # read the whole body before answering, errors included, or the next request on the connection breaks
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        response = self.server.drive.handle(self.command, self.path, dict(self.headers.items()), body)
        try:
            self.send_response(response.status, "Resume Incomplete" if response.status == 308 else None)
            for name, value in response.headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(response.body)))
            self.end_headers()
            self.wfile.write(response.body)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the client gave up (a timeout test): nothing to answer

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve  # noqa: N815 - http.server dispatches on these names

"""Drive-specific behaviour of DriveStore, against the local test double of Drive (``drive_server``)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from drive_server import DriveServer, make_service_account

from medheaven.errors import ConfigurationError, StoreAccessError, StoreConflictError, StoreError
from medheaven.settings import Settings
from medheaven.store import open_store
from medheaven.store.drive import DriveStore, open_drive_store
from medheaven.store.drive_auth import DRIVE_SCOPE

MIB = 1024 * 1024


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[DriveServer]:
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")  # httplib2 honours proxy variables
    with DriveServer() as drive_server:
        yield drive_server


@pytest.fixture
def folder(server: DriveServer) -> str:
    return server.create_folder("federation")


def drive_settings(server: DriveServer, tmp_path: Path, folder: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "store": f"drive://{folder}",
        "drive_service_account": server.service_account_file(tmp_path / "service-account.json"),
        "drive_oauth_settings": None,
        "drive_api_root": f"{server.url}/",
        "drive_token_uri": None,
        "drive_chunk_size": 8 * MIB,
    }
    return Settings(**{**values, **overrides})


def open_test_store(server: DriveServer, tmp_path: Path, folder: str, **overrides: Any) -> DriveStore:
    return open_drive_store(folder, settings=drive_settings(server, tmp_path, folder, **overrides), backoff_base=0.01)


@pytest.fixture
def store(server: DriveServer, tmp_path: Path, folder: str) -> DriveStore:
    return open_test_store(server, tmp_path, folder)


def test_drive_store_uploads_large_payload_in_resumable_chunks(
    server: DriveServer, store: DriveStore, capsys: pytest.CaptureFixture[str]
) -> None:
    payload = os.urandom(20_000_000)
    started = time.perf_counter()
    store.put("rounds/1/global.ckks", payload)
    uploaded = time.perf_counter()
    assert store.get("rounds/1/global.ckks") == payload
    downloaded = time.perf_counter()

    starts = server.requests("POST", r"^/upload/drive/v2/files$")
    assert [r.query["uploadType"] for r in starts] == ["resumable"]
    assert starts[0].headers["x-upload-content-length"] == str(len(payload))
    chunks = server.requests("PUT", r"^/upload/session/")
    assert [r.headers["content-range"] for r in chunks] == [
        f"bytes 0-{8 * MIB - 1}/20000000",
        f"bytes {8 * MIB}-{16 * MIB - 1}/20000000",
        f"bytes {16 * MIB}-19999999/20000000",
    ]
    assert [r.status for r in chunks] == [308, 308, 200]
    downloads = [r for r in server.requests("GET", r"^/drive/v2/files/[^/]+$") if r.query.get("alt") == "media"]
    assert [r.headers["range"] for r in downloads] == [
        f"bytes=0-{8 * MIB - 1}",
        f"bytes={8 * MIB}-{16 * MIB - 1}",
        f"bytes={16 * MIB}-{24 * MIB - 1}",
    ]
    with capsys.disabled():
        print(
            f"\n20 MB Drive round trip: {len(chunks)} chunks, put {uploaded - started:.2f}s, "
            f"get {downloaded - uploaded:.2f}s"
        )


@pytest.mark.parametrize(
    ("status", "reason"), [(500, "backendError"), (503, "backendError"), (429, "rateLimitExceeded"),
                           (403, "userRateLimitExceeded")]
)  # fmt: skip
def test_drive_store_retries_transient_errors(server: DriveServer, store: DriveStore, status: int, reason: str) -> None:
    store.put("model.json", b"{}")
    server.inject(status, method="GET", path=r"^/drive/v2/files$", reason=reason)
    assert store.get("model.json") == b"{}"
    server.inject(status, method="POST", path=r"^/upload/", reason=reason)
    store.put("updates/1/h1.ckks", b"update")
    assert store.get("updates/1/h1.ckks") == b"update"
    assert [r.status for r in server.request_log].count(status) == 2


def test_drive_store_resumes_upload_after_failed_chunk(server: DriveServer, store: DriveStore) -> None:
    payload = os.urandom(3 * MIB)
    store = DriveStore(store._drive, store.folder_id, identity=store._identity, chunk_size=MIB, backoff_base=0.01)
    server.inject(500, method="PUT", path=r"^/upload/session/", after=1)
    store.put("updates/1/h1.ckks", payload)
    assert store.get("updates/1/h1.ckks") == payload
    chunks = server.requests("PUT", r"^/upload/session/")
    # the failed second chunk is followed by a status query, then the upload resumes where Drive stopped
    assert [r.headers.get("content-range") for r in chunks] == [
        f"bytes 0-{MIB - 1}/{3 * MIB}",
        f"bytes {MIB}-{2 * MIB - 1}/{3 * MIB}",
        f"bytes */{3 * MIB}",
        f"bytes {MIB}-{2 * MIB - 1}/{3 * MIB}",
        f"bytes {2 * MIB}-{3 * MIB - 1}/{3 * MIB}",
    ]
    assert len(server.requests("POST", r"^/upload/")) == 1


def test_drive_store_gives_up_after_bounded_retries(server: DriveServer, store: DriveStore) -> None:
    server.inject(500, method="GET", path=r"^/drive/v2/files$", times=100)
    with pytest.raises(StoreError, match="kept failing") as caught:
        store.exists("model.json")
    assert not isinstance(caught.value, StoreAccessError)
    assert len(server.requests("GET", r"^/drive/v2/files$")) == 5


def test_drive_store_does_not_retry_client_errors(server: DriveServer, store: DriveStore) -> None:
    server.inject(400, method="GET", path=r"^/drive/v2/files$", reason="invalid")
    with pytest.raises(StoreError, match="refused"):
        store.exists("model.json")
    assert len(server.requests("GET", r"^/drive/v2/files$")) == 1


def test_drive_store_refreshes_revoked_token(server: DriveServer, store: DriveStore) -> None:
    store.put("model.json", b"v1")
    grants = len(server.token_grants)
    server.revoke_tokens()
    assert store.get("model.json") == b"v1"
    assert len(server.token_grants) == grants + 1
    assert any(r.status == 401 for r in server.request_log)


def test_drive_store_refreshes_token_revoked_in_mid_upload(server: DriveServer, store: DriveStore) -> None:
    payload = os.urandom(3 * MIB)
    store = DriveStore(store._drive, store.folder_id, identity=store._identity, chunk_size=MIB, backoff_base=0.01)
    server.inject(method="PUT", path=r"^/upload/session/", after=1, revoke=True)
    store.put("updates/1/h1.ckks", payload)
    assert store.get("updates/1/h1.ckks") == payload
    statuses = [r.status for r in server.requests("PUT", r"^/upload/session/")]
    assert statuses == [308, 401, 308, 200]  # the chunk is resent whole after the new token
    assert len(server.token_grants) == 2


def test_drive_store_retries_slow_response(server: DriveServer, tmp_path: Path, folder: str) -> None:
    settings = drive_settings(server, tmp_path, folder)
    store = open_drive_store(folder, settings=settings, backoff_base=0.01, http_timeout=0.3)
    store.put("model.json", b"{}")
    server.inject(method="GET", path=r"^/drive/v2/files$", delay=0.6)
    assert store.get("model.json") == b"{}"


def test_open_drive_store_missing_folder_names_the_id(server: DriveServer, tmp_path: Path) -> None:
    with pytest.raises(StoreAccessError) as caught:
        open_test_store(server, tmp_path, "0BmissingFolderId")
    message = str(caught.value)
    assert "0BmissingFolderId not found" in message
    assert "MEDHEAVEN_STORE=drive://0BmissingFolderId" in message
    assert "medheaven-test@medheaven-test.iam.gserviceaccount.com" in message


def test_open_drive_store_rejects_a_file_id(server: DriveServer, tmp_path: Path, folder: str) -> None:
    file_id = server.add_file("notes.txt", b"x", parent=folder).id
    with pytest.raises(ConfigurationError, match="not a folder"):
        open_test_store(server, tmp_path, file_id)


def test_open_drive_store_rejects_malformed_folder_id(server: DriveServer, tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="folder id"):
        open_test_store(server, tmp_path, "x' or title contains '")


def test_open_drive_store_unknown_service_account_names_it(server: DriveServer, tmp_path: Path, folder: str) -> None:
    stranger = make_service_account("stranger@elsewhere.iam.gserviceaccount.com")
    key_file = stranger.write(tmp_path / "stranger.json", server.token_uri)  # never registered with the server
    settings = drive_settings(server, tmp_path, folder, drive_service_account=key_file)
    with pytest.raises(StoreAccessError) as caught:
        open_drive_store(folder, settings=settings, backoff_base=0.01)
    message = str(caught.value)
    assert "stranger@elsewhere.iam.gserviceaccount.com" in message
    assert str(key_file) in message
    assert len(server.requests("POST", "^/token$")) == 1  # a rejected credential is not retried


def test_drive_store_lists_a_shared_drive_folder_through_its_drive(server: DriveServer, tmp_path: Path) -> None:
    folder = server.create_folder("federation", shared_drive="0AsharedDrive")
    store = open_test_store(server, tmp_path, folder)
    store.put("rounds/0/global.ckks", b"g")
    assert store.list() == ["rounds/0/global.ckks"]
    listings = server.requests("GET", r"^/drive/v2/files$")
    assert listings
    assert all(r.query.get("corpora") == "drive" and r.query.get("driveId") == "0AsharedDrive" for r in listings)


def test_drive_store_quota_error_points_at_shared_drives(server: DriveServer, store: DriveStore) -> None:
    server.inject(403, method="POST", path="^/upload/", reason="storageQuotaExceeded")
    with pytest.raises(StoreAccessError, match=r"quota exceeded.*shared drive"):
        store.put("model.json", b"{}")


def test_drive_store_read_only_folder_says_to_share_as_editor(server: DriveServer, store: DriveStore) -> None:
    server.read_only.add(store.folder_id)
    with pytest.raises(StoreAccessError, match=f"no access to Drive folder {store.folder_id}.*as Editor"):
        store.put("model.json", b"{}")


def test_open_drive_store_token_uri_setting_overrides_key_file(
    server: DriveServer, tmp_path: Path, folder: str
) -> None:
    key_file = tmp_path / "google.json"
    key_file.write_text(
        json.dumps(json.loads(server.service_account_file(tmp_path / "sa.json").read_text())
                   | {"token_uri": "https://oauth2.googleapis.com/token"})
    )  # fmt: skip
    store = open_test_store(server, tmp_path, folder, drive_service_account=key_file, drive_token_uri=server.token_uri)
    store.put("model.json", b"{}")
    assert server.token_grants == ["jwt:medheaven-test@medheaven-test.iam.gserviceaccount.com"]


def test_open_store_drive_url_uses_settings(server: DriveServer, tmp_path: Path, folder: str) -> None:
    store = open_store(f"drive://{folder}", settings=drive_settings(server, tmp_path, folder))
    assert isinstance(store, DriveStore)
    assert store.location == f"drive://{folder}"


def test_open_drive_store_with_saved_user_credentials(server: DriveServer, tmp_path: Path, folder: str) -> None:
    credentials = tmp_path / "drive-credentials.json"
    credentials.write_text(json.dumps({
        "_module": "oauth2client.client", "_class": "OAuth2Credentials", "access_token": None,
        "client_id": "client.apps.googleusercontent.com", "client_secret": "secret",
        "refresh_token": server.issue_refresh_token(), "token_expiry": None, "token_uri": server.token_uri,
        "user_agent": None, "revoke_uri": None, "scopes": [DRIVE_SCOPE], "invalid": False,
    }))  # fmt: skip
    settings_file = tmp_path / "settings.yaml"
    settings_file.write_text(
        f"client_config_backend: file\nclient_config_file: {tmp_path / 'absent-client-secrets.json'}\n"
        f"save_credentials: true\nsave_credentials_backend: file\nsave_credentials_file: {credentials}\n"
        f"get_refresh_token: true\noauth_scope: [{DRIVE_SCOPE}]\n"
    )
    store = open_test_store(server, tmp_path, folder, drive_service_account=None, drive_oauth_settings=settings_file)
    store.put("model.json", b"{}")
    assert store.get("model.json") == b"{}"
    assert [grant.split(":")[0] for grant in server.token_grants] == ["refresh"]
    assert json.loads(credentials.read_text())["access_token"]  # the refreshed token was saved back


def test_open_drive_store_without_credentials_says_what_to_set(tmp_path: Path) -> None:
    settings = Settings(store="drive://abc", drive_service_account=None, drive_oauth_settings=None)
    with pytest.raises(ConfigurationError, match="MEDHEAVEN_DRIVE_SERVICE_ACCOUNT"):
        open_drive_store("abc", settings=settings)


def test_open_drive_store_damaged_key_file_is_a_configuration_error(tmp_path: Path) -> None:
    key_file = tmp_path / "sa.json"
    info = make_service_account().key_file_dict("http://127.0.0.1:9/token") | {"private_key": "not a key"}
    key_file.write_text(json.dumps(info))
    settings = Settings(store="drive://abc", drive_service_account=key_file, drive_oauth_settings=None)
    with pytest.raises(ConfigurationError, match="private_key"):
        open_drive_store("abc", settings=settings)


def test_drive_store_lists_more_files_than_one_page(server: DriveServer, store: DriveStore) -> None:
    server.page_size = 5
    keys = [f"updates/1/h{i:02d}.ckks" for i in range(12)]
    for key in keys:
        store.put(key, key.encode())
    before = len(server.requests("GET", r"^/drive/v2/files$"))
    assert store.list() == keys
    listings = server.requests("GET", r"^/drive/v2/files$")[before:]
    # one page each for the top folder and updates/, three for the 12 files of updates/1
    assert [r.query.get("pageToken") for r in listings] == [None, None, None, "5", "10"]


def test_drive_store_copes_with_duplicate_titles(
    server: DriveServer, store: DriveStore, caplog: pytest.LogCaptureFixture
) -> None:
    store.put("rounds/1/global.ckks", b"original")
    rounds_1 = server.files[_only_file(server).parents[0]]
    server.add_file("global.ckks", b"older duplicate", parent=rounds_1.id)
    server.add_file("global.ckks", b"newest duplicate", parent=rounds_1.id)
    with caplog.at_level(logging.WARNING, logger="medheaven.store.drive"):
        assert store.get("rounds/1/global.ckks") == b"newest duplicate"
        store.put("rounds/1/global.ckks", b"replacement")
    assert "3 files" in caplog.text
    remaining = server.children(rounds_1.id)
    assert [(f.title, f.content) for f in remaining] == [("global.ckks", b"replacement")]
    assert len(server.children(rounds_1.id, trashed=True)) == 2  # trashed, so still recoverable
    with pytest.raises(StoreConflictError):
        store.create("rounds/1/global.ckks", b"again")


def test_drive_store_create_loses_to_a_concurrent_creator(
    server: DriveServer, store: DriveStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.put("rounds/2/placeholder", b"")  # makes the folder
    rounds_2 = _only_file(server).parents[0]
    original_upload = store._upload

    def racing_upload(*args: Any, **kwargs: Any) -> Any:
        # another writer's insert lands between our existence check and our upload
        server.add_file("manifest.json", b"theirs", parent=rounds_2)
        return original_upload(*args, **kwargs)

    with monkeypatch.context() as patch, pytest.raises(StoreConflictError, match="concurrently"):
        patch.setattr(store, "_upload", racing_upload)
        store.create("rounds/2/manifest.json", b"ours")
    assert store.get("rounds/2/manifest.json") == b"theirs"
    assert [f.content for f in server.children(rounds_2) if f.title == "manifest.json"] == [b"theirs"]


def test_drive_store_recreates_folder_deleted_behind_its_back(server: DriveServer, store: DriveStore) -> None:
    store.put("updates/1/h1.ckks", b"one")
    (updates,) = [f for f in server.children(store.folder_id) if f.title == "updates"]
    server._delete_tree(updates.id)  # someone removed it in the Drive web UI; the store's folder cache is stale
    store.put("updates/1/h2.ckks", b"two")
    assert store.list() == ["updates/1/h2.ckks"]


def test_drive_store_concurrent_writers_share_one_folder(server: DriveServer, store: DriveStore) -> None:
    # two stores with separate folder caches stand for two processes, each with three threads
    other = DriveStore(store._drive, store.folder_id, identity=store._identity, backoff_base=0.01)
    keys = [f"updates/3/h{i}.ckks" for i in range(6)]
    with ThreadPoolExecutor(max_workers=6) as pool:
        list(pool.map(lambda i: (store, other)[i % 2].put(keys[i], keys[i].encode()), range(6)))
    assert store.list("updates/3") == other.list("updates/3") == keys
    assert all(other.get(key) == key.encode() for key in keys)
    live_folders = [f for f in server.files.values() if f.is_folder and not f.trashed and f.title in ("updates", "3")]
    assert sorted(f.title for f in live_folders) == ["3", "updates"]


def test_drive_store_folder_race_settles_on_the_oldest_folder(
    server: DriveServer, store: DriveStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    theirs = server.create_folder("rounds", parent=store.folder_id)
    real_children = store._children
    calls = 0

    def children_missing_theirs_once(folder_id: str, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1  # the first folder lookup happens before the other process's folder appears
        return [] if calls == 1 else real_children(folder_id, **kwargs)

    monkeypatch.setattr(store, "_children", children_missing_theirs_once)
    store.put("rounds/1.ckks", b"x")
    (ours,) = [f for f in server.children(store.folder_id, trashed=True) if f.title == "rounds"]
    assert ours.id != theirs
    assert [f.title for f in server.children(theirs)] == ["1.ckks"]


def test_drive_store_keys_are_case_sensitive(store: DriveStore) -> None:
    store.put("Model.json", b"upper")
    store.put("model.json", b"lower")  # Drive's title search ignores case; the store must not
    assert store.get("Model.json") == b"upper"
    assert store.get("model.json") == b"lower"
    assert store.list() == ["Model.json", "model.json"]


def test_drive_store_reuses_folders(server: DriveServer, store: DriveStore) -> None:
    store.put("rounds/1/global.ckks", b"a")
    store.put("rounds/1/manifest.json", b"b")
    store.put("rounds/2/global.ckks", b"c")
    folders = [f.title for f in server.files.values() if f.is_folder and f.id != server.root_folder_id]
    assert sorted(folders) == ["1", "2", "federation", "rounds"]
    fresh = DriveStore(store._drive, store.folder_id, identity=store._identity)
    assert fresh.list("rounds/1") == ["rounds/1/global.ckks", "rounds/1/manifest.json"]


def test_drive_store_reads_do_not_create_folders(server: DriveServer, store: DriveStore) -> None:
    before = len(server.files)
    assert not store.exists("rounds/7/global.ckks")
    assert store.list("rounds") == []
    store.delete("rounds/7/global.ckks")
    assert len(server.files) == before
    assert not server.requests("POST", "^/drive/")


def test_drive_store_stores_md5_that_matches(server: DriveServer, store: DriveStore) -> None:
    store.put("context.public", b"public context")
    stored = _only_file(server)
    assert stored.content == b"public context"
    assert stored.mime_type == "application/octet-stream"
    assert hashlib.md5(stored.content, usedforsecurity=False).hexdigest() == server._resource(stored)["md5Checksum"]


def test_drive_test_double_accepts_multipart_and_media_uploads(server: DriveServer, store: DriveStore) -> None:
    from googleapiclient.http import MediaInMemoryUpload

    files = store._auth.service.files()
    body = {"title": "multi.bin", "parents": [{"id": store.folder_id}]}
    payload = bytes(range(256)) + b"\r\n--"
    media = MediaInMemoryUpload(payload, "application/octet-stream", resumable=False)
    created = files.insert(body=body, media_body=media).execute(http=store._http())
    assert server.requests("POST", "^/upload/")[-1].query["uploadType"] == "multipart"
    assert server.files[created["id"]].content == payload
    assert store.get("multi.bin") == payload
    media = MediaInMemoryUpload(b"replaced", "application/octet-stream", resumable=False)
    files.update(fileId=created["id"], media_body=media).execute(http=store._http())
    assert server.requests("PUT", "^/upload/")[-1].query["uploadType"] == "media"
    assert store.get("multi.bin") == b"replaced"


def _only_file(server: DriveServer) -> Any:
    (stored,) = [f for f in server.files.values() if not f.is_folder and not f.trashed]
    return stored

"""The Store contract: the same tests run against every backend (a local folder, and Drive through its test double)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from drive_server import DriveServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from medheaven.errors import StoreConflictError, StoreError, StoreKeyNotFoundError
from medheaven.settings import Settings
from medheaven.store import LocalStore, Store
from medheaven.store.drive import open_drive_store

# folder names never end in ".bin", so a generated file key can never also be a folder of another example
FOLDER_PART = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_-]{0,11}", fullmatch=True)
FILE_PART = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,11}", fullmatch=True).map(lambda title: title + ".bin")


def _drive_store(server: DriveServer, tmp_path: Path) -> Store:
    folder = server.create_folder("federation")
    drive_settings = Settings(
        store=f"drive://{folder}",
        drive_service_account=server.service_account_file(tmp_path / "service-account.json"),
        drive_oauth_settings=None,
        drive_api_root=f"{server.url}/",
        drive_token_uri=None,
    )
    return open_drive_store(folder, settings=drive_settings, backoff_base=0.01)


@pytest.fixture(params=["local", "drive"])
def store(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Store]:
    if request.param == "local":
        yield LocalStore(tmp_path / "store")
        return
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")  # httplib2 honours proxy variables
    with DriveServer() as server:
        yield _drive_store(server, tmp_path)


def test_store_put_get_round_trip(store: Store) -> None:
    store.put("run-1/rounds/0/global.ckks", b"ciphertext")
    assert store.get("run-1/rounds/0/global.ckks") == b"ciphertext"


def test_store_put_replaces(store: Store) -> None:
    store.put("updates/1/h1.ckks", b"first")
    store.put("updates/1/h1.ckks", b"second, longer")
    assert store.get("updates/1/h1.ckks") == b"second, longer"
    assert store.list("updates") == ["updates/1/h1.ckks"]


def test_store_create_writes_new_key(store: Store) -> None:
    store.create("rounds/1/manifest.json", b"{}")
    assert store.get("rounds/1/manifest.json") == b"{}"


def test_store_create_refuses_existing_key_and_leaves_it_untouched(store: Store) -> None:
    store.create("rounds/1/manifest.json", b"committed")
    with pytest.raises(StoreConflictError):
        store.create("rounds/1/manifest.json", b"intruder")
    assert store.get("rounds/1/manifest.json") == b"committed"
    assert store.list("rounds") == ["rounds/1/manifest.json"]


def test_store_get_missing_raises_key_not_found(store: Store) -> None:
    with pytest.raises(StoreKeyNotFoundError):
        store.get("rounds/9/global.ckks")
    store.put("rounds/1/global.ckks", b"x")
    with pytest.raises(StoreKeyNotFoundError):
        store.get("rounds/1/manifest.json")


def test_store_exists_reports_files_only(store: Store) -> None:
    assert not store.exists("context.public")
    store.put("context.public", b"ctx")
    store.put("rounds/0/global.ckks", b"g")
    assert store.exists("context.public")
    assert store.exists("rounds/0/global.ckks")
    assert not store.exists("rounds/0")  # a folder is not a key
    assert not store.exists("rounds/1/global.ckks")


def test_store_list_returns_nested_keys_sorted_under_prefix(store: Store) -> None:
    keys = ["updates/2/h2.ckks", "rounds/10/global.ckks", "rounds/0/global.ckks", "model.json", "rounds/2/x.json"]
    for key in keys:
        store.put(key, key.encode())
    assert store.list() == sorted(keys)
    assert store.list("rounds") == ["rounds/0/global.ckks", "rounds/10/global.ckks", "rounds/2/x.json"]
    assert store.list("rounds/10") == ["rounds/10/global.ckks"]
    assert store.list("nothing/here") == []
    assert store.list("model.json") == []  # a prefix names a folder, not a file


def test_store_delete_is_idempotent(store: Store) -> None:
    store.put("updates/1/h1.ckks", b"x")
    store.delete("updates/1/h1.ckks")
    store.delete("updates/1/h1.ckks")
    store.delete("never/was.ckks")
    assert not store.exists("updates/1/h1.ckks")
    assert store.list() == []


def test_store_keeps_binary_payload_with_every_byte_value(store: Store) -> None:
    payload = bytes(range(256)) * 64 + b"\r\n\x00\xff--boundary--\r\n"
    store.put("blob.bin", payload)
    assert store.get("blob.bin") == payload


def test_store_keeps_empty_payload(store: Store) -> None:
    store.put("empty", b"")
    assert store.get("empty") == b""
    store.create("empty-too", b"")
    assert store.get("empty-too") == b""
    store.put("empty", b"now something")
    store.put("empty", b"")
    assert store.get("empty") == b""


def test_store_json_helpers_round_trip(store: Store) -> None:
    store.put_json("hospitals.json", {"h1": {"key": "abc"}, "n": [1, 2.5]})
    assert store.get_json("hospitals.json") == {"h1": {"key": "abc"}, "n": [1, 2.5]}


@pytest.mark.parametrize(
    "key", ["", "/abs", "a/../b", "a//b", ".hidden", "a/", "a b", "rounds/./x", "x" * 129, "ü.json", "a\\b"]
)
def test_store_rejects_invalid_keys(store: Store, key: str) -> None:
    with pytest.raises(StoreError, match="invalid store key"):
        store.put(key, b"x")
    with pytest.raises(StoreError, match="invalid store key"):
        store.create(key, b"x")
    with pytest.raises(StoreError, match="invalid store key"):
        store.get(key)
    with pytest.raises(StoreError, match="invalid store key"):
        store.exists(key)
    with pytest.raises(StoreError, match="invalid store key"):
        store.delete(key)
    assert store.list() == []


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(folders=st.lists(FOLDER_PART, max_size=2), title=FILE_PART, payload=st.binary(max_size=2048))
def test_store_round_trips_any_valid_key_and_payload(
    store: Store, folders: list[str], title: str, payload: bytes
) -> None:
    key = "/".join([*folders, title])
    store.put(key, payload)
    assert store.get(key) == payload
    assert key in store.list()
    store.delete(key)
    assert not store.exists(key)


def test_store_put_file_streams_a_file_and_replaces(store: Store, tmp_path: Path) -> None:
    """``put_file`` (the finalise's streamed write) stores the whole file, wherever its position was left."""
    payload = bytes(range(256)) * 5000  # 1.2 MiB: more than one of LocalStore's 1 MiB copy pieces
    store.put("rounds/1/global.ckks", b"an earlier, uncommitted result")
    with (tmp_path / "spool").open("w+b") as handle:
        handle.write(payload)  # left at its end, as result_spool leaves it
        store.put_file("rounds/1/global.ckks", handle)
    assert store.get("rounds/1/global.ckks") == payload
    assert store.list("rounds") == ["rounds/1/global.ckks"]

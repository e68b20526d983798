"""Shared fixtures: a dedicated Redis database (/15, flushed before and after), the shared data folder."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

REDIS_HOST = "127.0.0.1"
# Parallel checkouts (several developers on one machine) point their suites at separate redis-servers.
REDIS_PORT = int(os.environ.get("MEDHEAVEN_TEST_REDIS_PORT", "6379"))
REDIS_DB = 15
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ["NO_PROXY"] = "127.0.0.1,localhost"


def _flush() -> None:
    import redis

    redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=REDIS_DB, socket_timeout=5).flushdb()


@pytest.fixture
def redis_url() -> Iterator[str]:
    """Real Redis on 127.0.0.1, database 15 only, empty at the start and at the end of each test."""
    import redis

    try:
        redis.Redis(host=REDIS_HOST, port=REDIS_PORT, socket_timeout=2).ping()
    except redis.exceptions.ConnectionError as exc:  # the test command starts Redis; this is a real failure
        pytest.fail(f"Redis is not reachable on {REDIS_HOST}:{REDIS_PORT} ({exc}); run ./scripts/test.sh")
    _flush()
    yield f"redis://{REDIS_HOST}:{REDIS_PORT}/{REDIS_DB}"
    _flush()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} is absent: the real-data tests read ../shared/data beside the checkout")
    return SHARED_DATA

"""Helpers for the dashboard tests: Flower started as the runbook starts it (``celery -A workers.dashboard flower``
with basic auth on 127.0.0.1), and HTTP requests with or without its login."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from fault_support import free_port, wait_for

USER, PASSWORD = "operator", "s3cret-for-tests"


def http(url: str, *, auth: tuple[str, str] | None = (USER, PASSWORD), method: str = "GET") -> tuple[int, str]:
    """Status and body of one request; ``auth=None`` sends no credentials."""
    request = urllib.request.Request(url, method=method)  # noqa: S310 - the tests build http://127.0.0.1 URLs only
    if auth is not None:
        request.add_header("Authorization", "Basic " + base64.b64encode(":".join(auth).encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=15) as response:  # noqa: S310 - 127.0.0.1 only
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")


@contextmanager
def flower(
    broker_url: str, hospitals: tuple[str, ...], log_path: Path, *, env: dict[str, str] | None = None
) -> Iterator[Callable[[], str]]:
    """Flower started in the background (so it starts while workers do); the yielded call waits until it answers
    /healthcheck and returns its base URL."""
    port = free_port()
    full_env = {
        **os.environ,
        "MEDHEAVEN_BROKER_URL": broker_url,
        "MEDHEAVEN_HOSPITALS": ",".join(hospitals),
        **(env or {}),
    }
    command = [
        sys.executable, "-m", "celery", "-A", "workers.dashboard", "flower",
        "--address=127.0.0.1", f"--port={port}", f"--basic-auth={USER}:{PASSWORD}",
    ]  # fmt: skip
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, env=full_env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        assert process.poll() is None, f"flower exited: {log_path.read_text()[-2000:]}"
        try:
            return http(f"{base}/healthcheck", auth=None)[0] == 200
        except (urllib.error.URLError, ConnectionError):
            return False

    def ready() -> str:
        wait_for(healthy, timeout=60, what="flower to answer /healthcheck", interval=0.2)
        return base

    try:
        yield ready
    finally:
        process.terminate()
        process.wait(timeout=20)

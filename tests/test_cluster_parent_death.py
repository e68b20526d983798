"""A worker that ``ProcessCluster`` starts dies with the process that started it, even when that process is killed.

Otherwise a killed benchmark or test leaves its Celery workers running; on the same broker they take the next run's
tasks with another run's keys, and that run's rounds fail on "noise" uploads.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from contextlib import suppress
from pathlib import Path

import psutil
import pytest
from fault_support import redis_server, signal_processes, wait_for

from medheaven.settings import Settings
from workers.app import create_app

HARNESS = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from workers.cluster import ProcessCluster

    broker, store, logs = sys.argv[1:4]
    cluster = ProcessCluster(
        base_env={"MEDHEAVEN_BROKER_URL": broker, "MEDHEAVEN_STORE": store}, log_dir=Path(logs)
    )
    worker = cluster.start_aggregator(name="orphan-check")
    print(worker.process.pid, flush=True)
    time.sleep(600)
    """
)


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signal is Linux's prctl(2)")
def test_worker_exits_when_the_process_that_started_it_is_killed(tmp_path: Path) -> None:
    store = (tmp_path / "store").as_uri()
    with redis_server(tmp_path / "redis") as redis:
        harness = subprocess.Popen(
            [sys.executable, "-c", HARNESS, redis.url(0), store, str(tmp_path / "logs")],
            stdout=subprocess.PIPE,
            cwd=Path(__file__).resolve().parents[1],
        )
        worker_pid = 0
        try:
            assert harness.stdout is not None
            worker_pid = int(harness.stdout.readline())
            app = create_app(Settings(broker_url=redis.url(0), store=store))
            try:  # the worker is up (its signal handlers installed) before its parent dies
                wait_for(
                    lambda: any("orphan-check@" in name for r in app.control.ping(timeout=1.0) or [] for name in r),
                    timeout=120,
                    what="the harness's worker to answer a ping",
                )
            finally:
                app.close()
            harness.send_signal(signal.SIGKILL)
            harness.wait(timeout=30)
            wait_for(lambda: _gone(worker_pid), timeout=60, what=f"worker {worker_pid} to exit after its parent died")
        finally:
            if harness.poll() is None:
                harness.kill()
                harness.wait(timeout=30)
            if worker_pid and not _gone(worker_pid):  # a failed check must not leave the orphan behind
                with suppress(psutil.NoSuchProcess):
                    orphan = psutil.Process(worker_pid)
                    signal_processes([orphan, *orphan.children(recursive=True)], signal.SIGKILL)
            if harness.stdout is not None:
                harness.stdout.close()

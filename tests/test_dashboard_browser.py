"""The dashboard as an operator sees it: Debian's headless Chromium, driven by playwright and started by this test,
against a real Flower (``celery -A workers.dashboard flower``) over a real federation on real Redis.

One run, two rounds, quorum 2 of 2. The pool process making h1's initial model is SIGKILLed: the message goes back
to the queue and h1 runs it again; round 1 commits. In round 2 h2's whole worker (main and pool) is
SIGKILLed mid-training; the lost-worker check (``workers.task_state``, what the coordinator's detection calls) ends
its task in FAILURE, so the round fails its quorum at once. Then the browser reads the pages: the failed round's
finalise is FAILURE with its reason, the lost task FAILURE with "worker lost", the redelivered one shows Retries 1;
names carry run, round and hospital; the Broker page still lists the dead hospital's queue with the message its
worker was holding; /metrics needs the login and is off; a pool grow of the aggregator changes nothing; and no text
of any page or API answer lets an attacker recover a hospital's validation-set size (the recovery attempt of
tests/test_release.py). Screenshots of the pages go to ``$MEDHEAVEN_ARTEFACTS/dashboard`` (or the test's tmp dir).
"""

from __future__ import annotations

import ast
import json
import os
import re
import signal
from pathlib import Path
from typing import Any

import psutil
import pytest
from fault_support import BackgroundRun, federation, freeze, kill_family, wait_for
from federation_support import small_simulation
from flower_support import PASSWORD, USER, flower, http
from test_release import COUNT_RATIOS, SEARCH, _metric_dicts, consistent_sizes

from coordinator.queues import queue_depths
from medheaven.data import FeatureLayout, prepare_hospital_data
from medheaven.errors import QuorumNotReachedError
from medheaven.federated.nodes import schema_reader
from medheaven.federated.release import RELEASE_DECIMALS
from medheaven.settings import Settings
from workers.config import hospital_queue
from workers.task_state import WORKER_LOST, live_workers, lost_tasks, mark_lost_tasks, mark_worker_lost

pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")
RUN = "dash"
#: a released count ratio as any page prints it: 'accuracy': 0.88 (repr), "accuracy": 0.88 (JSON), HTML-escaped
RATIO_VALUE = re.compile(r"(accuracy|base_rate)(?:'|&#39;|\"|&quot;)\s*:\s*(-?\d+(?:\.\d+)?(?:[eE]-?\d+)?)")


def _playwright() -> Any:
    """Chromium and playwright are required, never optional: a missing one fails the test and says how to fix."""
    if not CHROMIUM.exists():
        pytest.fail(
            f"Debian's Chromium is not at {CHROMIUM}: run `apt-get install -y chromium chromium-driver` "
            "(scripts/test.sh installs it when missing); the dashboard test needs a real browser"
        )
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("playwright is not installed: `pip install -e '.[dev]'` (scripts/test.sh does)")
    return sync_playwright


def _artefacts(tmp_path: Path) -> Path:
    root = Path(os.environ["MEDHEAVEN_ARTEFACTS"]) if os.environ.get("MEDHEAVEN_ARTEFACTS") else tmp_path
    directory = root / "dashboard"
    directory.mkdir(parents=True, exist_ok=True)
    print(f"\ndashboard screenshots: {directory}")  # where the artefacts are, in the test output
    return directory


def _validation_size(simulation: Any, hospital: str) -> int:
    """What the hospital's own node computes: its data file, the run's layout, the settings' validation share."""
    frame = schema_reader("prepared", None)(simulation.data_files[hospital])
    layout = FeatureLayout.from_dict(simulation.layout)
    return prepare_hospital_data(frame, layout, validation_fraction=Settings().validation_fraction).n_val


def _tasks(base: str) -> dict[str, dict[str, Any]]:
    status, body = http(f"{base}/api/tasks")
    assert status == 200, body
    tasks: dict[str, dict[str, Any]] = json.loads(body)
    return tasks


def _by_name(tasks: dict[str, dict[str, Any]], name: str) -> dict[str, Any]:
    found = [dict(t, uuid=uuid) for uuid, t in tasks.items() if t.get("name") == name]
    assert len(found) == 1, (name, sorted(str(t.get("name")) for t in tasks.values()))
    return found[0]


def _hospital_of(task_name: str, hospitals: tuple[str, ...]) -> str | None:
    parts = [p.strip() for p in task_name.split("·")]
    return parts[1] if len(parts) > 1 and parts[1] in hospitals else None


def _assert_nothing_recovers_a_size(
    texts: dict[str, str], results: list[tuple[str | None, Any]], hospitals: tuple[str, ...], sizes: dict[str, int]
) -> None:
    """Every count ratio printed anywhere is rounded to its release precision; per hospital, the attack of
    tests/test_release.py on everything attributed to it leaves every size from 100 up consistent; no result
    carries a row count."""
    for where, text in texts.items():
        assert "examples" not in text, f"{where} shows a row count ('examples')"
        for key, raw in RATIO_VALUE.findall(text):
            value = float(raw)
            assert value == round(value, RELEASE_DECIMALS[key]), f"{where} shows {key}={raw} unrounded"
    for hospital in hospitals:
        # its own tasks' results, and what the aggregator's results attribute to it (a "hospital" field or key)
        metrics = [
            m for owner, r in results if owner in {hospital, None} for m in _metric_dicts(r, hospital, owner)
        ]  # fmt: skip
        values = [float(m[name]) for m in metrics for name in COUNT_RATIOS if name in m]
        assert len(values) >= 2, f"{hospital}: the attacker found only {values}"  # h2 trained one round
        recovered = consistent_sizes(values)
        assert sizes[hospital] in recovered, (hospital, sizes[hospital], recovered[:5])
        assert set(range(100, SEARCH.stop)) <= set(recovered), f"{hospital}: sizes narrowed to {recovered[:10]}"
        flat = json.dumps([r for owner, r in results if owner == hospital])
        assert not re.search(rf"(?<![\w.]){sizes[hospital]}(?![\w.])", flat), f"{hospital}'s size is in a result"


def test_dashboard_in_chromium_shows_failures_redeliveries_and_no_sample_counts(tmp_path: Path, redis_url: str) -> None:
    sync_playwright = _playwright()
    artefacts = _artefacts(tmp_path)
    simulation = small_simulation(tmp_path / "sim", hospitals=2, rows=1500)
    h1, h2 = simulation.hospitals
    sizes = {h: _validation_size(simulation, h) for h in simulation.hospitals}

    with (
        flower(redis_url, simulation.hospitals, tmp_path / "flower.log") as flower_ready,
        federation(simulation, redis_url, tmp_path / "logs") as fed,
    ):
        base = flower_ready()  # before the run starts, so Flower sees every task's events
        config = fed.config(RUN, rounds=2, min_hospitals=2, round_timeout=120)
        run = BackgroundRun(fed.coordinator(config))

        def training(round_number: int, hospital: str) -> dict[str, Any] | None:
            state, info = fed.train_state(RUN, round_number, hospital)
            return info if state == "STARTED" and isinstance(info, dict) else None

        # round 0: the pool process making h1's initial model dies; late ack + reject on worker lost give the
        # message back and h1's new pool process runs it again (the slow part, importing TensorFlow, is in both)
        h1_worker = next(name for name in live_workers(fed.app) if name.startswith(f"{h1}-0@"))

        def making_initial_model() -> dict[str, Any] | None:
            active = fed.app.control.inspect(destination=[h1_worker], timeout=0.5).active() or {}
            return next((t for t in active.get(h1_worker, []) if "init_model" in str(t["name"])), None)

        running = wait_for(making_initial_model, timeout=120, what="h1's initial model task", interval=0.05)
        victim = psutil.Process(int(running["worker_pid"]))
        victim.send_signal(signal.SIGSTOP)  # frozen first, so that the kill is certainly mid-task
        still = making_initial_model()
        assert still is not None and still["id"] == running["id"], "the initial model was made before the kill"
        victim.send_signal(signal.SIGKILL)
        victim.wait(timeout=30)
        redelivered_id = str(running["id"])

        # round 2: h2's whole worker dies mid-training; nothing inside it can report that, the lost-worker check can
        wait_for(lambda: training(2, h2), timeout=120, what="h2's round-2 training", interval=0.02)
        lost_id = fed.dispatch(RUN, 2)[h2]["task"]
        freeze(fed.worker(f"{h2}-0"))  # frozen first, so that the kill is certainly mid-task
        assert fed.train_state(RUN, 2, h2)[0] == "STARTED", "h2's training finished before the kill"
        kill_family(fed.worker(f"{h2}-0"))
        round_2 = [lost_id, fed.dispatch(RUN, 2)[h1]["task"]]
        lost = lost_tasks(fed.app, round_2, live=live_workers(fed.app))
        assert [t.task_id for t in lost] == [lost_id] and lost[0].worker.startswith(f"{h2}-0@"), lost
        marked = mark_lost_tasks(fed.app, round_2, live=live_workers(fed.app), reason="it stopped answering pings")
        assert [t.task_id for t in marked] == [lost_id]
        assert not mark_worker_lost(fed.app, lost[0], reason="again"), "a finished task was marked twice"
        with pytest.raises(QuorumNotReachedError, match="round 2"):
            run.result(timeout=120)
        assert fed.task_state(lost_id)[0] == "FAILURE" and WORKER_LOST in str(fed.task_state(lost_id)[1])

        # `medheaven-coordinator status --queues`: the dead hospital's queue, its stranded message, no consumer
        depths = {d.queue: d for d in queue_depths(fed.app, list(simulation.hospitals))}
        assert (depths[hospital_queue(h2)].unacknowledged, depths[hospital_queue(h2)].stranded) == (1, 1)
        assert depths[hospital_queue(h2)].consumers == 0 and depths[hospital_queue(h1)].consumers == 1

        # the API: names, states, reasons, the redelivery
        names = {
            f"{kind} · {h} · round {r} · {RUN}" for kind in ("train", "fold") for h in (h1, h2) for r in (1, 2)
        } - {f"fold · {h2} · round 2 · {RUN}"}
        wanted = names | {f"finalise · aggregator · round {r} · {RUN}" for r in (1, 2)}

        def all_seen() -> dict[str, dict[str, Any]] | None:
            seen = _tasks(base)
            return seen if wanted <= {t.get("name") for t in seen.values()} else None

        tasks = wait_for(all_seen, timeout=30, what="Flower to have seen every round task")
        failed_round = _by_name(tasks, f"finalise · aggregator · round 2 · {RUN}")
        assert failed_round["state"] == "FAILURE", failed_round
        assert "QuorumNotReachedError" in failed_round["exception"] and "quorum" in failed_round["exception"]
        lost_task = _by_name(tasks, f"train · {h2} · round 2 · {RUN}")
        assert lost_task["state"] == "FAILURE" and WORKER_LOST in lost_task["exception"], lost_task
        assert lost_task["uuid"] == lost_id
        again = _by_name(tasks, f"init_model · {h1} · {RUN}")
        assert (again["uuid"], again["state"], again["retries"]) == (redelivered_id, "SUCCESS", 1), again
        assert _by_name(tasks, f"train · {h1} · round 1 · {RUN}")["retries"] == 0

        # /metrics: login first, then off; /healthcheck says OK only
        assert http(f"{base}/metrics", auth=None)[0] == 401
        assert http(f"{base}/metrics")[0] == 404
        assert http(f"{base}/healthcheck", auth=None) == (200, "OK")
        for path in ("/api/tasks", "/api/workers", "/tasks", "/broker"):
            assert http(f"{base}{path}", auth=None)[0] == 401 and http(f"{base}{path}", auth=(USER, "x"))[0] == 401

        # growing the aggregator's pool: Flower refuses (read-only), the worker refuses, and it still runs 1 process
        aggregator = next(name for name in live_workers(fed.app) if name.startswith("aggregator@"))
        assert http(f"{base}/api/worker/pool/grow/{aggregator}?n=2", method="POST")[0] == 403
        refusal = fed.app.control.pool_grow(2, reply=True, destination=[aggregator], timeout=5)
        assert "refuses remote-control command 'pool_grow'" in refusal[0][aggregator]["error"]
        stats = (fed.app.control.inspect(destination=[aggregator], timeout=5).stats() or {})[aggregator]
        assert (len(stats["pool"]["processes"]), stats["pool"]["max-concurrency"]) == (1, 1)

        texts: dict[str, str] = {"/api/tasks": json.dumps(tasks)}
        for path in ("/api/workers?refresh=1", f"/api/task/result/{failed_round['uuid']}"):
            status, texts[path] = http(f"{base}{path}")
            assert status == 200, (path, texts[path][:300])
        results: list[tuple[str | None, Any]] = [
            (_hospital_of(str(t.get("name", "")), simulation.hospitals), ast.literal_eval(t["result"]))
            for t in tasks.values()
            if t.get("result")
        ]

        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
            try:
                context = browser.new_context(
                    http_credentials={"username": USER, "password": PASSWORD}, viewport={"width": 1400, "height": 900}
                )
                page = context.new_page()

                def visit(path: str, shot: str | None = None, *, wait_text: str | None = None) -> str:
                    response = page.goto(f"{base}{path}")
                    assert response is not None and response.status == 200, (path, response and response.status)
                    if wait_text is not None:
                        page.get_by_text(wait_text).first.wait_for(timeout=15_000)
                    text = page.inner_text("body")
                    if shot is not None:
                        page.screenshot(path=str(artefacts / f"{shot}.png"), full_page=True)
                        (artefacts / f"{shot}.txt").write_text(text)
                    texts[path] = page.content()
                    return text

                listing = visit("/tasks", "tasks", wait_text=f"finalise · aggregator · round 2 · {RUN}")
                for name in wanted:
                    assert name in listing, f"the task list does not show {name!r}"
                assert "FAILURE" in listing and WORKER_LOST in listing
                for task in tasks.values():
                    uuid, name = task["uuid"], str(task.get("name"))
                    shot = {
                        failed_round["uuid"]: "task-failed-round",
                        lost_id: "task-worker-lost",
                        redelivered_id: "task-redelivered",
                    }.get(uuid)
                    if shot is None:  # the other task pages: the same server-rendered HTML, read without a browser
                        status, texts[f"/task/{uuid}"] = http(f"{base}/task/{uuid}")
                        assert status == 200 and name in texts[f"/task/{uuid}"], (uuid, name)
                        continue
                    body = visit(f"/task/{uuid}", shot)
                    assert name in body
                    if uuid == failed_round["uuid"]:
                        assert "FAILURE" in body and "QuorumNotReachedError" in body and "quorum is 2" in body
                    if uuid == lost_id:
                        assert "FAILURE" in body and WORKER_LOST in body and "Terminate" not in body
                    if uuid == redelivered_id:
                        assert re.search(r"Retries\s+1", body) and "worker process was lost" in body, body

                # the killed worker turns Offline (after the short Online blip of the lost-task event)
                def h2_offline() -> str | None:
                    body = visit("/workers")
                    return body if re.search(rf"{h2}-0@\S+\s+Offline", body) else None

                wait_for(h2_offline, timeout=30, what=f"{h2}-0 to show Offline", interval=1.0)
                visit("/workers", "workers")
                for name in (aggregator, next(n for n in live_workers(fed.app) if n.startswith(f"{h1}-0@"))):
                    assert page.get_by_role("link", name=name).count() == 1, f"the workers page does not list {name}"
                visit(f"/worker/{aggregator}", "worker-aggregator", wait_text="Worker pool options")
                # read-only: no Shut down / Restart pool menu, no Grow, Shrink, Autoscale or consumer buttons
                controls = "#worker-group, #worker-pool-grow, #worker-pool-shrink, #worker-pool-autoscale, #worker-add-consumer"
                assert page.locator(controls).count() == 0, "the aggregator's page offers remote-control buttons"
                broker = visit("/broker", "broker", wait_text=hospital_queue(h2))
                row = re.search(rf"{re.escape(hospital_queue(h2))}\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)", broker)
                assert row and row.groups() == ("1", "1", "0", "0"), broker  # messages, unacked, ready, consumers
                assert re.search(rf"{re.escape(hospital_queue(h1))}\s+\d+\s+\d+\s+\d+\s+1\b", broker), broker
            finally:
                browser.close()

    _assert_nothing_recovers_a_size(texts, results, simulation.hospitals, sizes)
    for shot in ("tasks", "task-failed-round", "task-worker-lost", "task-redelivered", "workers", "broker"):
        assert (artefacts / f"{shot}.png").stat().st_size > 10_000, f"{shot}.png is empty"

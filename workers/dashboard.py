"""The app Flower serves: ``celery -A workers.dashboard flower --basic-auth=...``.

* It imports both task modules so the dashboard's process knows every MedHeaven task (``-A workers`` knew only
  ``celery.*``). It is not a worker entry point: hospital and aggregator workers import only their own module, so
  each keeps only its own start-up check.
* Read-only by default: Flower's ``read_only`` mode hides the Shut down, pool, autoscale, consumer, revoke and
  terminate controls and answers their API with 403 (``--read_only=false`` or ``FLOWER_READ_ONLY=false`` brings
  them back; the workers still refuse every command that changes the deployment, ``workers.readonly``).
* The task list shows State, Exception and Retries next to the name (``train · h3 · round 2 · run``), so failures
  and redeliveries are visible without opening a task; the task page shows when a message was rejected as a time,
  not as a raw epoch (``--tasks_columns`` and ``--format_task`` still override both).
* Flower serves ``/metrics`` (Prometheus: worker names with hospital ids, per-hospital task runtime histograms)
  without asking for its login. Here it is off (404) unless ``MEDHEAVEN_DASHBOARD_METRICS=true``, and then behind
  the same login as every page. ``/healthcheck`` stays open: it answers ``OK`` and nothing else.
* The Broker page lists every declared queue (``MEDHEAVEN_HOSPITALS``), dead hospitals' included, with its waiting
  and unacknowledged messages and its live consumers (``workers.queues``); Flower's own page drops the queues no
  live worker consumes as soon as one worker has been inspected, and shows no unacknowledged count on Redis.

Flower has no option for the last two, so this module replaces the handlers in Flower's URL table before Flower
builds its application (the Celery CLI loads ``-A`` before it runs ``flower``); the defaults above are set on
Flower's options the same way, before Flower reads its command line and ``FLOWER_*`` variables.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
from functools import partial
from typing import Any

from workers import aggregator as _aggregator  # noqa: F401 - registers medheaven.aggregate.*
from workers import hospital as _hospital  # noqa: F401 - registers medheaven.hospital.*
from workers.app import app, settings
from workers.queues import ask_live_workers, queue_depths, unacknowledged

__all__ = ["app"]

log = logging.getLogger(__name__)

#: the task list's columns: what happened (state, exception, retries) beside the shadow name that says to whom
TASK_COLUMNS = "name,state,retries,worker,received,runtime,exception"


def show_rejection_time(task: Any) -> Any:
    """Flower's ``format_task`` hook: the task page prints ``rejected`` raw (an epoch number); say what it is.

    With late acks, a MedHeaven task is rejected only when its worker process was lost (reject on worker lost), and
    then its message goes back to the queue for another delivery (see the task's Retries)."""
    if isinstance(getattr(task, "rejected", None), int | float):
        at = datetime.datetime.fromtimestamp(task.rejected, tz=datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        task.rejected = f"{at}: its worker process was lost; the message went back to the queue"
    return task


def set_flower_defaults() -> None:
    from flower.options import options

    options.read_only = True
    options.tasks_columns = TASK_COLUMNS
    options.format_task = show_rejection_time


def _metrics_handler(enabled: bool) -> Any:
    import tornado.web
    from flower.views.monitor import Metrics

    class GuardedMetrics(Metrics):  # type: ignore[misc]
        @tornado.web.authenticated
        async def get(self) -> None:
            if not enabled:
                raise tornado.web.HTTPError(404, reason="metrics are off (MEDHEAVEN_DASHBOARD_METRICS)")
            await super().get()

    return GuardedMetrics


def _broker_handler(hospitals: list[str]) -> Any:
    import tornado.web
    from flower.views.broker import BrokerView

    class DeclaredQueuesBrokerView(BrokerView):  # type: ignore[misc]
        """Every declared queue, read as ``medheaven-coordinator status --queues`` reads it, in Flower's columns
        (Messages = Ready + Unacked; Consumers = live workers consuming it)."""

        @tornado.web.authenticated
        async def get(self) -> None:
            loop = asyncio.get_running_loop()
            rows: list[dict[str, Any]] = []
            try:  # blocking broker and inspect calls stay off Flower's event loop
                earlier = await loop.run_in_executor(None, unacknowledged, self.capp)
                live = await loop.run_in_executor(None, ask_live_workers, self.capp)
                read = partial(queue_depths, self.capp, hospitals, live=live, earlier=earlier)
                for depth in await loop.run_in_executor(None, read):
                    rows.append(
                        {
                            "name": depth.queue,
                            "messages": depth.waiting + depth.unacknowledged,
                            "messages_ready": depth.waiting,
                            "messages_unacknowledged": depth.unacknowledged,
                            "consumers": depth.consumers,
                        }
                    )
            except Exception:  # the page says "no queue data" and the log says why, as Flower's own page does
                log.exception("could not read the queues from the broker")
            self.render("broker.html", broker_url=self.application.broker_uri, queues=rows)

    return DeclaredQueuesBrokerView


def install_handlers(*, metrics: bool, hospitals: list[str]) -> None:
    from flower.urls import handlers
    from tornado.routing import URLSpec

    replacements = {r"/metrics": _metrics_handler(metrics), r"/broker": _broker_handler(hospitals)}
    for index, entry in enumerate(handlers):
        if isinstance(entry, URLSpec):  # url(r"/broker", BrokerView, name="broker"): keep the name for reverse_url
            path = entry.regex.pattern.removesuffix("$")
            if path in replacements:
                handlers[index] = URLSpec(path, replacements[path], entry.kwargs, entry.name)
        elif entry[0] in replacements:  # (r"/metrics", Metrics)
            handlers[index] = (entry[0], replacements[entry[0]], *entry[2:])


set_flower_defaults()
install_handlers(metrics=settings().dashboard_metrics, hospitals=settings().hospital_ids())

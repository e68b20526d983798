"""The app Flower serves: ``celery -A workers.dashboard flower --basic-auth=...``.

* It imports both task modules so the dashboard's process knows every MedHeaven task (``-A workers`` knew only
  ``celery.*``). It is not a worker entry point: hospital and aggregator workers import only their own module, so
  each keeps only its own start-up check.
* Flower serves ``/metrics`` (Prometheus: worker names with hospital ids, per-hospital task runtime histograms)
  without asking for its login. Here it is off (404) unless ``MEDHEAVEN_DASHBOARD_METRICS=true``, and then behind
  the same login as every page. Flower has no option for either, so this module replaces the handler in Flower's
  URL table before Flower builds its application (the Celery CLI loads ``-A`` before running ``flower``).
  ``/healthcheck`` stays open: it answers ``OK`` and nothing else.
"""

from __future__ import annotations

from typing import Any

from workers import aggregator as _aggregator  # noqa: F401 - registers medheaven.aggregate.*
from workers import hospital as _hospital  # noqa: F401 - registers medheaven.hospital.*
from workers.app import app, settings

__all__ = ["app"]


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


def guard_metrics(enabled: bool) -> None:
    from flower.urls import handlers

    for index, entry in enumerate(handlers):
        if isinstance(entry, tuple) and entry[0] == r"/metrics":
            handlers[index] = (r"/metrics", _metrics_handler(enabled))


guard_metrics(settings().dashboard_metrics)

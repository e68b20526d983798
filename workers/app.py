"""The Celery application shared by every role. Settings are read once, here, when the process starts."""

from __future__ import annotations

import logging
from functools import lru_cache
from typing import Any

from celery import Celery
from celery.signals import after_setup_logger

from medheaven.settings import Settings
from workers import (
    outage_log,
    readonly,  # noqa: F401 - every worker refuses deployment-changing remote control
)
from workers.config import OUTAGE_TOLERANCE, celery_config, register_bounded_msgpack
from workers.lease import WorkerLease


@lru_cache(maxsize=1)
def settings() -> Settings:
    return Settings()


def create_app(current: Settings, *, hospitals: list[str] | None = None) -> Celery:
    register_bounded_msgpack()
    celery = Celery("medheaven")
    celery.conf.update(celery_config(current, hospitals=current.hospital_ids() + list(hospitals or [])))
    # every worker renews a liveness lease, so the coordinator knows within seconds that one died with its task
    celery.steps["worker"].add(WorkerLease)
    return celery


@after_setup_logger.connect
def _one_line_per_outage(logger: logging.Logger, **_: Any) -> None:
    """A worker's log shows a broker outage as two lines, not one per retry (``workers.outage_log``)."""
    outage_log.install(OUTAGE_TOLERANCE)


app = create_app(settings())

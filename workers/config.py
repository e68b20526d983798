"""Celery configuration derived from MEDHEAVEN_* settings: the single place transport policy is decided.

* msgpack is the task and result serializer and the only content accepted; a pickle body is refused before any
  of our code runs (loading a pickle runs code). Our msgpack decoder replaces kombu's so that it bounds the
  message size and every container before allocating.
* Queues are declared, never created on demand: ``aggregate`` and one ``hospital.<id>`` per hospital. A typo in a
  hospital id fails at send time instead of filling a queue nobody reads.
* Late acks, prefetch 1 and requeue on worker loss: a hospital task is acknowledged only once its receipt exists,
  and a worker killed mid-training gives its task back. ``MEDHEAVEN_MAX_DELIVERIES`` stops a task that keeps
  killing its worker (see ``workers.guard``).
* Redis' visibility timeout is longer than any task's hard time limit, so a slow but live task is not redelivered.
* Publishing and result storage retry through a broker outage of up to ``OUTAGE_TOLERANCE`` (300 s, the same
  tolerance as the coordinator's), so no trained update is lost; the worker's log shows the outage as one line when
  it begins and one when it ends (``workers.outage_log``).
* Worker task events on (sent events off: they carry the real name, not the shadow), so Flower shows workers
  and tasks named by kind, hospital, round and run.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import msgpack
from kombu.entity import Exchange, Queue
from kombu.serialization import register

from medheaven.settings import Settings

AGGREGATE_QUEUE = "aggregate"
#: Seconds of continuous broker outage every MedHeaven process rides out: the coordinator's calls
#: (``coordinator.transport``) and the workers' publishes and result writes (below). Longer outages fail the call;
#: ``medheaven-coordinator resume`` continues the run.
OUTAGE_TOLERANCE = 300.0
#: kombu's publish retry: sleeps of 0.5 s, 1 s, ... growing by 0.5 s up to 3 s
PUBLISH_RETRY_START, PUBLISH_RETRY_STEP, PUBLISH_RETRY_MAX = 0.5, 0.5, 3.0
#: Celery's result-backend retry sleeps a random time between 0 and min(cap, 10 ms * 2^n) (full jitter): at the cap
#: the mean sleep is half of it
BACKEND_RETRY_CAP_MS = 4000
MAX_MESSAGE_BYTES = 256 * 1024  # task messages carry references and digests only; a receipt is < 4 KiB


def hospital_queue(hospital_id: str) -> str:
    return f"hospital.{hospital_id}"


def _bounded_msgpack_loads(data: bytes | str) -> Any:
    raw = data.encode("utf-8") if isinstance(data, str) else bytes(data)
    if len(raw) > MAX_MESSAGE_BYTES:
        raise ValueError(f"message of {len(raw)} bytes exceeds MedHeaven's {MAX_MESSAGE_BYTES}-byte bound")
    return msgpack.unpackb(
        raw,
        raw=False,
        strict_map_key=False,
        max_bin_len=MAX_MESSAGE_BYTES,
        max_str_len=MAX_MESSAGE_BYTES,
        max_array_len=4096,
        max_map_len=4096,
        max_ext_len=0,
    )


def _msgpack_dumps(value: Any) -> bytes:
    data: bytes = msgpack.packb(value, use_bin_type=True)
    return data


def register_bounded_msgpack() -> None:
    register(
        "msgpack",
        _msgpack_dumps,
        _bounded_msgpack_loads,
        content_type="application/x-msgpack",
        content_encoding="binary",
    )


def declared_queues(hospitals: Iterable[str]) -> list[Queue]:
    names = [AGGREGATE_QUEUE, *sorted({hospital_queue(h) for h in hospitals})]
    return [Queue(name, Exchange(name, type="direct"), routing_key=name) for name in names]


def _tls_options(settings: Settings) -> dict[str, Any] | None:
    if not settings.broker_url.startswith("rediss://"):
        return None
    return settings.redis_tls_options()


# kombu's virtual transports (memory://) poll their queues every `polling_interval` seconds, 1 s by default; a round
# crosses three queues (train -> fold link -> finalise), so the default idles ~3 s per round in the embedded demo.
# 10 ms costs a few hundred cheap in-process checks per second on an idle worker thread. Redis uses BRPOP and does
# not poll, so the option is only set for memory://.
MEMORY_POLLING_INTERVAL = 0.01


def _broker_transport_options(broker_url: str, visibility: int) -> dict[str, Any]:
    options: dict[str, Any] = {"visibility_timeout": visibility}
    if broker_url.startswith("memory://"):
        options["polling_interval"] = MEMORY_POLLING_INTERVAL
    return options


def publish_retries(tolerance: float = OUTAGE_TOLERANCE) -> int:
    """Publish retries whose sleeps add up to at least ``tolerance`` seconds."""
    total, interval, retries = 0.0, PUBLISH_RETRY_START, 0
    while total < tolerance:
        total += min(interval, PUBLISH_RETRY_MAX)
        interval += PUBLISH_RETRY_STEP
        retries += 1
    return retries


def backend_retries(tolerance: float = OUTAGE_TOLERANCE) -> int:
    """Result-backend retries whose jittered sleeps add up to ``tolerance`` seconds with a wide margin: the mean
    sleep at the cap is cap/2, and 30 % more retries put the sum's mean ~6 standard deviations above the tolerance
    (150 uniform sleeps have a standard deviation of ~14 s around their mean)."""
    mean_sleep = BACKEND_RETRY_CAP_MS / 2000
    return int(1.3 * tolerance / mean_sleep) + 1


def celery_config(settings: Settings, *, hospitals: Iterable[str] = ()) -> dict[str, Any]:
    visibility = settings.task_time_limit * 2 + 60
    config: dict[str, Any] = {
        "broker_url": settings.broker_url,
        "result_backend": settings.resolved_backend(),
        "task_serializer": "msgpack",
        "result_serializer": "msgpack",
        "accept_content": ["msgpack"],
        "result_accept_content": ["msgpack"],
        "event_serializer": "json",
        "task_queues": declared_queues(hospitals),
        "task_default_queue": AGGREGATE_QUEUE,
        "task_create_missing_queues": False,
        "task_routes": {"medheaven.aggregate.*": {"queue": AGGREGATE_QUEUE}},
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "worker_concurrency": 1,
        "task_time_limit": settings.task_time_limit,
        "task_soft_time_limit": max(settings.task_time_limit - 30, 5),
        "broker_transport_options": _broker_transport_options(settings.broker_url, visibility),
        "result_backend_transport_options": {"visibility_timeout": visibility},
        "result_expires": 7 * 24 * 3600,
        "result_extended": True,
        "task_track_started": True,
        "worker_send_task_events": True,
        # no task-sent events: Celery's sent event carries the real task name, not the shadow name
        # (``train · h3 · round 2 · run``, coordinator.transport.shadow_name), and Flower would show whichever event
        # it merged last; queued tasks are visible on the queue instead (``medheaven-coordinator status``)
        "task_send_sent_event": False,
        "broker_connection_retry_on_startup": True,
        "broker_connection_max_retries": None,
        # A broker outage must not cost a hospital the update it just trained: publishing its receipt (the fold
        # callback) and storing its result keep retrying for OUTAGE_TOLERANCE (Celery's defaults give up after ~1 s
        # and ~50 s). Both are safe to repeat (the fold is idempotent, a result is keyed by task id).
        "task_publish_retry_policy": {
            "max_retries": publish_retries(),
            "interval_start": PUBLISH_RETRY_START,
            "interval_step": PUBLISH_RETRY_STEP,
            "interval_max": PUBLISH_RETRY_MAX,
        },
        "result_backend_always_retry": True,
        "result_backend_max_retries": backend_retries(),
        "result_backend_max_sleep_between_retries_ms": BACKEND_RETRY_CAP_MS,
        # A running late-ack task keeps running through a connection loss (Celery 6 will cancel it by default): a
        # short outage must not throw away every training in progress. Its result is stored once Redis is back.
        "worker_cancel_long_running_tasks_on_connection_loss": False,
        "worker_hijack_root_logger": False,
    }
    tls = _tls_options(settings)
    if tls is not None:
        config["broker_use_ssl"] = tls
        config["redis_backend_use_ssl"] = tls
    return config

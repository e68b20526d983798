"""What the broker holds for each declared queue: waiting messages, unacknowledged ones, who consumes it, and
which unacknowledged messages no live worker holds any more (stranded by a worker that died).

Flower's Broker page lists only the queues some live worker consumes, so a dead hospital's queue (and the message
its killed worker was holding) disappears there; Redis has no notion of a consumer either. This reads every
declared queue of the run instead: ``waiting`` from a passive queue declare (kombu's public API, all priority
sub-queues included) and ``unacknowledged`` from the Redis transport's ``unacked`` hash, where kombu keeps a
delivered but unacknowledged message until its consumer acknowledges it or the visibility timeout restores it to
the queue. Consumers and stranded messages need the live workers' own word (``inspect``): a message is stranded
when it is unacknowledged and no live worker reports its task as active or reserved.

Used by ``medheaven-coordinator status --queues`` (``coordinator.queues``) and by the dashboard's Broker page
(``workers.dashboard``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from celery import Celery

from workers.config import AGGREGATE_QUEUE, hospital_queue


@dataclass(frozen=True)
class QueueDepth:
    queue: str
    waiting: int
    unacknowledged: int
    consumers: int | None = None  # live workers consuming the queue; None when the workers were not asked
    stranded: int | None = None  # unacknowledged messages that no live worker holds; None when not asked

    def describe(self) -> str:
        line = f"queue {self.queue}: {self.waiting} waiting, {self.unacknowledged} unacknowledged"
        if self.consumers is not None:
            line += f", {self.consumers} live consumer{'s' if self.consumers != 1 else ''}"
        if self.stranded:
            line += (
                f", {self.stranded} stranded (held by a worker that is gone; it returns to the queue at the "
                "visibility timeout, or when the lost worker's task is given back)"
            )
        return line


@dataclass(frozen=True)
class LiveWorkers:
    """What the workers that answered said: the queues each consumes and the task ids they hold."""

    queues: Mapping[str, frozenset[str]]  # worker hostname -> names of the queues it consumes
    holding: frozenset[str]  # ids of tasks some live worker has active (running) or reserved (prefetched)

    @classmethod
    def from_replies(
        cls,
        active_queues: Mapping[str, Iterable[Mapping[str, object]]],
        tasks: Iterable[Mapping[str, Iterable[Mapping[str, object]]]],
    ) -> LiveWorkers:
        """From Celery's ``inspect().active_queues()`` and the ``active()``/``reserved()`` replies."""
        queues = {worker: frozenset(str(q["name"]) for q in entries) for worker, entries in active_queues.items()}
        holding = frozenset(str(t["id"]) for reply in tasks for entries in reply.values() for t in entries)
        return cls(queues, holding)

    def consumers(self, queue: str) -> int:
        return sum(1 for names in self.queues.values() if queue in names)


def ask_live_workers(app: Celery, *, timeout: float = 1.0) -> LiveWorkers:
    """One ``inspect`` round (each method waits ``timeout`` for replies; the three run side by side, as Flower's
    inspector runs its own: kombu keeps each thread's reply queue apart)."""

    def ask(method: str) -> dict[str, Any]:
        replies: dict[str, Any] | None = getattr(app.control.inspect(timeout=timeout), method)()
        return replies or {}

    with ThreadPoolExecutor(max_workers=3, thread_name_prefix="inspect") as pool:
        queues, active, reserved = pool.map(ask, ("active_queues", "active", "reserved"))
    return LiveWorkers.from_replies(queues, [active, reserved])


def declared_queue_names(app: Celery, hospitals: Iterable[str] = ()) -> list[str]:
    """The aggregator's queue, every queue the app declares, and each named hospital's, in a stable order."""
    names = {AGGREGATE_QUEUE, *(q.name for q in app.conf.task_queues or () if q.name)}
    names |= {hospital_queue(h) for h in hospitals}
    return [AGGREGATE_QUEUE, *sorted(names - {AGGREGATE_QUEUE})]


def unacknowledged(app: Celery) -> dict[str, str]:
    """Task id -> queue of every delivered but unacknowledged message (empty on memory://, which keeps none)."""
    with app.connection_for_read() as connection:
        channel = connection.default_channel
        client = getattr(channel, "client", None)
        if client is None:
            return {}
        held = {}
        for raw in client.hvals(channel.unacked_key):
            message, _exchange, routing_key = json.loads(raw)
            held[str((message.get("headers") or {}).get("id", ""))] = str(routing_key)
        return held


def queue_depths(
    app: Celery,
    hospitals: Iterable[str],
    *,
    live: LiveWorkers | None = None,
    earlier: Mapping[str, str] | None = None,
) -> list[QueueDepth]:
    """Depth of every declared queue. With ``live`` (asked after ``earlier = unacknowledged(app)`` was read),
    also its live consumers and its stranded messages: unacknowledged both before and after the workers were
    asked, and held by none of them (a message taken or acknowledged while they were asked is not stranded)."""
    names = declared_queue_names(app, hospitals)
    if live is not None:  # a queue some live worker consumes is listed even where MEDHEAVEN_HOSPITALS is unset
        names += sorted({q for queues in live.queues.values() for q in queues} - set(names))
    held = unacknowledged(app)
    counts: dict[str, int] = {}
    stranded: dict[str, int] = {}
    for task_id, queue in held.items():
        counts[queue] = counts.get(queue, 0) + 1
        if live is not None and task_id not in live.holding and (earlier is None or task_id in earlier):
            stranded[queue] = stranded.get(queue, 0) + 1
    with app.connection_for_read() as connection:
        channel = connection.default_channel
        depths = []
        for name in names:
            try:
                waiting = int(channel.queue_declare(name, passive=True).message_count)
            except connection.channel_errors:  # Redis has no key for an empty queue: nothing waits in it
                waiting = 0
            consumers = live.consumers(name) if live is not None else None
            lost = stranded.get(name, 0) if live is not None else None
            depths.append(QueueDepth(name, waiting, counts.get(name, 0), consumers, lost))
        return depths

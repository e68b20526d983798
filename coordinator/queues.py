"""Queue depth per hospital queue, straight from the broker: what waits and what a worker holds unacknowledged.

Flower's Broker page lists only queues some live worker consumes, so a dead hospital's queue (and the message its
killed worker was holding) disappears there. This reads every declared queue of the run instead: ``waiting``
from a passive queue declare (kombu's public API, all priority sub-queues included) and ``unacknowledged`` from
the Redis transport's ``unacked`` hash, where kombu keeps a delivered but unacknowledged message until its
consumer acknowledges it or the visibility timeout restores it to the queue.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from celery import Celery

from workers.config import AGGREGATE_QUEUE, hospital_queue


@dataclass(frozen=True)
class QueueDepth:
    queue: str
    waiting: int
    unacknowledged: int


def queue_depths(app: Celery, hospitals: list[str]) -> list[QueueDepth]:
    names = [AGGREGATE_QUEUE, *(hospital_queue(h) for h in hospitals)]
    with app.connection_for_read() as connection:
        channel = connection.default_channel
        held: dict[str, int] = {}
        client = getattr(channel, "client", None)
        if client is not None:  # the Redis transport; memory:// has no unacked hash
            for raw in client.hvals(channel.unacked_key):
                _message, _exchange, routing_key = json.loads(raw)
                held[str(routing_key)] = held.get(str(routing_key), 0) + 1
        depths = []
        for name in names:
            try:
                waiting = int(channel.queue_declare(name, passive=True).message_count)
            except connection.channel_errors:  # Redis has no key for an empty queue: nothing waits in it
                waiting = 0
            depths.append(QueueDepth(name, waiting, held.get(name, 0)))
        return depths

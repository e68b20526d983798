"""``medheaven-coordinator status --queues``: every declared queue's depth, its live consumers and its stranded
messages, dead hospitals' queues included (the reading itself is ``workers.queues``, shared with the dashboard).
"""

from __future__ import annotations

from celery import Celery

from workers.queues import QueueDepth, ask_live_workers, unacknowledged
from workers.queues import queue_depths as _read_depths

__all__ = ["QueueDepth", "queue_depths"]


def queue_depths(app: Celery, hospitals: list[str], *, ask_workers: bool = True) -> list[QueueDepth]:
    """With ``ask_workers`` (one ``inspect`` round, about 3 s), consumers and stranded messages too."""
    if not ask_workers:
        return _read_depths(app, hospitals)
    earlier = unacknowledged(app)
    live = ask_live_workers(app)
    return _read_depths(app, hospitals, live=live, earlier=earlier)

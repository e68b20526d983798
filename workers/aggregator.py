"""Aggregator worker: ``celery -A workers.aggregator worker -Q aggregate`` (exactly one process, concurrency 1).

Holds the public context and the hospitals' verification keys only; it refuses to start if a secret context is
configured. Tasks are thin: parse, call ``medheaven.federated.aggregator.AggregatorNode``, return a small dict.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any

from celery import Task, bootsteps

from medheaven.errors import QuorumNotReachedError
from workers.app import app, settings
from workers.guard import count_delivery

if TYPE_CHECKING:
    from medheaven.federated.aggregator import AggregatorNode

log = logging.getLogger(__name__)

_node: AggregatorNode | None = None
# the in-process demo runs tasks on a thread pool; the node's running sums must see one task at a time
_lock = threading.Lock()


def node() -> AggregatorNode:
    global _node
    if _node is None:
        from medheaven.federated.nodes import aggregator_node_from_settings

        _node = aggregator_node_from_settings(settings())
    return _node


def use_node(aggregator: AggregatorNode | None) -> None:
    """The in-process demo hands the aggregator its store directly instead of through settings."""
    global _node
    _node = aggregator


class AggregatorStartupCheck(bootsteps.Step):  # type: ignore[misc]
    """Refuse to start if a secret context is configured (a bootstep: exceptions here abort start-up)."""

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        if _node is None:
            from medheaven.federated.nodes import check_aggregator_settings

            check_aggregator_settings(settings())


app.steps["worker"].add(AggregatorStartupCheck)


@app.task(name="medheaven.aggregate.fold", bind=True)
def fold(self: Task, receipt: Any) -> dict[str, Any]:
    """Verify one hospital's update and add it to the round's encrypted running sum."""
    count_delivery(self, limit=settings().max_deliveries)
    with _lock:
        return node().fold(receipt)


# ``throws``: a round that misses its quorum is an expected outcome, not a worker bug. The task still ends in
# FAILURE with the reason (so Flower and a FAILURE filter show the failed round), after the node has stored the
# failure record the coordinator reads; Celery logs it as one line instead of a traceback.
@app.task(name="medheaven.aggregate.finalise", bind=True, throws=(QuorumNotReachedError,))
def finalise(
    self: Task, run: str, kind: str, round_number: int, attempt: int, dropouts: dict[str, str] | None = None
) -> dict[str, Any]:
    """Commit the round (result, then manifest), or fail with the reason after recording it; ``dropouts``: the
    hospitals the coordinator knows gone (``round_policy.Dropout`` values), named in a masked attempt's tombstone."""
    count_delivery(self, limit=settings().max_deliveries)
    with _lock:
        return node().finalise(run, kind, round_number, attempt, dropouts)

"""Read-only remote control: a worker refuses the broadcast commands that would change the deployment.

Celery lets anyone who can publish to the broker (Flower's login included) grow or shrink a worker's pool, change
autoscaling, add or cancel queue consumers, change rate or time limits, restart the pool or shut the worker down.
Growing the aggregator's pool breaks its one-process, concurrency-1 rule; consuming another hospital's queue from a
hospital worker would run that hospital's tasks on the wrong data. Celery has no allow-list for remote control
(``worker_enable_remote_control=False`` would also switch off ``ping`` and the ``inspect`` replies Flower and
``ProcessCluster.wait_ready`` need), so this module re-registers each of those commands in Celery's control
``Panel`` (its documented extension point for custom commands) as a refusal that names the command and says how
to change the deployment instead. Inspection (ping, stats, active, reserved, registered, conf...) and ``revoke``
(the coordinator withdraws stale tasks) stay available. Importing the module installs the refusals for the process.
"""

from __future__ import annotations

import logging
from typing import Any

from celery.worker.control import Panel

log = logging.getLogger(__name__)

#: the commands that change what a worker runs or how much of it runs
REFUSED_COMMANDS = (
    "pool_grow",
    "pool_shrink",
    "pool_restart",
    "autoscale",
    "add_consumer",
    "cancel_consumer",
    "shutdown",
    "rate_limit",
    "time_limit",
)


def _refusal(command: str) -> Any:
    def refuse(state: Any, *args: Any, **kwargs: Any) -> dict[str, str]:
        hostname = getattr(state, "hostname", "this worker")
        log.warning("refused remote-control command %r sent to %s", command, hostname)
        return {
            "error": f"{hostname} refuses remote-control command {command!r}: MedHeaven workers are read-only "
            "from the dashboard; change the deployment by restarting the worker with the runbook's command"
        }

    refuse.__name__ = command
    refuse.__doc__ = f"Refused: {command} would change the deployment (MedHeaven workers are read-only)."
    return refuse


def install() -> None:
    for command in REFUSED_COMMANDS:
        Panel.register(_refusal(command), name=command, type="control")


install()

"""``python -m workers.parent_death PARENT_PID COMMAND...``: run COMMAND (in place, by exec) so that it receives
SIGTERM when process PARENT_PID, which started it, dies, even by SIGKILL.

``workers.cluster.ProcessCluster`` starts every worker through this: a Celery worker's main process then makes a
warm shutdown (its pool children go with it) instead of outliving a killed benchmark or test and taking the next
run's tasks with another run's keys. It is a separate step before exec, not a ``preexec_fn``, because the processes
that start workers have threads (the coordinator, commit watchers), where Python code between fork and exec can
deadlock. The parent-death signal survives exec (prctl(2), Linux); the standard library has no binding for prctl and
``python-prctl`` would be a C extension for this one call, so libc is called through ctypes. Elsewhere the command
runs without it, and outlives a killed parent as before.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

# <linux/prctl.h>: the signal the kernel sends this process when its parent dies
PR_SET_PDEATHSIG = 1


def main(argv: list[str]) -> None:
    if len(argv) < 2 or not argv[0].isdigit():
        sys.exit("usage: python -m workers.parent_death PARENT_PID COMMAND [ARG...]")
    parent, command = int(argv[0]), argv[1:]
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0) != 0:
            error = ctypes.get_errno()
            raise OSError(error, f"prctl(PR_SET_PDEATHSIG): {os.strerror(error)}")
    if os.getppid() != parent:  # the parent died before the signal was armed: this process is already an orphan
        sys.exit(f"parent process {parent} has already exited; not starting {command[0]}")
    os.execv(command[0], command)  # noqa: S606 - ProcessCluster's own argv (no shell, no user input)


if __name__ == "__main__":
    main(sys.argv[1:])

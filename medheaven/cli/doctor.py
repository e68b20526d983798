"""``medheaven doctor --role hospital|aggregator|coordinator``: check this node before it joins the federation.

Registered in ``medheaven.cli`` as ``app.command("doctor")(doctor_command)``. Until then (or without the
``medheaven`` entry point) ``python -m medheaven.cli.doctor --role hospital`` runs the same command.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

import typer
from rich.markup import escape

from medheaven.cli.support import command, print_json, stdout

_MARKS = {"ok": "[green]ok  [/green]", "warn": "[yellow]WARN[/yellow]", "fail": "[red]FAIL[/red]", "skip": "skip"}


class NodeRole(StrEnum):
    hospital = "hospital"
    aggregator = "aggregator"
    coordinator = "coordinator"


@command
def doctor_command(
    role: Annotated[NodeRole, typer.Option("--role", help="What this node is: hospital, aggregator or coordinator.")],
    json_output: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of lines.")] = False,
    timeout: Annotated[float, typer.Option("--timeout", min=0.1, help="Seconds to wait for Redis.")] = 3.0,
) -> None:
    """Check this node's MEDHEAVEN_* configuration: broker, store, keys, registration and data.

    One line per check; exit status 1 if any check fails. Run it with the environment the worker will have.

    Example: medheaven doctor --role hospital
    """
    from medheaven.doctor import diagnose  # deferred: TenSEAL and the data stack load only when a check runs

    report = diagnose(role.value, timeout=timeout)
    if json_output:
        print_json(report.to_dict())
    else:
        for check in report.checks:
            stdout.print(f"{_MARKS[check.status]} {check.name}: {escape(check.detail)}", soft_wrap=True)
    if not report.ok:
        raise typer.Exit(1)

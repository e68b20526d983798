"""Reading the deployment's shell commands and checking them against the real command-line interfaces.

Used by tests/test_compose.py (commands in docker-compose.yml) and tests/test_runbook.py (commands in
docs/deployment.md and scripts/runbook_smoke.sh). A command is checked by parsing it with the very click objects
that ``medheaven``, ``medheaven-coordinator`` and ``celery`` run, so an unknown subcommand, an unknown option or a
missing required option is an error here exactly as it would be on a machine.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import click

ROOT = Path(__file__).resolve().parents[1]
PROGRAMS = ("medheaven-coordinator", "medheaven", "celery")
ROLE_TASKS = {
    "workers.hospital": {
        "medheaven.hospital.stats",
        "medheaven.hospital.init_model",
        "medheaven.hospital.train",
        "medheaven.hospital.evaluate_test",
    },
    "workers.aggregator": {"medheaven.aggregate.fold", "medheaven.aggregate.finalise"},
}

_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
# where a command of interest may start: the start of a statement, inside $(...), after exec, after VAR=value
_START = re.compile(
    r"(?:^\s*|\$\(\s*|\bexec\s+|^\s*(?:[A-Za-z_][A-Za-z0-9_]*=\S+\s+)+)"
    r"(?P<program>medheaven-coordinator|medheaven|celery)(?=\s)"
)
# a command ends at a pipe, a list operator, a redirection or the end of a $(...)
_END = re.compile(r"\s\d?>|[|;&)]")


class CommandError(Exception):
    pass


@dataclass(frozen=True)
class ShellCommand:
    program: str
    args: tuple[str, ...]
    text: str

    @property
    def options(self) -> frozenset[str]:
        return frozenset(a.split("=", 1)[0] for a in self.args if a.startswith("-") and len(a) > 1)


@dataclass(frozen=True)
class Resolved:
    """A parsed command: its subcommand path (celery: app module, subcommand, inspect action) and options."""

    program: str
    path: tuple[str, ...]
    options: frozenset[str]
    params: dict[str, object] = field(default_factory=dict, compare=False)


def logical_lines(text: str) -> list[str]:
    """Shell lines with backslash continuations joined."""
    return text.replace("\\\n", " ").splitlines()


def find_commands(text: str) -> list[ShellCommand]:
    """Every medheaven / medheaven-coordinator / celery command in a shell text, as it would run."""
    found: list[ShellCommand] = []
    for line in logical_lines(text):
        stripped = line.split(" #", 1)[0] if not line.lstrip().startswith("#") else ""
        for match in _START.finditer(stripped):
            rest = stripped[match.start("program") :]
            end = _END.search(rest)
            command = rest[: end.start()] if end else rest
            tokens = shlex.split(command)
            found.append(ShellCommand(tokens[0], tuple(tokens[1:]), command.strip()))
    return found


def exported_names(text: str) -> set[str]:
    """Variables a shell text sets for the commands it runs (``export X=``, ``X=... command``)."""
    names = set(re.findall(r"\bexport\s+([A-Za-z_][A-Za-z0-9_]*)=", text))
    for line in logical_lines(text):
        tokens = line.split()
        while tokens and _ASSIGNMENT.match(tokens[0]):
            names.add(tokens.pop(0).split("=", 1)[0])
    return names


def code_blocks(markdown: str, *, languages: tuple[str, ...] = ("bash", "sh")) -> list[str]:
    blocks = re.findall(r"^\s*```([a-z]*)\n(.*?)^\s*```", markdown, flags=re.DOTALL | re.MULTILINE)
    return [body for language, body in blocks if language in languages]


# -- medheaven and medheaven-coordinator ------------------------------------------------------------------
# typer >= 0.2x ships its own copy of click: its commands and errors are not click's classes
def _usage_errors() -> tuple[type[Exception], ...]:
    from typer import _click as typer_click

    return (click.ClickException, typer_click.ClickException)


@cache
def typer_roots() -> dict[str, Any]:
    import typer

    from coordinator.cli import app as coordinator_app
    from medheaven.cli.root import app as medheaven_app

    return {
        "medheaven": typer.main.get_command(medheaven_app),
        "medheaven-coordinator": typer.main.get_command(coordinator_app),
    }


def _is_group(command: Any) -> bool:
    return hasattr(command, "resolve_command") and hasattr(command, "commands")


def _descend(root: Any, program: str, ctx: Any) -> tuple[list[str], Any]:
    path: list[str] = []
    command = root
    while _is_group(command):
        rest = [*ctx._protected_args, *ctx.args]
        if not rest:
            raise CommandError(f"{program} {' '.join(path)}: a subcommand is missing")
        name, sub, rest = command.resolve_command(ctx, rest)
        if sub is None or name is None:
            raise CommandError(f"{program} {' '.join(path)}: no subcommand {rest[0]!r}")
        path.append(name)
        ctx = sub.make_context(name, rest, parent=ctx)
        command = sub
    if ctx.args:
        raise CommandError(f"{program} {' '.join(path)}: unexpected arguments {ctx.args}")
    return path, ctx


def resolve(command: ShellCommand) -> Resolved:
    """Parse ``command`` with the real CLI; raise CommandError naming what does not exist."""
    if command.program == "celery":
        return resolve_celery(command)
    root = typer_roots().get(command.program)
    if root is None:
        raise CommandError(f"{command.program} is not a MedHeaven command")
    args = list(command.args)
    try:
        path, leaf = _descend(root, command.program, root.make_context(command.program, args))
    except _usage_errors() as exc:
        raise CommandError(f"`{command.text}`: {exc.format_message()}") from exc
    return Resolved(command.program, tuple(path), command.options, dict(leaf.params))


# -- celery -----------------------------------------------------------------------------------------------
@cache
def app_tasks(module: str) -> frozenset[str]:
    """Task names of the Celery app that ``celery -A module`` loads, in a fresh interpreter as a worker would."""
    code = (
        "import sys\nfrom celery import Celery\nfrom celery.app.utils import find_app\n"
        f"app = find_app({module!r})\nassert isinstance(app, Celery), type(app)\n"
        "app.loader.import_default_modules()\nprint('\\n'.join(sorted(app.tasks)))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd="/", timeout=120, check=False
    )
    if result.returncode != 0:
        raise CommandError(f"celery -A {module}: the module does not load a Celery app:\n{result.stderr[-2000:]}")
    return frozenset(result.stdout.split())


def resolve_celery(command: ShellCommand) -> Resolved:
    from celery.app.utils import find_app
    from celery.bin.base import CLIContext
    from celery.bin.celery import celery

    try:
        ctx = celery.make_context("celery", list(command.args))
        module = ctx.params.get("app")
        if not module:
            raise CommandError(f"`{command.text}`: give the app with -A")
        app_tasks(str(module))  # it must load in a fresh interpreter, from any directory
        ctx.obj = CLIContext(app=find_app(str(module)), no_color=True, workdir=None, quiet=True)
        name, sub, rest = celery.resolve_command(ctx, [*ctx._protected_args, *ctx.args])
        if sub is None or name is None:
            raise CommandError(f"`{command.text}`: no celery subcommand")
        leaf = sub.make_context(name, rest, parent=ctx)
    except click.ClickException as exc:
        raise CommandError(f"`{command.text}`: {exc.format_message()}") from exc
    path: tuple[str, ...] = (str(module), name)
    if name in {"inspect", "control"}:
        from celery.worker.control import Panel

        action = str(leaf.params.get("action") or leaf.params.get("command"))
        if action not in {n for n, info in Panel.meta.items() if info.type == name}:
            raise CommandError(f"`{command.text}`: celery {name} has no command {action!r}")
        path += (action,)
    if name == "flower":
        _check_flower_options(command, leaf.params.get("tornado_argv") or ())
    options = command.options - {"-A", "--app"}
    return Resolved("celery", path, options, dict(leaf.params))


def _check_flower_options(command: ShellCommand, argv: object) -> None:
    from flower.options import options as flower_options

    known = set(flower_options._options)
    for arg in argv if isinstance(argv, tuple | list) else ():
        name = str(arg).lstrip("-").split("=", 1)[0].replace("-", "_")
        if str(arg).startswith("-") and name not in known:
            raise CommandError(f"`{command.text}`: Flower has no option --{name}")


# -- docker compose ---------------------------------------------------------------------------------------
_COMPOSE_VALUE_OPTIONS = frozenset(
    {"-f", "--file", "--profile", "-p", "--project-name", "-e", "--env", "-v", "--volume", "-u", "--user",
     "-w", "--workdir", "--name", "--entrypoint", "--scale", "--env-file"}
)  # fmt: skip


@dataclass(frozen=True)
class ComposeCall:
    subcommand: str
    services: tuple[str, ...]
    options: dict[str, tuple[str, ...]]
    inner: ShellCommand | None
    text: str


def find_compose_calls(text: str) -> list[ComposeCall]:
    """``docker compose ...`` invocations: subcommand, services, options and the command run inside (run/exec)."""
    calls: list[ComposeCall] = []
    for line in logical_lines(text):
        for segment in re.split(r"&&|\|\||;|\|", line.split(" #", 1)[0]):
            tokens = shlex.split(segment)
            if tokens[:2] != ["docker", "compose"]:
                continue
            options: dict[str, list[str]] = {}
            positionals: list[str] = []
            subcommand = ""
            index = 2
            while index < len(tokens):
                token = tokens[index]
                if subcommand in {"run", "exec"} and len(positionals) == 1:
                    break  # the rest is the command run in the container
                if token.startswith("-"):
                    name, _, value = token.partition("=")
                    if name in _COMPOSE_VALUE_OPTIONS and not value:
                        index += 1
                        value = tokens[index]
                    options.setdefault(name, []).append(value)
                elif not subcommand:
                    subcommand = token
                else:
                    positionals.append(token)
                index += 1
            rest = tokens[index:]
            inner = ShellCommand(rest[0], tuple(rest[1:]), " ".join(rest)) if rest else None
            calls.append(
                ComposeCall(subcommand, tuple(positionals), {k: tuple(v) for k, v in options.items()}, inner, segment)
            )
    return calls

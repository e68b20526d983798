"""Commands that other packages add to ``medheaven``: the ``medheaven.commands`` entry-point group.

The library sits below the application (``coordinator/``), so a command that needs the application — ``demo``
runs a whole federation — is declared by the application instead of imported by the library::

    [project.entry-points."medheaven.commands"]
    demo = "coordinator.demo_cli:demo"

The value names a function written like any Typer command. It is imported only when its command is asked for
(or the command list is shown), so ``medheaven keys init`` never loads the coordinator.

Installed metadata is written by ``pip install``; a source checkout run with ``PYTHONPATH`` (or an editable install
made before a plugin was added) would not see a newer declaration, so the checkout's own ``pyproject.toml``, when
medheaven is imported from one, is read as well and wins for the names it declares.
"""

from __future__ import annotations

import importlib
import tomllib
from collections.abc import Callable
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import typer
import typer.core
import typer.main

from medheaven.cli.support import reported_errors
from medheaven.errors import ConfigurationError

GROUP = "medheaven.commands"
_CHECKOUT_PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def declared_commands() -> dict[str, str]:
    """``name -> "module:attribute"`` of every plugin command: installed entry points, then the checkout's."""
    declared = {entry.name: entry.value for entry in entry_points(group=GROUP)}
    pyproject = _CHECKOUT_PYPROJECT
    if pyproject.is_file():
        project = tomllib.loads(pyproject.read_text(encoding="utf-8")).get("project", {})
        if project.get("name") == "medheaven":  # a pyproject.toml that happens to sit above site-packages is not ours
            declared.update({str(k): str(v) for k, v in project.get("entry-points", {}).get(GROUP, {}).items()})
    return declared


def load_command(name: str, target: str) -> Any:
    """Import the plugin function ``target`` and build its click command, named ``name``."""
    module, _, attribute = target.partition(":")
    try:
        callback: Callable[..., Any] = getattr(importlib.import_module(module), attribute)
    except (ImportError, AttributeError) as exc:
        raise ConfigurationError(
            f"the `medheaven {name}` command is declared as {target!r} ({GROUP} entry point) but cannot be loaded: "
            f"{type(exc).__name__}: {exc}. Reinstall with `pip install -e .` from the repository"
        ) from None
    # a Typer app with a callback always builds a group, whatever the Typer version does with a single command
    holder = typer.Typer()
    holder.callback()(_no_options)
    holder.command(name)(callback)
    group = typer.main.get_command(holder)
    assert isinstance(group, typer.core.TyperGroup)
    return group.commands[name]


def _no_options() -> None:
    return None


class PluginGroup(typer.core.TyperGroup):
    """The ``medheaven`` group: its own commands, and the plugin commands loaded when first asked for."""

    def list_commands(self, ctx: Any) -> list[str]:
        own = super().list_commands(ctx)
        return [*own, *(name for name in declared_commands() if name not in own)]

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        found = super().get_command(ctx, cmd_name)
        if found is not None:
            return found
        target = declared_commands().get(cmd_name)
        if target is None:
            return None
        with reported_errors():
            loaded = load_command(cmd_name, target)
        self.add_command(loaded, cmd_name)
        return loaded

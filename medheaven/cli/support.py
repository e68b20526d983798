"""What every MedHeaven command shares: error reporting without tracebacks, consoles, settings at start-up."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import wraps
from typing import TYPE_CHECKING, Annotated, Any, ParamSpec, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from medheaven.errors import MedHeavenError

if TYPE_CHECKING:
    from medheaven.store.base import Store

stdout = Console()
stderr = Console(stderr=True)

P = ParamSpec("P")
R = TypeVar("R")

_debug = {"on": False}


def set_debug(enabled: bool) -> None:
    _debug["on"] = enabled
    logging.basicConfig(
        level=logging.DEBUG if enabled else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


@contextmanager
def reported_errors() -> Iterator[None]:
    """MedHeaven errors become one red line on stderr and exit status 2; ``--debug`` keeps the traceback."""
    try:
        yield
    except MedHeavenError as exc:
        if _debug["on"]:
            raise
        stderr.print(f"[red]error: {escape(str(exc))}[/red]", soft_wrap=True)
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        stderr.print("[yellow]interrupted[/yellow]")
        raise typer.Exit(130) from None


def command(func: Callable[P, R]) -> Callable[P, R]:
    @wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        with reported_errors():
            return func(*args, **kwargs)

    return wrapper


#: ``--store`` of every command that reads or writes the store; ``open_store_option`` opens what it names.
StoreOption = Annotated[
    str | None, typer.Option("--store", help="file:///path or drive://<folder-id>; default MEDHEAVEN_STORE.")
]


def open_store_option(url: str | None) -> Store:
    """The store ``--store`` names, with the process's settings (MEDHEAVEN_STORE when the option is not given)."""
    from medheaven.settings import Settings
    from medheaven.store import open_store

    settings = Settings() if url is None else Settings(store=url)
    return open_store(settings.store, settings=settings)


def print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, sort_keys=True, default=str))

"""``medheaven demo``: a command of the ``medheaven`` CLI that lives on the application side.

The library's CLI cannot import the coordinator (``medheaven/`` depends on nothing above it), so this command is
a plugin: ``pyproject.toml`` declares it in the ``medheaven.commands`` entry-point group and ``medheaven.cli``
loads it when the command is asked for.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from coordinator import options
from medheaven.cli.support import command, print_json
from medheaven.federated.server_optimiser import ServerOptimiser
from medheaven.privacy.config import DpConfig


@command
@options.DP_OPTIONS
@options.SERVER_OPTIONS
@options.RECIPE_OPTIONS
def demo(
    data: Annotated[Path | None, typer.Option("--data", help="Data file; default: synthetic diabetes130.")] = None,
    schema: Annotated[str, typer.Option("--schema")] = "diabetes130",
    schema_file: Annotated[Path | None, typer.Option("--schema-file")] = None,
    hospitals: Annotated[int, typer.Option("--hospitals", min=1)] = 3,
    rounds: Annotated[int, typer.Option("--rounds", min=1)] = 5,
    scheme: Annotated[str, typer.Option("--scheme", help="iid | dirichlet:ALPHA | column:NAME")] = "iid",
    seed: Annotated[int, typer.Option("--seed")] = 0,
    rows: Annotated[int, typer.Option("--synthetic-rows", help="Size of the synthetic data set.")] = 20000,
    out: Annotated[Path, typer.Option("--out", help="Working folder (data, keys, store).")] = Path("medheaven-demo"),
    plaintext: Annotated[
        bool, typer.Option("--plaintext-insecure", help="INSECURE comparison mode: no encryption.")
    ] = False,
    json_output: Annotated[bool, typer.Option("--json")] = False,
    *,
    recipe: options.LocalRecipe,  # the options of the three groups above
    server: ServerOptimiser,
    dp: DpConfig | None,
) -> None:
    """Run a whole encrypted federation on this machine: split data, key ceremony, rounds, test, verification.

    With no services configured it runs in one process (Celery memory:// transport, worker threads). With
    MEDHEAVEN_BROKER_URL=redis://... it starts real worker processes over Redis instead.

    Example: medheaven demo --hospitals 3 --rounds 5
    """
    from coordinator.demo import run_demo

    report = run_demo(
        out=out,
        data=data,
        schema=schema,
        schema_file=schema_file,
        hospitals=hospitals,
        rounds=rounds,
        scheme=scheme,
        recipe=recipe,
        server=server,
        dp=dp,
        seed=seed,
        synthetic_rows=rows,
        plaintext=plaintext,
        quiet=json_output,
    )
    if json_output:
        print_json(report)

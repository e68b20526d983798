"""``medheaven demo``: a command of the ``medheaven`` CLI that lives on the application side.

The library's CLI cannot import the coordinator (``medheaven/`` depends on nothing above it), so this command is
a plugin: ``pyproject.toml`` declares it in the ``medheaven.commands`` entry-point group and ``medheaven.cli``
loads it when the command is asked for.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from coordinator.options import (
    DP_BATCH,
    DP_CLIP,
    DP_DELTA,
    DP_EPOCHS,
    DP_LEARNING_RATE,
    DP_METRICS,
    DP_NOISE,
    DP_OPTIMIZER,
    SERVER_OPTIMISER,
    DpBatchOption,
    DpClipOption,
    DpDeltaOption,
    DpEpochsOption,
    DpEpsilonOption,
    DpLearningRateOption,
    DpMetricsOption,
    DpNoiseOption,
    DpOptimizerOption,
    ServerLrOption,
    ServerMomentumOption,
    ServerOptimiserOption,
    dp_config,
    server_step,
)
from medheaven.cli.support import command, print_json


@command
def demo(
    data: Annotated[Path | None, typer.Option("--data", help="Data file; default: synthetic diabetes130.")] = None,
    schema: Annotated[str, typer.Option("--schema")] = "diabetes130",
    schema_file: Annotated[Path | None, typer.Option("--schema-file")] = None,
    hospitals: Annotated[int, typer.Option("--hospitals", min=1)] = 3,
    rounds: Annotated[int, typer.Option("--rounds", min=1)] = 5,
    scheme: Annotated[str, typer.Option("--scheme", help="iid | dirichlet:ALPHA | column:NAME")] = "iid",
    epochs: Annotated[int, typer.Option("--local-epochs", min=1)] = 1,
    # batch 256 with FedAvgM (momentum 0.5): the best mean validation ROC-AUC of the grid in BENCHMARKS.md ("Recipe")
    batch_size: Annotated[int, typer.Option("--batch-size", min=1)] = 256,
    learning_rate: Annotated[float, typer.Option("--learning-rate")] = 1e-3,
    lr_decay: Annotated[float, typer.Option("--lr-decay", help="Round r trains at rate * decay^(r-1).")] = 1.0,
    server_optimiser: ServerOptimiserOption = SERVER_OPTIMISER,
    server_lr: ServerLrOption = None,
    server_momentum: ServerMomentumOption = None,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    rows: Annotated[int, typer.Option("--synthetic-rows", help="Size of the synthetic data set.")] = 20000,
    out: Annotated[Path, typer.Option("--out", help="Working folder (data, keys, store).")] = Path("medheaven-demo"),
    plaintext: Annotated[
        bool, typer.Option("--plaintext-insecure", help="INSECURE comparison mode: no encryption.")
    ] = False,
    json_output: Annotated[bool, typer.Option("--json")] = False,
    dp_epsilon: DpEpsilonOption = None,
    dp_delta: DpDeltaOption = DP_DELTA,
    dp_clip: DpClipOption = DP_CLIP,
    dp_noise: DpNoiseOption = DP_NOISE,
    dp_metrics: DpMetricsOption = DP_METRICS,
    dp_batch: DpBatchOption = DP_BATCH,
    dp_epochs: DpEpochsOption = DP_EPOCHS,
    dp_learning_rate: DpLearningRateOption = DP_LEARNING_RATE,
    dp_optimizer: DpOptimizerOption = DP_OPTIMIZER,
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
        epochs=epochs,
        batch_size=batch_size,
        learning_rate=learning_rate,
        lr_decay=lr_decay,
        server=server_step(server_optimiser, server_lr, server_momentum),
        dp=dp_config(
            dp_epsilon, dp_delta, dp_clip, dp_noise, dp_metrics, dp_batch, dp_epochs, dp_learning_rate, dp_optimizer
        ),
        seed=seed,
        synthetic_rows=rows,
        plaintext=plaintext,
        quiet=json_output,
    )
    if json_output:
        print_json(report)

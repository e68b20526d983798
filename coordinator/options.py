"""Command-line options shared by ``medheaven-coordinator run`` and ``medheaven demo``: one definition each.

A command takes them as parameters typed with these aliases and turns them into the run's records with the
functions below, so both commands accept, default, document and validate the same values the same way.
"""

from __future__ import annotations

from typing import Annotated

import typer

from medheaven.federated.server_optimiser import ServerOptimiser
from medheaven.federated.wire import LocalTraining
from medheaven.privacy.config import (
    RECIPE_BATCH_PATIENTS,
    RECIPE_CLIP,
    RECIPE_EPOCHS,
    RECIPE_LEARNING_RATE,
    RECIPE_OPTIMIZER,
    DpConfig,
)

DpEpsilonOption = Annotated[
    float | None, typer.Option("--dp-epsilon", help="Patient-level DP-SGD: target ε per hospital (off if unset).")
]
DpDeltaOption = Annotated[float, typer.Option("--dp-delta", help="DP δ (with --dp-epsilon).")]
DpClipOption = Annotated[float, typer.Option("--dp-clip", help="DP-SGD clipping norm C per patient.")]
DpNoiseOption = Annotated[
    float, typer.Option("--dp-noise", help="Fix z instead of calibrating it from ε and --rounds.")
]
DpMetricsOption = Annotated[
    bool, typer.Option("--dp-metrics/--no-dp-metrics", help="Report validation metrics (not DP; see README).")
]
# DP-SGD's own recipe, in place of --batch-size/--local-epochs/--learning-rate (PRIVACY.md, "Choosing the recipe")
DpBatchOption = Annotated[
    int, typer.Option("--dp-batch-patients", min=1, help="DP-SGD: expected patients per Poisson-sampled step.")
]
DpEpochsOption = Annotated[float, typer.Option("--dp-epochs", help="DP-SGD: expected passes over patients per round.")]
DpLearningRateOption = Annotated[float, typer.Option("--dp-learning-rate", help="DP-SGD: local learning rate.")]
DpOptimizerOption = Annotated[str, typer.Option("--dp-optimizer", help="DP-SGD: local optimiser, adam | sgd.")]
#: Defaults of the options above (Annotated options take their default from the parameter, so it is kept here once).
DP_DELTA, DP_CLIP, DP_NOISE, DP_METRICS = 1e-5, RECIPE_CLIP, 0.0, True
DP_BATCH, DP_EPOCHS, DP_LEARNING_RATE, DP_OPTIMIZER = (
    RECIPE_BATCH_PATIENTS,
    RECIPE_EPOCHS,
    RECIPE_LEARNING_RATE,
    RECIPE_OPTIMIZER,
)

ServerOptimiserOption = Annotated[
    str, typer.Option("--server-optimiser", help="Server step the hospitals apply: fedavg | fedavgm | fedadam.")
]
ServerLrOption = Annotated[
    float | None, typer.Option("--server-lr", help="Server learning rate (default: 1 fedavgm, 0.01 fedadam).")
]
ServerMomentumOption = Annotated[
    float | None, typer.Option("--server-momentum", help="FedAvgM momentum (default 0.5) / FedAdam beta_1 (0.9).")
]
#: FedAvgM (momentum 0.5) with batch 256: the best mean validation ROC-AUC of the grid in BENCHMARKS.md ("Recipe")
SERVER_OPTIMISER = "fedavgm"

LocalEpochsOption = Annotated[int, typer.Option("--local-epochs", min=1, help="Local epochs per round.")]
BatchSizeOption = Annotated[int, typer.Option("--batch-size", min=1, help="Local batch size.")]
LearningRateOption = Annotated[float, typer.Option("--learning-rate", help="Local Adam learning rate of round 1.")]
LrDecayOption = Annotated[float, typer.Option("--lr-decay", help="Round r trains at rate * decay^(r-1).")]
#: The local recipe, chosen by patient-level 3-fold cross-validation of the training patients (benchmarks.recipe_cv,
#: BENCHMARKS.md "Recipe"): Adam 2e-3 decayed 0.9 per round beat a constant 1e-3 on every fold (mean validation
#: ROC-AUC after 10 rounds 0.668 vs 0.667) and a constant 2e-3 (0.666), which plateaus from round 6.
LOCAL_EPOCHS, BATCH_SIZE, LEARNING_RATE, LR_DECAY = 1, 256, 2e-3, 0.9


def server_step(kind: str, learning_rate: float | None, momentum: float | None) -> ServerOptimiser:
    """The server step the options ask for; ``ServerOptimiser.parse`` refuses unknown kinds and bad values."""
    return ServerOptimiser.parse(kind, learning_rate=learning_rate, momentum=momentum)


def dp_config(
    epsilon: float | None,
    delta: float,
    clip: float,
    noise: float,
    metrics: bool,
    batch_patients: int = DP_BATCH,
    epochs: float = DP_EPOCHS,
    learning_rate: float = DP_LEARNING_RATE,
    optimizer: str = DP_OPTIMIZER,
) -> DpConfig | None:
    """The DP-SGD setting the options ask for (None without ``--dp-epsilon``), arguments in the options' order
    (``DpConfig``'s fields); ``DpConfig`` refuses bad values."""
    if epsilon is None:
        return None
    return DpConfig(epsilon, delta, clip, noise, metrics, batch_patients, epochs, learning_rate, optimizer)


def local_training(
    *,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    rounds: int,
    dp: DpConfig | None,
    lr_decay: float = LR_DECAY,
) -> LocalTraining:
    # planned_rounds is what a hospital calibrates its DP-SGD noise for: the run's number of rounds
    return LocalTraining(
        epochs=epochs, batch_size=batch_size, learning_rate=learning_rate, lr_decay=lr_decay, dp=dp,
        planned_rounds=rounds,
    )  # fmt: skip

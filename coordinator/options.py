"""Command-line options shared by ``medheaven-coordinator run`` and ``medheaven demo``: one definition each.

A command takes them as parameters typed with these aliases and turns them into the run's records with the
functions below, so both commands accept, default, document and validate the same values the same way.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

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


def server_step(
    server_optimiser: ServerOptimiserOption = SERVER_OPTIMISER,
    server_lr: ServerLrOption = None,
    server_momentum: ServerMomentumOption = None,
) -> ServerOptimiser:
    """The server step the options ask for; ``ServerOptimiser.parse`` refuses unknown kinds and bad values."""
    return ServerOptimiser.parse(server_optimiser, learning_rate=server_lr, momentum=server_momentum)


def dp_config(
    dp_epsilon: DpEpsilonOption = None,
    dp_delta: DpDeltaOption = DP_DELTA,
    dp_clip: DpClipOption = DP_CLIP,
    dp_noise: DpNoiseOption = DP_NOISE,
    dp_metrics: DpMetricsOption = DP_METRICS,
    dp_batch: DpBatchOption = DP_BATCH,
    dp_epochs: DpEpochsOption = DP_EPOCHS,
    dp_learning_rate: DpLearningRateOption = DP_LEARNING_RATE,
    dp_optimizer: DpOptimizerOption = DP_OPTIMIZER,
) -> DpConfig | None:
    """The DP-SGD setting the options ask for (None without ``--dp-epsilon``), arguments in the options' order
    (``DpConfig``'s fields); ``DpConfig`` refuses bad values."""
    if dp_epsilon is None:
        return None
    return DpConfig(
        dp_epsilon, dp_delta, dp_clip, dp_noise, dp_metrics, dp_batch, dp_epochs, dp_learning_rate, dp_optimizer
    )


@dataclass(frozen=True)
class LocalRecipe:
    """The non-private local training a run's options ask for (DP-SGD has its own, in ``DpConfig``); the fields'
    types are the options' (to mypy and to the record, plain ``int`` and ``float``)."""

    local_epochs: LocalEpochsOption = LOCAL_EPOCHS
    batch_size: BatchSizeOption = BATCH_SIZE
    learning_rate: LearningRateOption = LEARNING_RATE
    lr_decay: LrDecayOption = LR_DECAY

    def training(self, *, rounds: int, dp: DpConfig | None) -> LocalTraining:
        return local_training(
            epochs=self.local_epochs, batch_size=self.batch_size, learning_rate=self.learning_rate,
            lr_decay=self.lr_decay, rounds=rounds, dp=dp,
        )  # fmt: skip


_R = TypeVar("_R")


@dataclass(frozen=True)
class OptionGroup:
    """Options that several commands share and that build one value: the command takes that value.

    The options are the parameters of ``build`` (names, ``typer.Option`` types and defaults), so they are declared
    once. Used as a decorator, the group replaces the command's keyword parameter ``parameter`` by them and calls the
    command with ``build(**their values)``. Typer has no option groups; it reads a command's parameters from its
    signature, which the decorator rewrites.
    """

    parameter: str
    build: Callable[..., object]

    def options(self) -> list[inspect.Parameter]:
        return [
            p.replace(kind=inspect.Parameter.KEYWORD_ONLY)
            for p in inspect.signature(self.build, eval_str=True).parameters.values()
        ]

    def __call__(self, command: Callable[..., _R]) -> Callable[..., _R]:
        signature, options = inspect.signature(command, eval_str=True), self.options()
        if self.parameter not in signature.parameters:
            raise TypeError(f"{command.__qualname__} has no parameter {self.parameter} for the options it takes")
        if clash := sorted({p.name for p in options} & set(signature.parameters)):
            raise TypeError(f"{command.__qualname__} already has parameters {', '.join(clash)} of {self.parameter}")
        kept = [
            p.replace(kind=inspect.Parameter.KEYWORD_ONLY)
            for p in signature.parameters.values()
            if p.name != self.parameter
        ]
        names = [p.name for p in options]

        @functools.wraps(command)
        def wrapper(*args: Any, **kwargs: Any) -> _R:
            values = {name: kwargs.pop(name) for name in names if name in kwargs}
            return command(*args, **kwargs, **{self.parameter: self.build(**values)})

        parameters = kept + options
        wrapper.__signature__ = signature.replace(parameters=parameters)  # type: ignore[attr-defined]
        wrapper.__annotations__ = {p.name: p.annotation for p in parameters} | {"return": signature.return_annotation}
        return wrapper


#: ``--local-epochs --batch-size --learning-rate --lr-decay`` as a command's ``recipe: LocalRecipe``,
#: ``--server-*`` as its ``server: ServerOptimiser``, the nine ``--dp-*`` as its ``dp: DpConfig | None``.
RECIPE_OPTIONS, SERVER_OPTIONS = OptionGroup("recipe", LocalRecipe), OptionGroup("server", server_step)
DP_OPTIONS = OptionGroup("dp", dp_config)


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

"""The privacy setting of a run, as data: it travels in the run configuration and in every round's training spec."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from medheaven.errors import ConfigurationError

# the coordinator recognises a hospital's refusal (privacy.local.PrivacyBudgetError) by this prefix in the task's
# error text (it crosses the broker as text); here, not in privacy.local, so that the coordinator need not load the
# accountant and dp-accounting to know it
BUDGET_MARKER = "privacy budget spent:"

OPTIMIZERS = ("adam", "sgd")

#: The DP-SGD recipe chosen on the hospitals' validation patients (PRIVACY.md, "Choosing the recipe"; the test split
#: was not read) under the product's server step and learning-rate decay: large Poisson batches of patients, a
#: learning rate well above the non-private one, Adam, and a clipping norm C above most patients' gradient norms
#: (median ~6 at the initial model, and falling for the 89% never readmitted as the model learns). A C below them
#: clips nearly everyone, so each patient pushes the output with the same force whatever their error, and the
#: never-readmitted majority drives every predicted risk far below the readmission rate ("Clipping bias": mean risk
#: 0.004 against 0.11 at C = 0.3, 0.11 at C = 10).
RECIPE_BATCH_PATIENTS = 2048
RECIPE_EPOCHS = 2.0
RECIPE_LEARNING_RATE = 1e-2
RECIPE_OPTIMIZER = "adam"
RECIPE_CLIP = 10.0
#: what a record written without a clipping norm was trained with (every DpConfig record carries one)
LEGACY_CLIP = 1.0


@dataclass(frozen=True)
class DpConfig:
    """Patient-level DP-SGD setting for every hospital of a run.

    ``noise_multiplier`` (z) is either given, or calibrated before round 1 from ``target_epsilon`` for the planned
    ``rounds`` x local steps (see :func:`medheaven.privacy.accountant.calibrate_noise`). ``clip`` is C, the L2 bound on
    one patient's gradient contribution per step. ``release_metrics`` switches off the per-round validation metrics a
    hospital reports in the clear (they are *not* covered by the accountant; see README "Differential privacy").

    The DP-SGD recipe of the local training, in place of the run's non-private one (``LocalTraining``):
    ``batch_patients`` is the *expected* number of patients per step (each hospital samples each of its patients
    with q = batch_patients / its training patients, capped at 1, so a small hospital has a large q and calibrates
    a larger z); ``epochs`` the expected passes over a hospital's patients per round (round(epochs / q) steps);
    ``learning_rate`` and ``optimizer`` those of the hospital's local optimiser. The defaults (and ``clip``'s) are the
    recipe chosen on validation (``RECIPE_*``); ``None`` (what ``from_dict`` gives a record written before these fields existed)
    takes the run's non-private value.
    """

    target_epsilon: float
    delta: float
    clip: float = RECIPE_CLIP
    noise_multiplier: float = 0.0  # 0 until calibrated
    release_metrics: bool = True
    batch_patients: int | None = RECIPE_BATCH_PATIENTS
    epochs: float | None = RECIPE_EPOCHS
    learning_rate: float | None = RECIPE_LEARNING_RATE
    optimizer: str | None = RECIPE_OPTIMIZER

    def __post_init__(self) -> None:
        if not (math.isfinite(self.target_epsilon) and self.target_epsilon > 0):
            raise ConfigurationError(f"dp: target epsilon must be > 0, got {self.target_epsilon}")
        if not 0.0 < self.delta < 1.0:
            raise ConfigurationError(f"dp: delta must be in (0, 1), got {self.delta}; 1e-5 is typical")
        if not (math.isfinite(self.clip) and self.clip > 0):
            raise ConfigurationError(f"dp: clipping norm C must be > 0, got {self.clip}")
        if not (math.isfinite(self.noise_multiplier) and self.noise_multiplier >= 0):
            raise ConfigurationError(f"dp: noise multiplier z must be >= 0, got {self.noise_multiplier}")
        if self.batch_patients is not None and self.batch_patients < 1:
            raise ConfigurationError(f"dp: expected batch of patients must be >= 1, got {self.batch_patients}")
        for name in ("epochs", "learning_rate"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value > 0):
                raise ConfigurationError(f"dp: {name} must be > 0, got {value}")
        if self.optimizer is not None and self.optimizer not in OPTIMIZERS:
            raise ConfigurationError(f"dp: optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")

    @property
    def calibrated(self) -> bool:
        return self.noise_multiplier > 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DpConfig:
        try:
            return cls(
                target_epsilon=float(data["target_epsilon"]),
                delta=float(data["delta"]),
                clip=float(data.get("clip", LEGACY_CLIP)),
                noise_multiplier=float(data.get("noise_multiplier", 0.0)),
                release_metrics=bool(data.get("release_metrics", True)),
                batch_patients=None if data.get("batch_patients") is None else int(data["batch_patients"]),
                epochs=None if data.get("epochs") is None else float(data["epochs"]),
                learning_rate=None if data.get("learning_rate") is None else float(data["learning_rate"]),
                optimizer=None if data.get("optimizer") is None else str(data["optimizer"]),
            )
        except KeyError as missing:
            raise ConfigurationError(f"dp config lacks the field {missing}; give target_epsilon and delta") from None


@dataclass(frozen=True)
class PrivateSchedule:
    """What a hospital plans its DP-SGD rounds from: the run's DP setting, the rounds z is calibrated for, and the
    recipe's expected passes over its patients per round and expected patients per step (``LocalTraining`` resolves
    the last two against the run's non-private recipe)."""

    dp: DpConfig
    planned_rounds: int
    epochs: float
    batch_patients: int

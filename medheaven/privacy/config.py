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


@dataclass(frozen=True)
class DpConfig:
    """Patient-level DP-SGD setting for every hospital of a run.

    ``noise_multiplier`` (z) is either given, or calibrated before round 1 from ``target_epsilon`` for the planned
    ``rounds`` x local steps (see :func:`medheaven.privacy.accountant.calibrate_noise`). ``clip`` is C, the L2 bound on
    one patient's gradient contribution per step. ``release_metrics`` switches off the per-round validation metrics a
    hospital reports in the clear (they are *not* covered by the accountant; see README "Differential privacy").
    """

    target_epsilon: float
    delta: float
    clip: float = 1.0
    noise_multiplier: float = 0.0  # 0 until calibrated
    release_metrics: bool = True

    def __post_init__(self) -> None:
        if not (math.isfinite(self.target_epsilon) and self.target_epsilon > 0):
            raise ConfigurationError(f"dp: target epsilon must be > 0, got {self.target_epsilon}")
        if not 0.0 < self.delta < 1.0:
            raise ConfigurationError(f"dp: delta must be in (0, 1), got {self.delta}; 1e-5 is typical")
        if not (math.isfinite(self.clip) and self.clip > 0):
            raise ConfigurationError(f"dp: clipping norm C must be > 0, got {self.clip}")
        if not (math.isfinite(self.noise_multiplier) and self.noise_multiplier >= 0):
            raise ConfigurationError(f"dp: noise multiplier z must be >= 0, got {self.noise_multiplier}")

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
                clip=float(data.get("clip", 1.0)),
                noise_multiplier=float(data.get("noise_multiplier", 0.0)),
                release_metrics=bool(data.get("release_metrics", True)),
            )
        except KeyError as missing:
            raise ConfigurationError(f"dp config lacks the field {missing}; give target_epsilon and delta") from None

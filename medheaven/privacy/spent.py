"""The (ε, δ) behind one global model, per hospital: what `medheaven report`, `medheaven-coordinator status` and the
exported model's metadata show.

A hospital's receipt carries its *cumulative* spend (its ledger's ε over every round it trained in, retried attempts
included), signed with the update. The model of round r depends on a hospital's patients only through that
hospital's updates folded into rounds <= r, so the hospital's ε for that model is the one it reported in the last
such round (post-processing never adds to ε). A hospital never folded into rounds <= r contributed no update, and
so no DP-SGD spend, to it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from medheaven.privacy.config import DpConfig
from medheaven.records import decode_record

UNIT = "patient"


@dataclass(frozen=True)
class HospitalSpend:
    epsilon: float
    delta: float
    noise_multiplier: float = 0.0
    round: int = 0  # the last round <= the model's round whose receipt reported it

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> HospitalSpend:
        return decode_record(cls, data, what="spent privacy")


@dataclass(frozen=True)
class ModelPrivacy:
    """A run's DP-SGD setting and each hospital's spent (ε, δ) for one global model."""

    target_epsilon: float
    delta: float
    clip: float
    release_metrics: bool
    per_hospital: dict[str, HospitalSpend] = field(default_factory=dict)
    model_round: int = 0
    unit: str = UNIT

    @property
    def max_epsilon(self) -> float:
        return max((s.epsilon for s in self.per_hospital.values()), default=0.0)

    def lines(self) -> list[str]:
        """Operator-facing text: one header line, then one line per hospital."""
        head = (
            f"differential privacy (per {self.unit}, DP-SGD): target ε={self.target_epsilon:g}, δ={self.delta:g}, "
            f"clip C={self.clip:g}; validation metrics {'released (not DP)' if self.release_metrics else 'withheld'}"
        )
        rows = [
            f"  {h}: ε={s.epsilon:.3f}, δ={s.delta:g} (z={s.noise_multiplier:.3f}, as reported in round {s.round})"
            for h, s in sorted(self.per_hospital.items())
        ]
        return [head, *(rows or ["  no hospital has trained yet (ε=0)"])]

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["per_hospital"] = {h: asdict(s) for h, s in sorted(self.per_hospital.items())}
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelPrivacy:
        return decode_record(cls, data, what="model privacy record")


def spent_by_hospital(
    rounds: Iterable[tuple[int, Mapping[str, Mapping[str, Any]]]], *, up_to: int | None = None
) -> dict[str, HospitalSpend]:
    """Each hospital's last reported spend over ``(round, {hospital: receipt privacy})`` pairs with round <= up_to."""
    spent: dict[str, HospitalSpend] = {}
    for number, per_hospital in sorted(rounds, key=lambda item: item[0]):
        if up_to is not None and number > up_to:
            continue
        for hospital, privacy in per_hospital.items():
            if privacy:
                spent[str(hospital)] = HospitalSpend.from_dict({**privacy, "round": number})
    return spent


def model_privacy(
    dp: DpConfig | None,
    rounds: Iterable[tuple[int, Mapping[str, Mapping[str, Any]]]],
    *,
    up_to: int | None = None,
) -> ModelPrivacy | None:
    """The privacy record of the model after round ``up_to`` (default: the last round given); None without DP."""
    if dp is None:
        return None
    pairs = list(rounds)
    last = max((r for r, _ in pairs if up_to is None or r <= up_to), default=0)
    return ModelPrivacy(
        target_epsilon=dp.target_epsilon,
        delta=dp.delta,
        clip=dp.clip,
        release_metrics=dp.release_metrics,
        per_hospital=spent_by_hospital(pairs, up_to=up_to),
        model_round=last if up_to is None else up_to,
    )


def run_dp(config: Mapping[str, Any]) -> DpConfig | None:
    """The DP setting from a stored run configuration (``run.json`` as a dict)."""
    dp = dict(config.get("training", {})).get("dp")
    return DpConfig.from_dict(dp) if dp else None

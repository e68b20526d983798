"""Privacy accounting with Google's ``dp-accounting`` (RDP accountant, add-or-remove-one-patient neighbouring).

Why RDP rather than PLD: the RDP accountant composes thousands of Poisson-sampled Gaussian steps in microseconds and
is the accountant DP-SGD's analysis (Abadi et al. 2016; Mironov et al. 2019) was written for; PLD is tighter by
a few percent but slower to calibrate by bisection. The reported ε is therefore a valid, slightly conservative bound.

One DP-SGD step = ``PoissonSampledDpEvent(q, GaussianDpEvent(z))`` with q = expected batch patients / patients.
A hospital's whole history is that event self-composed over every step of every round it trained in.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import dp_accounting
from dp_accounting import rdp

from medheaven.errors import ConfigurationError

# a standard grid of Rényi orders: dense at small orders where DP-SGD's optimum lies for ε in [0.5, 10]
RDP_ORDERS: tuple[float, ...] = (
    *(1.0 + x / 10.0 for x in range(1, 100)),
    *(float(a) for a in range(11, 64)),
    128.0,
    256.0,
    512.0,
)


def step_event(sampling_rate: float, noise_multiplier: float, steps: int) -> dp_accounting.DpEvent:
    if not 0.0 < sampling_rate <= 1.0:
        raise ConfigurationError(f"dp: patient sampling rate must be in (0, 1], got {sampling_rate}")
    return dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(sampling_rate, dp_accounting.GaussianDpEvent(noise_multiplier)), steps
    )


def epsilon_for(sampling_rate: float, noise_multiplier: float, steps: int, delta: float) -> float:
    """ε after ``steps`` Poisson-sampled Gaussian steps (0 steps spend nothing)."""
    if steps == 0:
        return 0.0
    accountant = rdp.RdpAccountant(RDP_ORDERS)
    accountant.compose(step_event(sampling_rate, noise_multiplier, steps))
    return float(accountant.get_epsilon(delta))


def calibrate_noise(target_epsilon: float, delta: float, sampling_rate: float, steps: int) -> float:
    """The smallest z whose ε over ``steps`` is at most ``target_epsilon`` (bisection by dp-accounting, tol 1e-4)."""
    if steps < 1:
        raise ConfigurationError(f"dp: calibration needs at least one planned step, got {steps}")
    z = dp_accounting.calibrate_dp_mechanism(
        lambda: rdp.RdpAccountant(RDP_ORDERS),
        lambda noise: step_event(sampling_rate, noise, steps),
        target_epsilon,
        delta,
        dp_accounting.LowerEndpointAndGuess(0.05, 1.0),
        tol=1e-4,
    )
    return float(z)


def within_budget(epsilon: float, budget: float) -> bool:
    """Whether a spend of ``epsilon`` is within ``budget``: the one test the hospital's refusal and the coordinator's
    exclusion of a hospital that cannot afford a round both apply (the slack absorbs calibration's bisection tol)."""
    return epsilon <= budget * (1.0 + 1e-6) + 1e-3 * budget


@dataclass(frozen=True)
class LedgerEntry:
    round: int
    steps: int
    sampling_rate: float
    noise_multiplier: float


@dataclass(frozen=True)
class PrivacyLedger:
    """One hospital's spent privacy: every round it trained in, persisted next to its state so a restart keeps it."""

    budget_epsilon: float
    delta: float
    entries: tuple[LedgerEntry, ...] = ()

    def spent(self) -> float:
        # RDP composes additively, so the rounds run with one (q, z) are one self-composed event of all their steps:
        # the same ε, computed once per distinct (q, z) rather than once per round (each costs up to ~1 s for large q)
        steps: dict[tuple[float, float], int] = {}
        for entry in self.entries:
            key = (entry.sampling_rate, entry.noise_multiplier)
            steps[key] = steps.get(key, 0) + entry.steps
        accountant = rdp.RdpAccountant(RDP_ORDERS)
        for (q, z), count in steps.items():
            accountant.compose(step_event(q, z, count))
        return float(accountant.get_epsilon(self.delta)) if self.entries else 0.0

    def after(self, entry: LedgerEntry) -> PrivacyLedger:
        return replace(self, entries=(*self.entries, entry))

    def allows(self, entry: LedgerEntry) -> bool:
        """Whether training one more round as ``entry`` keeps ε within the budget."""
        return within_budget(self.after(entry).spent(), self.budget_epsilon)

    def save(self, path: Path) -> None:
        """Atomic write (temp file + rename): a crash mid-write never loses the spent budget."""
        path.parent.mkdir(parents=True, exist_ok=True)
        body = json.dumps(
            {"budget_epsilon": self.budget_epsilon, "delta": self.delta, "entries": [asdict(e) for e in self.entries]}
        )
        tmp = path.with_suffix(path.suffix + ".tmp")
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(body)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path, *, budget_epsilon: float, delta: float) -> PrivacyLedger:
        if not path.exists():
            return cls(budget_epsilon, delta)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            entries = tuple(LedgerEntry(**e) for e in data["entries"])
        except (ValueError, KeyError, TypeError) as error:
            raise ConfigurationError(
                f"privacy ledger {path} is unreadable ({error}); it records spent ε — restore it, never delete it"
            ) from None
        if not math.isclose(float(data["delta"]), delta):
            raise ConfigurationError(f"privacy ledger {path} was kept at delta={data['delta']}, this run asks {delta}")
        return cls(budget_epsilon, delta, entries)

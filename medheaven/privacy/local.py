"""One hospital's private local training for one round: calibrate z (first round), check the budget, run DP-SGD,
record the spend. The hospital node calls :func:`train_private` instead of ``model.train_epochs`` when the run sets ``dp``.

Calibration is per hospital: q = expected batch patients / that hospital's training patients is private to the
hospital, so each hospital calibrates its own z from the run's target (ε, δ) and planned rounds before its first
round, and every hospital ends at (at most) the same target ε.
"""

from __future__ import annotations

import functools
import weakref
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from medheaven.errors import MedHeavenError
from medheaven.privacy.accountant import LedgerEntry, PrivacyLedger, calibrate_noise
from medheaven.privacy.config import BUDGET_MARKER, DpConfig, PrivateSchedule
from medheaven.privacy.dpsgd import DpSgd, PatientIndex, sampling_rate, steps_per_round

if TYPE_CHECKING:
    import keras


class PrivacyBudgetError(MedHeavenError):
    """The hospital refuses to train: one more round would spend more than the run's target ε."""


#: the receipt field with the ε a hospital's ledger would reach after one more round like its last: how the coordinator
#: knows, before it opens an attempt, that a hospital cannot afford it (``medheaven.privacy.budget``)
NEXT_EPSILON = "next_epsilon"


@dataclass(frozen=True)
class PrivateRound:
    epsilon: float
    delta: float
    noise_multiplier: float
    steps: int
    next_epsilon: float  # ε after one more round of the same steps, sampling rate and z

    def receipt_fields(self) -> dict[str, float]:
        return {
            "epsilon": self.epsilon,
            "delta": self.delta,
            "noise_multiplier": self.noise_multiplier,
            NEXT_EPSILON: self.next_epsilon,
        }


def plan_round(groups: np.ndarray, schedule: PrivateSchedule, *, round_number: int) -> LedgerEntry:
    """What one round of this hospital's DP-SGD spends: its steps, patient sampling rate and z (calibrated from the
    run's target and planned rounds when the run does not fix z)."""
    index, dp = PatientIndex.of(groups), schedule.dp
    q = sampling_rate(schedule.batch_patients, index.n_patients)
    steps = steps_per_round(schedule.epochs, q)
    z = dp.noise_multiplier or _calibrated(dp.target_epsilon, dp.delta, q, steps * max(schedule.planned_rounds, 1))
    return LedgerEntry(round=round_number, steps=steps, sampling_rate=q, noise_multiplier=z)


def budget_standing(ledger_path: Path, entry: LedgerEntry, *, dp: DpConfig) -> dict[str, float]:
    """The receipt fields of a hospital that has not trained in this phase (the statistics phase): what it has
    spent so far and what the next round ``entry`` would bring it to, so the coordinator can leave it out of a round
    it cannot afford instead of opening an attempt that its refusal would close."""
    ledger = PrivacyLedger.load(ledger_path, budget_epsilon=dp.target_epsilon, delta=dp.delta)
    return {
        "epsilon": ledger.spent(),
        "delta": dp.delta,
        "noise_multiplier": entry.noise_multiplier,
        NEXT_EPSILON: ledger.after(entry).spent(),
    }


def train_private(
    model: keras.Model,
    x: np.ndarray,
    y: np.ndarray,
    groups: np.ndarray,
    schedule: PrivateSchedule,
    *,
    round_number: int,
    ledger_path: Path,
    hospital_id: str,
) -> PrivateRound:
    index, dp = PatientIndex.of(groups), schedule.dp
    entry = plan_round(groups, schedule, round_number=round_number)
    ledger = PrivacyLedger.load(ledger_path, budget_epsilon=dp.target_epsilon, delta=dp.delta)
    # a retried attempt of a round counts again: the earlier attempt's model may have been released too
    if not ledger.allows(entry):
        raise PrivacyBudgetError(
            f"{BUDGET_MARKER} hospital {hospital_id!r} has spent ε={ledger.spent():.3f} of its budget {dp.target_epsilon} "
            f"(δ={dp.delta}); round {round_number} would exceed it, so it does not train (ledger {ledger_path})"
        )
    # the spend is recorded before training: a crash mid-round must never under-count released noise
    ledger = ledger.after(entry)
    ledger.save(ledger_path)
    z, steps = entry.noise_multiplier, entry.steps
    private = _dp_sgd(model, dp.clip)
    private.noise_multiplier, private.sampling_rate = z, entry.sampling_rate
    private.train(x, y, index, steps)
    return PrivateRound(
        epsilon=ledger.spent(),
        delta=dp.delta,
        noise_multiplier=z,
        steps=steps,
        next_epsilon=ledger.after(replace(entry, round=round_number + 1)).spent(),
    )


# The same (ε, δ, q, steps) calibrates to the same z every round: a bisection over the accountant took 2-8 s per
# round under load, so a process computes it once.
_calibrated = functools.lru_cache(maxsize=64)(calibrate_noise)

# One DpSgd per model and C in a process: a new one per round traced its compiled functions again every round.
# z and q are plain attributes read per step (NumPy noise and sampling); C is compiled into the ghost-norm graph.
_DP_SGD: weakref.WeakKeyDictionary[keras.Model, dict[float, DpSgd]] = weakref.WeakKeyDictionary()


def _dp_sgd(model: keras.Model, clip: float) -> DpSgd:
    per_clip = _DP_SGD.setdefault(model, {})
    if clip not in per_clip:
        per_clip[clip] = DpSgd(model, clip=clip, noise_multiplier=0.0, sampling_rate=1.0)
    return per_clip[clip]

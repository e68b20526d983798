"""Server-side optimisers (FedAvgM, FedAdam; Reddi et al., "Adaptive Federated Optimization", ICLR 2021) applied
by the hospitals, so that the aggregator stays add-only.

The aggregator still sums what the hospitals encrypt (their locally trained weights times their sample counts) and
``verify`` still checks exactly that sum. What a committed round's envelope decrypts to is the plain FedAvg
average ``avg_r`` of the local models trained from the round's starting model ``x_{r-1}``; its difference
``delta_r = avg_r - x_{r-1}`` is the weighted mean of the hospitals' updates (Reddi et al.'s pseudo-gradient, with
the sign flipped). Every key holder then applies the same server step to get the next model ``x_r``:

* ``fedavg``  (default): ``x_r = avg_r``, bit for bit what every run before this option did;
* ``fedavgm`` (Hsu et al., 2019): ``m_r = momentum * m_{r-1} + delta_r``; ``x_r = x_{r-1} + lr * m_r``;
* ``fedadam`` (Reddi et al., Algorithm 2, no bias correction, as in the paper):
  ``m_r = b1 m_{r-1} + (1 - b1) delta_r``; ``v_r = b2 v_{r-1} + (1 - b2) delta_r^2``;
  ``x_r = x_{r-1} + lr * m_r / (sqrt(v_r) + tau)``.

Why every hospital derives the same model bit for bit: all of them decrypt the same committed bytes under the same
secret key (decryption is deterministic), and the step uses only element-wise float64 ``+ - * / sqrt``, each
correctly rounded by IEEE 754, applied in round order with no reductions, no threads and no fused operations, so
the result does not depend on the machine, the BLAS or the summation order.

Where the optimiser state lives: nowhere new. The state after round ``r`` (``x_r``, ``m_r``, ``v_r``) is a
function of the committed envelopes of rounds ``0..r`` and the run description, so a restarted hospital, ``export``
or ``verify`` re-derives it by replaying the committed rounds (one decryption and one element-wise step per round:
milliseconds for the readmission MLP). The alternative, sealing the state into the global model's envelope, would
need a writer for it: the aggregator cannot compute it (it holds no key) and a single hospital writing it would make
that hospital trusted for everyone's next model; the replay needs neither and keeps the store's contents unchanged.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from medheaven.errors import ConfigurationError
from medheaven.records import decode_record, encode_record

SERVER_OPTIMISER_FORMAT = 1


class ServerOptimiserKind(enum.Enum):
    FEDAVG = "fedavg"
    FEDAVGM = "fedavgm"
    FEDADAM = "fedadam"


_STORED_FIELDS = ("learning_rate", "momentum", "beta_2", "tau")  # all written, so all must be read back


@dataclass(frozen=True)
class ServerOptimiser:
    """The server step of a run (``model.json``); the defaults of each kind follow Reddi et al.'s tuned ranges."""

    kind: ServerOptimiserKind = ServerOptimiserKind.FEDAVG
    learning_rate: float = 1.0
    momentum: float = 0.0  # FedAvgM's beta; FedAdam's beta_1
    beta_2: float = 0.99
    tau: float = 1e-3  # FedAdam's adaptivity: bounds the step where the second moment is tiny

    def __post_init__(self) -> None:
        for name in ("learning_rate", "momentum", "beta_2", "tau"):
            if not math.isfinite(getattr(self, name)):
                raise ConfigurationError(f"server optimiser: {name} must be a finite number, got {getattr(self, name)}")
        if self.learning_rate <= 0:
            raise ConfigurationError(f"server optimiser: --server-lr must be > 0, got {self.learning_rate}")
        if not 0.0 <= self.momentum < 1.0:
            raise ConfigurationError(f"server optimiser: --server-momentum must be in [0, 1), got {self.momentum}")
        if not 0.0 <= self.beta_2 < 1.0:
            raise ConfigurationError(f"server optimiser: beta_2 must be in [0, 1), got {self.beta_2}")
        if self.tau <= 0:
            raise ConfigurationError(f"server optimiser: tau must be > 0, got {self.tau}")

    @property
    def is_plain(self) -> bool:
        return self.kind is ServerOptimiserKind.FEDAVG

    @classmethod
    def parse(cls, kind: str, *, learning_rate: float | None = None, momentum: float | None = None) -> ServerOptimiser:
        """From the command line: ``fedavg``, ``fedavgm`` or ``fedadam`` with optional lr and momentum."""
        try:
            chosen = ServerOptimiserKind(kind.strip().lower())
        except ValueError as exc:
            names = ", ".join(k.value for k in ServerOptimiserKind)
            raise ConfigurationError(f"--server-optimiser {kind!r}: use one of {names}") from exc
        # FedAvgM's 0.5 and FedAdam's 0.01: the grid on the real data (BENCHMARKS.md, "Recipe"), validation only;
        # momentum 0.9 overshot there within 10 rounds (best validation ROC-AUC 0.660 against 0.677)
        defaults = {
            ServerOptimiserKind.FEDAVG: (1.0, 0.0),
            ServerOptimiserKind.FEDAVGM: (1.0, 0.5),
            ServerOptimiserKind.FEDADAM: (0.01, 0.9),
        }[chosen]
        return cls(
            kind=chosen,
            learning_rate=defaults[0] if learning_rate is None else float(learning_rate),
            momentum=defaults[1] if momentum is None else float(momentum),
        )

    def to_dict(self) -> dict[str, Any]:
        return {"format": SERVER_OPTIMISER_FORMAT, **encode_record(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ServerOptimiser:
        if data.get("format") != SERVER_OPTIMISER_FORMAT:
            raise ConfigurationError(
                f"server_optimiser format {data.get('format')!r} is not {SERVER_OPTIMISER_FORMAT}: this MedHeaven "
                "cannot derive the run's models; upgrade it"
            )
        try:
            kind = ServerOptimiserKind(str(data["kind"]))
        except ValueError as exc:
            raise ConfigurationError(f"server_optimiser kind {data['kind']!r} is unknown") from exc
        return decode_record(cls, data, what="server_optimiser", required=_STORED_FIELDS, kind=kind)


@dataclass
class ServerState:
    """The model after ``round`` and the optimiser's moments (float64, never stored: re-derived by replay)."""

    round: int
    model: np.ndarray
    first: np.ndarray
    second: np.ndarray


def server_step(optimiser: ServerOptimiser, state: ServerState, average: np.ndarray) -> ServerState:
    """One deterministic server step from the decrypted FedAvg average of round ``state.round + 1``."""
    average = np.asarray(average, dtype=np.float64)
    if average.shape != state.model.shape:
        raise ConfigurationError(
            f"round {state.round + 1}: the decrypted average has {average.size} weights, the model {state.model.size}"
        )
    if optimiser.is_plain:
        return ServerState(state.round + 1, average.copy(), state.first, state.second)
    delta = average - state.model
    if optimiser.kind is ServerOptimiserKind.FEDAVGM:
        first = optimiser.momentum * state.first + delta
        model = state.model + optimiser.learning_rate * first
        return ServerState(state.round + 1, model, first, state.second)
    first = optimiser.momentum * state.first + (1.0 - optimiser.momentum) * delta
    second = optimiser.beta_2 * state.second + (1.0 - optimiser.beta_2) * (delta * delta)
    model = state.model + optimiser.learning_rate * first / (np.sqrt(second) + optimiser.tau)
    return ServerState(state.round + 1, model, first, second)


class Trajectory:
    """Replays committed rounds into models; keeps the last state so a hospital pays one step per round."""

    def __init__(self, optimiser: ServerOptimiser, average_of: Callable[[int], np.ndarray]) -> None:
        self.optimiser = optimiser
        self.average_of = average_of  # round -> decrypted FedAvg average of that committed round (0: initial model)
        self._state: ServerState | None = None

    def model(self, round_number: int) -> np.ndarray:
        """The global model of committed round ``round_number`` (a copy)."""
        if round_number < 0:
            raise ConfigurationError(f"no global model before round 0 (asked for round {round_number})")
        if self.optimiser.is_plain:
            return np.asarray(self.average_of(round_number), dtype=np.float64)
        state = self._state
        if state is None or state.round > round_number:
            initial = np.asarray(self.average_of(0), dtype=np.float64).copy()
            state = ServerState(0, initial, np.zeros_like(initial), np.zeros_like(initial))
        while state.round < round_number:
            state = server_step(self.optimiser, state, self.average_of(state.round + 1))
        self._state = state
        return state.model.copy()

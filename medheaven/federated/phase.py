"""The kinds of round a run goes through, and everything that differs between them.

A run first sums the hospitals' sufficient statistics for standardisation (``STATS``, once, round 0), then trains
(``UPDATE``, rounds 1..R). Store layout, envelope kinds, the hospital task that answers, the vector length and the
CKKS scale are all properties of the phase, so a caller holds a ``Phase`` and asks it instead of comparing names;
adding a phase is one new member and its rows here.

The values are the strings the wire and the store have always carried (``RoundSpec.kind``, ``Receipt.kind``,
``Manifest.kind``, ledger ``kind``), so the formats are byte-identical to the string-typed version.
"""

from __future__ import annotations

from enum import StrEnum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from medheaven.federated.wire import RunDescription

#: Envelope kind of a committed training round's result (the averaged global model) and of round 0's model.
GLOBAL_ENVELOPE = "global"


class Phase(StrEnum):
    STATS = "stats"  # count, sum and sum of squares per encoded feature, summed once before training
    UPDATE = "update"  # a FedAvg training round: weighted weights plus the weight in the spare slot

    @property
    def trains(self) -> bool:
        """Whether the phase produces a global model (and a history record with metrics)."""
        return self is Phase.UPDATE

    @property
    def upload_kind(self) -> str:
        """Envelope kind of a hospital's contribution."""
        return self.value

    @property
    def result_kind(self) -> str:
        """Envelope kind of the committed sum."""
        return _RESULT_KIND[self]

    @property
    def result_name(self) -> str:
        """File name of the committed sum inside the phase's directory."""
        return _RESULT_NAME[self]

    @property
    def hospital_task(self) -> str:
        """The hospital task that answers the phase (a coordinator may answer with another, see ``coordinator``)."""
        return _HOSPITAL_TASK[self]

    def label(self, round_number: int, rounds: int | None = None) -> str:
        """How the operator's screen names one round of the phase: ``statistics``, ``round 2`` or ``round 2/5``."""
        if self is Phase.STATS:
            return "statistics"
        return f"round {round_number}" + (f"/{rounds}" if rounds is not None else "")

    def directory(self, run: str, round_number: int) -> str:
        # the statistics phase happens once per run, so it has one directory, not one per round
        return f"{run}/stats" if self is Phase.STATS else f"{run}/rounds/{round_number}"

    def updates_directory(self, run: str, round_number: int) -> str:
        return f"{run}/stats/updates" if self is Phase.STATS else f"{run}/updates/{round_number}"

    def vector_length(self, run: RunDescription) -> int:
        """Length of every envelope of the phase (the uploads and the committed sum)."""
        if self is Phase.STATS:
            features = run.layout.n_features
            return 3 * features if run.stats_lanes is None else run.stats_lanes.vector_length(features)
        return run.vector_length

    def scale_bits(self, run: RunDescription) -> int:
        """Scale of the phase's ciphertexts: sums of squares need a smaller scale so they fit the modulus
        (``packing.stats_scale_bits``), or, in the two-limb layout (``bfv_planning.StatsLanes``), integer lanes at
        scale 0 that carry their own step; weights use the run's scale. Plaintext runs carry 0 (see ``protocol``)."""
        if self is Phase.STATS:
            if run.stats_lanes is not None:
                return 0
            from medheaven.crypto.packing import stats_scale_bits

            return stats_scale_bits(run.params, max_abs_feature=run.max_abs_feature)
        return run.params.scale_bits


_RESULT_KIND = {Phase.STATS: Phase.STATS.value, Phase.UPDATE: GLOBAL_ENVELOPE}
_RESULT_NAME = {Phase.STATS: "summed.ckks", Phase.UPDATE: "global.ckks"}
_HOSPITAL_TASK = {Phase.STATS: "stats", Phase.UPDATE: "train"}

"""Typed wire objects: run description, round spec, receipt, manifest.

Each is a frozen dataclass with one ``to_dict``/``from_dict`` pair. They travel as msgpack (Celery) or JSON
(store); never pickle, because loading a pickle runs code. Decoders check types and bound sizes.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import msgpack
import numpy as np

from medheaven.crypto.bfv_planning import StatsLanes
from medheaven.crypto.codec import Parameters, Scheme, parameters_from_dict
from medheaven.crypto.envelope import RUN_ID
from medheaven.errors import ConfigurationError, EnvelopeFormatError, EnvelopeSizeError, SignatureError
from medheaven.feature_layout import FeatureLayout
from medheaven.federated.ledger import LedgerEntry, ledger_entries
from medheaven.federated.phase import Phase
from medheaven.federated.server_optimiser import ServerOptimiser
from medheaven.model import ModelSpec
from medheaven.privacy.config import DpConfig, PrivateSchedule
from medheaven.records import decode_record, encode_record, typed_field

PLAINTEXT_FINGERPRINT = "0" * 64  # the insecure comparison mode's stand-in for a context fingerprint
MAX_RECEIPT_FIELDS = 32
_TRAINING_REQUIRED = ("epochs", "batch_size", "learning_rate", "optimizer")  # the rest has defaults older runs lack
_ENTRIES = ("folded", "rejected")
#: Domain separation of receipt signatures from envelope signatures (same Ed25519 hospital key, distinct messages).
RECEIPT_DOMAIN = b"medheaven/receipt/v1\x00"

if TYPE_CHECKING:
    from medheaven.crypto.signing import HospitalRegistry, SigningKey


@dataclass(frozen=True)
class LocalTraining:
    epochs: int = 1
    batch_size: int = 64
    learning_rate: float = 1e-3
    optimizer: str = "adam"
    lr_decay: float = 1.0  # the learning rate of round r is learning_rate * lr_decay ** (r - 1)
    # patient-level DP-SGD (medheaven.privacy); None trains with plain Keras steps (model.train_epochs). planned_rounds feeds calibration
    dp: DpConfig | None = None
    planned_rounds: int = 1

    def rate_for(self, round_number: int) -> float:
        base = (
            self.dp.learning_rate if self.dp is not None and self.dp.learning_rate is not None else self.learning_rate
        )
        return base * self.lr_decay ** max(round_number - 1, 0)

    # under DP-SGD the run's DP setting carries its own recipe (DpConfig); these resolve it against the plain one
    @property
    def local_optimizer(self) -> str:
        return self.dp.optimizer if self.dp is not None and self.dp.optimizer is not None else self.optimizer

    @property
    def batch_patients(self) -> int:
        """DP-SGD's expected patients per step."""
        return self.dp.batch_patients if self.dp is not None and self.dp.batch_patients is not None else self.batch_size

    @property
    def private_epochs(self) -> float:
        """DP-SGD's expected passes over a hospital's patients per round."""
        return self.dp.epochs if self.dp is not None and self.dp.epochs is not None else float(self.epochs)

    @property
    def private_schedule(self) -> PrivateSchedule | None:
        """What a hospital plans its DP-SGD rounds from; None without DP."""
        if self.dp is None:
            return None
        return PrivateSchedule(self.dp, self.planned_rounds, self.private_epochs, self.batch_patients)

    @property
    def releases_metrics(self) -> bool:
        """Whether hospitals report validation metrics (per round and of the final model): off under DP-SGD with
        ``--no-dp-metrics``, since the accountant does not cover them."""
        return self.dp is None or self.dp.release_metrics

    def to_dict(self) -> dict[str, Any]:
        return encode_record(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LocalTraining:
        dp = DpConfig.from_dict(data["dp"]) if data.get("dp") else None  # {} and null both mean no DP
        return decode_record(cls, data, what="local training settings", required=_TRAINING_REQUIRED, dp=dp)


@dataclass(frozen=True)
class RunDescription:
    """``model.json``: everything about a run that every party needs and that is not secret."""

    run: str
    model: ModelSpec
    params: Parameters
    fingerprint: str
    layout: FeatureLayout
    plaintext: bool = False
    max_abs_feature: float = 1000.0
    #: the server step hospitals apply to each decrypted average (medheaven.federated.server_optimiser); plain FedAvg
    #: is written as format 1 without the field, so descriptions of earlier runs read unchanged and plain runs stay
    #: readable by earlier versions, while a run with a server step is format 2, which earlier readers must refuse
    server: ServerOptimiser = field(default_factory=ServerOptimiser)
    #: how the statistics phase lays out its lanes (``bfv_planning.StatsLanes``: counts, sums and squares in two
    #: limbs). None: one lane per statistic at ``packing.stats_scale_bits`` (ckks, plaintext, and bfv-masked runs
    #: created before the two-lane layout, which stay readable as they were written)
    stats_lanes: StatsLanes | None = None

    @property
    def scheme(self) -> Scheme:
        """Chosen once, by the key set the run was created under (``plaintext`` is the comparison mode)."""
        if self.plaintext:
            return Scheme.PLAINTEXT
        return Scheme.BFV_MASKED if self.params.to_dict().get("scheme") == Scheme.BFV_MASKED.value else Scheme.CKKS

    @property
    def vector_length(self) -> int:
        """Flat weights plus the spare slot holding the (scaled) sample count."""
        return self.model.parameter_count() + 1

    def stats_upload(self, stats: np.ndarray) -> np.ndarray:
        """A hospital's ``[counts, sums, squares]`` (``SufficientStats.to_vector``) as the statistics phase sends it
        in this run: the two-limb lanes if it has them, else as is (``Phase.vector_length`` follows the same rule)."""
        return stats if self.stats_lanes is None else self.stats_lanes.to_lanes(stats)

    def stats_from_sum(self, summed: np.ndarray) -> np.ndarray:
        """The decrypted sum of the statistics phase back to ``[counts, sums, squares]`` (exact recombination)."""
        return summed if self.stats_lanes is None else self.stats_lanes.from_lanes(summed)

    def to_dict(self) -> dict[str, Any]:
        data = {
            "format": 1,
            "run": self.run,
            "model": self.model.to_dict(),
            "weight_shapes": [list(s) for s in self.model.weight_shapes()],
            "weight_order": "model.weights in Keras order (per layer: kernel then bias), each C-order flattened",
            "parameter_count": self.model.parameter_count(),
            "vector_length": self.vector_length,
            "scheme": self.scheme.value,
            "ckks": self.params.to_dict(),  # the key set's parameters (the name predates bfv-masked)
            "fingerprint": self.fingerprint,
            "layout": self.layout.to_dict(),
            "plaintext": self.plaintext,
            "max_abs_feature": self.max_abs_feature,
        }
        if not self.server.is_plain:
            data["format"] = 2
            data["server_optimiser"] = self.server.to_dict()
        if self.stats_lanes is not None:
            data["stats_lanes"] = self.stats_lanes.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunDescription:
        version = data.get("format", 1)
        if version not in (1, 2):
            raise ConfigurationError(
                f"model.json of run {data.get('run')!r} has format {version!r}; this MedHeaven reads formats 1 and 2"
            )
        server = data.get("server_optimiser")
        if version == 2 and not isinstance(server, dict):
            raise ConfigurationError(f"model.json of run {data.get('run')!r} is format 2 but has no server_optimiser")
        return decode_record(
            cls,
            data,
            what=f"model.json of run {data.get('run')!r}",
            params=parameters_from_dict(dict(data["ckks"])),
            server=ServerOptimiser.from_dict(server) if isinstance(server, dict) else ServerOptimiser(),
            stats_lanes=StatsLanes.from_dict(dict(data["stats_lanes"])) if data.get("stats_lanes") else None,
        )


@dataclass(frozen=True)
class RoundSpec:
    """What the coordinator decided for one attempt at one round; round policy lives here as data."""

    run: str
    round: int
    attempt: int
    kind: Phase
    hospitals: tuple[str, ...]
    quorum: int
    deadline: float  # unix time; receipts that reach the aggregator later are rejected as late
    base_sha256: str  # digest of the global model the round starts from ("" for stats)
    training: LocalTraining = field(default_factory=LocalTraining)
    opened_at: float = 0.0
    # The hospitals masked together in this attempt (pairwise masks cancel only in the sum over all of them), fixed
    # when the attempt opens and equal to ``hospitals`` then; empty for unmasked schemes (ckks, plaintext) and for
    # specs written before masking. Every member derives its masks from (run, kind, round, attempt, cohort).
    cohort: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", Phase(self.kind))
        if self.cohort and (sorted(self.cohort) != sorted(self.hospitals) or len(set(self.cohort)) != len(self.cohort)):
            raise EnvelopeFormatError(
                f"{self.kind} round {self.round} attempt {self.attempt}: cohort {list(self.cohort)} is not the "
                f"attempt's hospitals {list(self.hospitals)} (a masked attempt masks exactly the hospitals it asks)"
            )

    def to_dict(self) -> dict[str, Any]:
        return encode_record(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RoundSpec:
        return decode_record(cls, data, what="round spec", required=("training",))


@dataclass(frozen=True)
class Receipt:
    """What a hospital task returns: a reference to its envelope, never the envelope (a few hundred bytes).

    Signed by the hospital (Ed25519, its envelope key, domain-separated by ``RECEIPT_DOMAIN``) over every other field,
    so the attempt, the envelope digest and the completion time cannot be forged or moved to another attempt by
    anyone who can only publish to the broker. ``completed_at`` (unix time, after the upload) is what lateness is
    judged on (``round_policy.lateness``).
    """

    run: str
    round: int
    attempt: int
    kind: Phase
    hospital: str
    key: str
    sha256: str
    size: int
    metrics: dict[str, float] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    completed_at: float = 0.0
    privacy: dict[str, float] = field(default_factory=dict)  # spent ε, δ, z under DP-SGD; empty without DP
    signature: str = ""  # hex Ed25519 signature of signed_message(); "" = unsigned (refused by the aggregator)

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", Phase(self.kind))

    def to_dict(self) -> dict[str, Any]:
        return encode_record(self)

    def signed_message(self) -> bytes:
        """Canonical bytes: every field but the signature, maps as sorted key/value lists (msgpack does not sort)."""
        body = [
            self.run,
            self.round,
            self.attempt,
            self.kind.value,
            self.hospital,
            self.key,
            self.sha256,
            self.size,
            sorted((str(k), float(v)) for k, v in self.metrics.items()),  # floats as the decoder reads them
            sorted((str(k), float(v)) for k, v in self.timings.items()),
            sorted((str(k), float(v)) for k, v in self.privacy.items()),  # spent ε is part of what the hospital signs
            float(self.completed_at),
        ]
        packed: bytes = msgpack.packb(body, use_bin_type=True)
        return RECEIPT_DOMAIN + packed

    def signed_by(self, key: SigningKey) -> Receipt:
        if key.hospital_id != self.hospital:
            raise SignatureError(f"key of {key.hospital_id!r} cannot sign a receipt of {self.hospital!r}")
        return replace(self, signature=key.sign(self.signed_message()).hex())

    def verify(self, registry: HospitalRegistry) -> None:
        """Raise SignatureError/UnknownHospitalError unless the named hospital signed exactly this receipt."""
        if not self.signature:
            raise SignatureError(f"receipt claiming to be from {self.hospital!r} carries no signature")
        registry.verify(self.hospital, self.signed_message(), bytes.fromhex(self.signature))

    @classmethod
    def from_dict(cls, data: Any) -> Receipt:
        """Strict: a receipt arrives over the broker and may be forged or malformed."""
        if not isinstance(data, dict) or len(data) > MAX_RECEIPT_FIELDS:
            raise EnvelopeFormatError(f"receipt must be a small map, got {type(data).__name__}")
        try:
            receipt = cls(
                run=_typed(data, "run", str),
                round=_typed(data, "round", int),
                attempt=_typed(data, "attempt", int),
                kind=_phase(_typed(data, "kind", str)),
                hospital=_typed(data, "hospital", str),
                key=_typed(data, "key", str),
                sha256=_typed(data, "sha256", str),
                size=_typed(data, "size", int),
                metrics=_number_map(data.get("metrics", {}), "metrics"),
                timings=_number_map(data.get("timings", {}), "timings"),
                privacy=_number_map(data.get("privacy", {}), "privacy"),
                completed_at=_number(data.get("completed_at", 0.0), "completed_at"),
                signature=_typed({"signature": data.get("signature", "")}, "signature", str),
            )
        except KeyError as exc:
            raise EnvelopeFormatError(f"receipt is missing field {exc}") from exc
        if not RUN_ID.fullmatch(receipt.run) or len(receipt.key) > 512 or len(receipt.hospital) > 64:
            raise EnvelopeFormatError("receipt run id, key or hospital id is malformed")
        if not re.fullmatch(r"[0-9a-f]{64}", receipt.sha256):
            raise EnvelopeFormatError("receipt sha256 is not a lower-case hex digest")
        if receipt.signature and not re.fullmatch(r"[0-9a-f]{128}", receipt.signature):
            raise EnvelopeFormatError("receipt signature is not 64 bytes of lower-case hex")
        if receipt.size < 0 or receipt.size > 1 << 40 or receipt.round < 0 or receipt.attempt < 0:
            raise EnvelopeSizeError(f"receipt size {receipt.size} or round/attempt out of range")
        return receipt


def _phase(value: str) -> Phase:
    try:
        return Phase(value)
    except ValueError:
        raise EnvelopeFormatError(f"receipt kind {value!r} is not a phase ({', '.join(Phase)})") from None


def _number(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise EnvelopeFormatError(f"receipt field {name!r} must be a finite number")
    return float(value)


def _typed(data: dict[str, Any], name: str, kind: type) -> Any:
    return typed_field(data, name, kind, what="receipt", error=EnvelopeFormatError)


def _number_map(value: Any, name: str) -> dict[str, float]:
    if not isinstance(value, dict) or len(value) > MAX_RECEIPT_FIELDS:
        raise EnvelopeFormatError(f"receipt field {name!r} must be a small map of numbers")
    out: dict[str, float] = {}
    for key, number in value.items():
        if not isinstance(key, str) or len(key) > 64:
            raise EnvelopeFormatError(f"receipt field {name!r} has a malformed key")
        if isinstance(number, bool) or not isinstance(number, int | float) or not math.isfinite(number):
            raise EnvelopeFormatError(f"receipt {name}[{key!r}] must be a finite number")
        out[key] = float(number)
    return out


@dataclass(frozen=True)
class Manifest:
    """The commit record of a round; written last, with create-only semantics."""

    run: str
    round: int
    attempt: int
    kind: Phase
    base_sha256: str
    result_key: str
    result_sha256: str
    result_size: int
    selected: tuple[str, ...]
    folded: tuple[LedgerEntry, ...]  # EntryStatus.FOLDED entries of the attempt's ledger
    rejected: tuple[LedgerEntry, ...]  # EntryStatus.REJECTED entries
    quorum: int
    opened_at: float
    deadline: float
    finalised_at: float
    timings: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", Phase(self.kind))

    @property
    def participants(self) -> tuple[str, ...]:
        return tuple(entry.hospital for entry in self.folded)

    def to_dict(self) -> dict[str, Any]:
        return {**encode_record(self), "format": 1}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Manifest:
        folded, rejected = ledger_entries(data)
        return decode_record(cls, data, what="manifest", required=_ENTRIES, folded=folded, rejected=rejected)

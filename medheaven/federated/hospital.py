"""Hospital side of a round, as plain methods over a store, a key and local data.

A ``HospitalNode`` is what one hospital's worker process holds. It caches, per run, the prepared data, the
federated standardiser and the compiled Keras model, so a round costs one fetch, one decryption, one local
training and one encryption, not a rebuild.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from medheaven.crypto.codec import HospitalCodec, SecretKeys, hospital_codec
from medheaven.crypto.envelope import Envelope
from medheaven.crypto.packing import pack_update
from medheaven.crypto.signing import SigningKey
from medheaven.errors import (
    ConfigurationError,
    DigestMismatchError,
    PackingError,
    RoundClosedError,
    StoreConflictError,
)
from medheaven.evaluation.metrics import binary_metrics
from medheaven.federated.model_pool import ModelSlot, model_slot
from medheaven.federated.paths import RunPaths
from medheaven.federated.phase import Phase
from medheaven.federated.protocol import sha256_hex
from medheaven.federated.release import released_metrics
from medheaven.federated.results import committed_average, committed_standardiser
from medheaven.federated.server_optimiser import Trajectory
from medheaven.federated.wire import PLAINTEXT_FINGERPRINT, LocalTraining, Receipt, RoundSpec, RunDescription
from medheaven.store.base import Store

if TYPE_CHECKING:
    import keras
    import pandas as pd
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    from medheaven.data import HospitalData, Standardiser

log = logging.getLogger(__name__)


@dataclass
class _RunCache:
    description: RunDescription
    data: HospitalData | None = None
    standardiser: Standardiser | None = None
    prepared: dict[str, np.ndarray] = field(default_factory=dict)
    trajectory: Trajectory | None = None  # the server optimiser's replay of committed rounds (server_optimiser.py)


class HospitalNode:
    """One hospital: its data, the shared secret context and its own signing key."""

    def __init__(
        self,
        *,
        hospital_id: str,
        store: Store,
        data_path: Path,
        reader: Callable[[Path], pd.DataFrame],
        secret: SecretKeys | None,
        signing_key: SigningKey,
        agreement_key: X25519PrivateKey | None = None,
        validation_fraction: float = 0.1,
        seed: int = 0,
        audit: bool = False,
    ) -> None:
        if signing_key.hospital_id != hospital_id:
            raise ConfigurationError(
                f"signing key belongs to {signing_key.hospital_id!r}, this node is hospital {hospital_id!r}"
            )
        self.hospital_id = hospital_id
        self.store = store
        self.data_path = data_path
        self.reader = reader  # path -> frame in the cleaned format (medheaven.data.load_dataset with a schema)
        self._frame: pd.DataFrame | None = None
        self.secret = secret
        self.signing_key = signing_key
        # X25519, for the pairwise masks of masked runs; like the secret context it never leaves this process
        self.agreement_key = agreement_key
        self.validation_fraction = validation_fraction
        self.seed = seed
        self._runs: dict[str, _RunCache] = {}
        # simulations only: keep each round's plaintext update in memory so a test or the demo can check the
        # encrypted aggregate against plaintext FedAvg of the very weights that were encrypted
        self.audit = audit
        self.audit_updates: dict[tuple[str, int], np.ndarray] = {}

    # -- caches ------------------------------------------------------------------------------------------
    def _run(self, run: str) -> _RunCache:
        cache = self._runs.get(run)
        if cache is None:
            description = RunDescription.from_dict(self.store.get_json(RunPaths(run).model))
            if not description.plaintext:
                if self.secret is None:
                    raise ConfigurationError(f"run {run!r} is encrypted but hospital {self.hospital_id!r} has no key")
                if description.fingerprint != self.secret.fingerprint:
                    raise ConfigurationError(
                        f"run {run!r} uses key set {description.fingerprint[:12]}…, hospital {self.hospital_id!r} "
                        f"holds {self.secret.fingerprint[:12]}…: install the federation's secret context"
                    )
            cache = _RunCache(description)
            self._runs[run] = cache
        return cache

    def _data(self, cache: _RunCache) -> HospitalData:
        if cache.data is None:
            from medheaven.data import prepare_hospital_data

            if self._frame is None:
                self._frame = self.reader(self.data_path)
            layout = cache.description.layout
            cache.data = prepare_hospital_data(
                self._frame, layout, validation_fraction=self.validation_fraction, seed=self.seed
            )
        return cache.data

    # -- crypto helpers ----------------------------------------------------------------------------------
    def _codec(self, run: RunDescription) -> HospitalCodec:
        return hospital_codec(run.scheme, self.secret, slots=run.params.slots)

    @staticmethod
    def _scale_bits(run: RunDescription, phase: Phase) -> int:
        return 0 if run.plaintext else phase.scale_bits(run)

    def _seal(
        self, run: RunDescription, values: np.ndarray, *, phase: Phase, mask: np.ndarray | None
    ) -> tuple[bytes, ...]:
        return self._codec(run).encode(values, scale_bits=self._scale_bits(run, phase), mask=mask)

    def _check_masked_upload(self, spec: RoundSpec) -> None:
        """Refuse to upload into a masked attempt whose sum could be combined with another to isolate an update.

        A hospital does not rely on the coordinator for this (docs/architecture.md, "Dropouts"): it never uploads
        into an attempt past its deadline or once the attempt has a tombstone (such an upload could only complete a
        failed attempt's sum after its survivors moved on), and never into a fresh attempt whose cohort breaks the
        cohort rule against the round's failed attempts (``round_policy.cohort_violations``).
        """
        from medheaven.federated.cohort import earlier_attempts
        from medheaven.federated.round_policy import cohort_violations

        where = f"{spec.kind} round {spec.round} attempt {spec.attempt} of run {spec.run!r}"
        if self.hospital_id not in spec.cohort:
            raise RoundClosedError(f"hospital {self.hospital_id!r} is not in the cohort of {where}")
        if time.time() > spec.deadline:
            raise RoundClosedError(
                f"hospital {self.hospital_id!r} did not upload into {where}: its deadline has passed, and a masked "
                "upload after it could only complete an attempt its cohort has left (the next attempt asks again)"
            )
        if self.store.exists(RunPaths(spec.run).failure(spec.kind, spec.round, spec.attempt)):
            raise RoundClosedError(f"hospital {self.hospital_id!r} did not upload into {where}: it is closed")
        earlier = earlier_attempts(self.store, spec.run, spec.kind, spec.round, before=spec.attempt)
        problems = cohort_violations(spec.cohort, earlier)
        if problems:
            raise RoundClosedError(
                f"hospital {self.hospital_id!r} refuses to upload into {where}: its cohort {list(spec.cohort)} "
                f"would let a key holder isolate an update by combining it with a failed attempt ({'; '.join(problems)})"
            )

    def _mask(self, spec: RoundSpec, *, length: int, modulus: int) -> np.ndarray:
        """This hospital's pairwise mask for the attempt: the masks of the cohort sum to 0 mod ``modulus``."""
        from medheaven.crypto.masks import MaskScope, agreement_public_hex, pairwise_mask
        from medheaven.federated.setup import load_registry

        if self.agreement_key is None:
            raise ConfigurationError(
                f"hospital {self.hospital_id!r} has no agreement key ({self.hospital_id}.agreement.pem beside its "
                f"signing key) but run {spec.run!r} is pairwise-masked: run `medheaven hospital init --id "
                f"{self.hospital_id} --out <keys folder>` and register the new agreement key"
            )
        registry = load_registry(self.store)
        mine = registry.require_agreement_keys([self.hospital_id])
        if mine and registry.agreement[self.hospital_id].strip() != agreement_public_hex(self.agreement_key):
            raise ConfigurationError(
                f"hospital {self.hospital_id!r}'s agreement key does not match the one in hospitals.json: re-register "
                f"{self.hospital_id}.agreement.hex or install the key that was registered"
            )
        peers = registry.require_agreement_keys(h for h in spec.cohort if h != self.hospital_id)
        scope = MaskScope(spec.run, Phase(spec.kind).value, spec.round, spec.attempt, tuple(sorted(spec.cohort)))
        return pairwise_mask(self.hospital_id, self.agreement_key, peers, scope, length, modulus)

    def _upload(self, run: RunDescription, spec: RoundSpec, values: np.ndarray) -> tuple[str, str, int, bool]:
        """Store the signed envelope; returns key, digest, size and whether these values (not an earlier upload's)
        are what the store holds. A masked run's upload carries this hospital's pairwise mask for the attempt
        (``_mask``): decrypted alone it is uniform noise, and only the cohort's sum unmasks."""
        mask = None
        if spec.cohort:
            self._check_masked_upload(spec)
            modulus = self._codec(run).mask_modulus
            if modulus is None:
                raise ConfigurationError(
                    f"round spec of {spec.run!r} names a cohort but scheme {run.scheme} is unmasked"
                )
            mask = self._mask(spec, length=values.size, modulus=modulus)
        envelope = Envelope(
            kind=spec.kind.upload_kind,
            run=run.run,
            round=spec.round,
            hospital=self.hospital_id,
            fingerprint=PLAINTEXT_FINGERPRINT if run.plaintext else run.fingerprint,
            scheme=run.scheme.value,
            base=spec.base_sha256,
            length=values.size,
            scale_bits=self._scale_bits(run, spec.kind),
            chunks=self._seal(run, values, phase=spec.kind, mask=mask),
        ).signed_by(self.signing_key)
        data = envelope.to_bytes()
        key = RunPaths(run.run).update(spec.kind, spec.round, spec.attempt, self.hospital_id)
        # Deterministic key, written once: a redelivered task (late ack after a lost worker or broker) must not
        # replace an update the aggregator may already have folded. CKKS encryption is randomised, so a second
        # upload would differ from the digest in the ledger and manifest, breaking verification and a rebuild of the
        # running sum. The first complete upload stands and the retry reports it (store writes are atomic).
        try:
            self.store.create(key, data)
        except StoreConflictError:
            data = self.store.get(key)
            log.info("%s: %s already holds this hospital's update; reporting it instead of replacing it", spec.run, key)
            return key, sha256_hex(data), len(data), False
        return key, sha256_hex(data), len(data), True

    # -- standardisation ---------------------------------------------------------------------------------
    def standardiser(self, run: str) -> Standardiser:
        cache = self._run(run)
        if cache.standardiser is None:
            cache.standardiser = committed_standardiser(self.store, cache.description, self.secret)
        return cache.standardiser

    def _prepared(self, cache: _RunCache) -> dict[str, np.ndarray]:
        if not cache.prepared:
            data = self._data(cache)
            std = self.standardiser(cache.description.run)
            cache.prepared = {
                "train_x": std.apply(data.train_x),
                "train_y": data.train_y.astype(np.float32),
                "val_x": std.apply(data.val_x),
                "val_y": data.val_y,
            }
        return cache.prepared

    # -- tasks -------------------------------------------------------------------------------------------
    def compute_stats(self, spec: RoundSpec) -> Receipt:
        """Encrypt this hospital's sufficient statistics (count, sum, sum of squares per feature)."""
        from medheaven.data import SufficientStats

        started = time.perf_counter()
        cache = self._run(spec.run)
        data = self._data(cache)
        finite = data.train_x[np.isfinite(data.train_x)]
        largest = float(np.max(np.abs(finite))) if finite.size else 0.0
        if largest > cache.description.max_abs_feature:
            from medheaven.data.encoding import planned_feature_bound

            raise PackingError(
                f"hospital {self.hospital_id!r}: a feature value of magnitude {largest:.4g} in {self.data_path} "
                f"exceeds the run's max_abs_feature={cache.description.max_abs_feature:g}; if the value is right, "
                f"start a new run with `medheaven-coordinator run --max-abs-feature "
                f"{planned_feature_bound(largest):g}` (or MEDHEAVEN_MAX_ABS_FEATURE, or `max_abs_feature` in the "
                "demo's schema file), otherwise fix the unit error in the data file"
            )
        vector = cache.description.stats_upload(SufficientStats.of(data.train_x).to_vector())
        key, digest, size, _ = self._upload(cache.description, spec, vector)
        timings = {"total": time.perf_counter() - started}
        return self._receipt(spec, key, digest, size, {}, timings, privacy=self._budget_standing(cache, spec))

    def _privacy_ledger(self, run: str) -> Path:
        """This hospital's spent-ε ledger for ``run``, next to its data (it never leaves the hospital)."""
        return self.data_path.parent / ".privacy" / f"{self.hospital_id}-{run}.json"

    def _budget_standing(self, cache: _RunCache, spec: RoundSpec) -> dict[str, float]:
        """Under DP-SGD, the statistics receipt says what this hospital has spent and what round 1 would bring it to
        (``privacy.local.budget_standing``); empty without DP."""
        from medheaven.privacy.local import budget_standing, plan_round

        schedule, data = spec.training.private_schedule, self._data(cache)
        if schedule is None or data.train_groups is None:
            return {}
        entry = plan_round(data.train_groups, schedule, round_number=1)
        return budget_standing(self._privacy_ledger(spec.run), entry, dp=schedule.dp)

    def initial_model(self, run: str) -> tuple[bytes, str]:
        """Round 0: the deterministic initial weights, encrypted as a global model with total weight 1."""
        from medheaven.model import build_model, get_flat_weights

        description = self._run(run).description
        weights = get_flat_weights(build_model(description.model))
        packed = pack_update(weights, 1, params=description.params)
        envelope = Envelope(
            kind=Phase.UPDATE.result_kind,  # round 0 is a global model like any committed round's
            run=run,
            round=0,
            hospital="",
            fingerprint=PLAINTEXT_FINGERPRINT if description.plaintext else description.fingerprint,
            scheme=description.scheme.value,
            base="",
            length=packed.size,
            scale_bits=self._scale_bits(description, Phase.UPDATE),
            # the initial weights follow from the run's public seed: nothing to hide, so a zero mask (an exact
            # scheme refuses to encode without one, so that no upload goes out unmasked by accident)
            chunks=self._seal(
                description,
                packed,
                phase=Phase.UPDATE,
                mask=_zero_mask(description, self._codec(description), packed.size),
            ),
        )
        data = envelope.to_bytes()
        return data, sha256_hex(data)

    def global_weights(self, run: str, round_number: int, *, expected_sha256: str | None = None) -> np.ndarray:
        """The global model of committed round ``round_number``: the decrypted average (divided by the decrypted
        total weight), after the run's server step when it has one (``server_optimiser``, replayed from the store)."""
        weights = self.averaged_weights(run, round_number, expected_sha256=expected_sha256)
        cache = self._run(run)
        if cache.description.server.is_plain:
            return weights
        if cache.trajectory is None:
            cache.trajectory = Trajectory(cache.description.server, lambda r: self.averaged_weights(run, r))
        return cache.trajectory.model(round_number)

    def averaged_weights(self, run: str, round_number: int, *, expected_sha256: str | None = None) -> np.ndarray:
        """Decrypt the committed FedAvg average of ``round_number`` and divide by the decrypted total weight."""
        weights, _, manifest = committed_average(self.store, self._run(run).description, self.secret, round_number)
        if expected_sha256 is not None and manifest.result_sha256 != expected_sha256:
            raise DigestMismatchError(
                f"run {run!r} round {round_number}: the round spec names global model {expected_sha256[:12]}…, "
                f"the committed manifest says {manifest.result_sha256[:12]}…"
            )
        return weights

    def train(self, spec: RoundSpec) -> Receipt:
        """Fetch and check the global model, evaluate it, train locally, upload the encrypted pre-scaled update."""
        from medheaven.model import get_flat_weights, predict_risk, set_flat_weights, train_epochs

        timings: dict[str, float] = {}
        clock = time.perf_counter()
        cache = self._run(spec.run)
        description = cache.description
        weights = self.global_weights(spec.run, spec.round - 1, expected_sha256=spec.base_sha256)
        timings["fetch_decrypt"] = time.perf_counter() - clock

        clock = time.perf_counter()
        prepared = self._prepared(cache)
        training = spec.training
        slot = model_slot(description.model, optimizer=training.local_optimizer, learning_rate=training.learning_rate)
        with slot.lock:  # one model per process (model_pool.py); the hospitals of the embedded demo take turns
            model = slot.model
            set_flat_weights(model, weights)
            metrics = binary_metrics(prepared["val_y"], predict_risk(model, prepared["val_x"]))
            timings["evaluate"] = time.perf_counter() - clock

            clock = time.perf_counter()
            # the local optimizer's state (Adam moments) stays with the hospital across rounds: it never leaves this
            # process, and restarting Adam from zero every round slowed convergence on the real data
            slot.switch_to((self.hospital_id, spec.run))
            model.optimizer.learning_rate.assign(training.rate_for(spec.round))
            seed = _round_seed(description.model.seed, spec.round, self.hospital_id)
            privacy: dict[str, float] = {}
            if training.dp is not None:
                _seed_globally(seed)
                privacy = self._train_private(cache, model, spec)
            else:
                train_epochs(
                    model,
                    prepared["train_x"],
                    prepared["train_y"],
                    epochs=training.epochs,
                    batch_size=training.batch_size,
                    rng=np.random.default_rng(seed),  # this hospital's and round's shuffle, whatever other threads do
                )
            trained = get_flat_weights(model)
        timings["train"] = time.perf_counter() - clock

        clock = time.perf_counter()
        n_train = int(prepared["train_y"].size)
        packed = pack_update(trained, n_train, params=description.params)
        key, digest, size, stored = self._upload(description, spec, packed)
        if self.audit and stored:
            self.audit_updates[(spec.run, spec.round)] = packed
        timings["encrypt_upload"] = time.perf_counter() - clock
        released = released_metrics(metrics) if training.releases_metrics else {}
        return self._receipt(spec, key, digest, size, released, timings, privacy=privacy)

    def _train_private(self, cache: _RunCache, model: keras.Model, spec: RoundSpec) -> dict[str, float]:
        """Patient-level DP-SGD (medheaven.privacy); the spent-ε ledger lives next to the hospital's data."""
        from medheaven.privacy.local import train_private

        schedule, data, prepared = spec.training.private_schedule, self._data(cache), self._prepared(cache)
        assert schedule is not None and data.train_groups is not None
        x, y, ledger = prepared["train_x"], prepared["train_y"], self._privacy_ledger(spec.run)
        done = train_private(
            model, x, y, data.train_groups, schedule, round_number=spec.round, ledger_path=ledger,
            hospital_id=self.hospital_id,
        )  # fmt: skip
        return done.receipt_fields()

    def _scoring_slot(self, cache: _RunCache) -> ModelSlot:
        """The process's model for scoring (the training model when the run trains with Adam, as by default)."""
        return model_slot(cache.description.model, optimizer="adam", learning_rate=1e-3)

    def validate(self, run: str, round_number: int) -> dict[str, float]:
        """Metrics of a committed global model on this hospital's validation patients (finite values only)."""
        from medheaven.model import predict_risk, set_flat_weights

        config = RunPaths(run).config
        if (
            self.store.exists(config)
            and not LocalTraining.from_dict(self.store.get_json(config)["training"]).releases_metrics
        ):
            return {}  # --no-dp-metrics: the final model's validation metrics are withheld like the per-round ones
        cache = self._run(run)
        prepared = self._prepared(cache)
        weights = self.global_weights(run, round_number)
        slot = self._scoring_slot(cache)
        with slot.lock:
            set_flat_weights(slot.model, weights)
            scores = predict_risk(slot.model, prepared["val_x"])
        return released_metrics(binary_metrics(prepared["val_y"], scores))

    def score(self, run: str, round_number: int, features: np.ndarray) -> np.ndarray:
        """Key holders only: decrypt a committed global model and score standardised-by-federation features."""
        from medheaven.model import predict_risk, set_flat_weights

        cache = self._run(run)
        weights = self.global_weights(run, round_number)
        features = self.standardiser(run).apply(features)
        slot = self._scoring_slot(cache)
        with slot.lock:
            set_flat_weights(slot.model, weights)
            return predict_risk(slot.model, features)

    def _receipt(
        self,
        spec: RoundSpec,
        key: str,
        digest: str,
        size: int,
        metrics: dict[str, float],
        timings: dict[str, float],
        *,
        privacy: dict[str, float] | None = None,
    ) -> Receipt:
        return Receipt(
            run=spec.run,
            round=spec.round,
            attempt=spec.attempt,
            kind=spec.kind,
            hospital=self.hospital_id,
            key=key,
            sha256=digest,
            size=size,
            metrics=metrics,
            timings=timings,
            privacy=dict(privacy or {}),
            completed_at=time.time(),  # after the upload: what the round's lateness is judged on
        ).signed_by(self.signing_key)


def _zero_mask(run: RunDescription, codec: HospitalCodec, length: int) -> np.ndarray | None:
    return np.zeros(length, dtype=np.uint64) if codec.mask_modulus is not None else None


def _round_seed(seed: int, round_number: int, hospital_id: str) -> int:
    offset = int(hashlib.sha256(hospital_id.encode()).hexdigest()[:6], 16)
    return (seed * 1_000_003 + round_number * 7919 + offset) % (2**31)


def _seed_globally(seed: int) -> None:
    """Python's, NumPy's and TensorFlow's global generators, for DP-SGD's round. Plain training draws from its own
    generator instead: resetting TensorFlow's seed clears its kernel cache, a 4x slower epoch for every hospital."""
    import keras

    keras.utils.set_random_seed(seed)

"""Key holders only: turn a committed encrypted global model into a Keras file plus the preprocessing it needs.

``export_model`` decrypts ``<run>/rounds/<r>/global.ckks`` (divided by the decrypted total sample count, as every
hospital does), rebuilds the federated standardiser by decrypting ``<run>/stats/summed.ckks``, and writes

* ``<name>.keras``: the architecture of ``model.json`` with the decrypted weights;
* ``<name>.preprocessing.json``: the feature layout, the standardiser, the schema of the prepared files, what the
  score means, and where the model came from (run, round, digest of the encrypted global model, digest of the
  Keras file, so a model and someone else's preprocessing can never be paired by mistake), and, for a run trained
  with DP-SGD, each hospital's spent (ε, δ) behind this model (``privacy``; null without DP).

Both files are the plaintext model the federation's encryption protected: they are written owner-only (0600).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medheaven.crypto.codec import SecretKeys, secret_keys_from_bytes
from medheaven.data import FeatureLayout, Standardiser
from medheaven.data.partition import prepared_schema_for
from medheaven.data.schemas import Schema
from medheaven.errors import (
    ConfigurationError,
    DataFileError,
    KeyCustodyError,
    MedHeavenError,
    RunStateError,
    SchemaError,
)
from medheaven.federated.paths import RunPaths
from medheaven.federated.phase import Phase
from medheaven.federated.results import (
    committed_average,
    committed_manifest,
    committed_standardiser,
    last_committed_round,
)
from medheaven.federated.server_optimiser import Trajectory
from medheaven.federated.wire import RunDescription
from medheaven.model import ModelSpec
from medheaven.privacy.spent import ModelPrivacy, model_privacy, run_dp
from medheaven.private_files import check_private_file_mode, private_staging_dir, write_private_file
from medheaven.records import read_json_object
from medheaven.store.base import Store

PREPROCESSING_FORMAT = 1
PREPROCESSING_SUFFIX = ".preprocessing.json"


# -- the preprocessing file -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Preprocessing:
    """Everything besides the weights that turns a data file into the model's input, and its provenance."""

    run: str
    round: int
    global_sha256: str
    fingerprint: str
    model: ModelSpec
    layout: FeatureLayout
    standardiser: Standardiser
    schema: Schema  # the prepared files' schema (features, group, label)
    source_schema: dict[str, Any] | None  # the schema the split was made from, when known
    target: str  # what the score is the probability of
    model_sha256: str = ""
    exported_at: float = 0.0
    # the source data's target column and the values that were label 1 ("label"/["1"] when the split is unknown)
    target_column: str = "label"
    positive_values: tuple[str, ...] = ("1",)
    # patient-level DP-SGD: the run's setting and each hospital's spent (ε, δ) behind this model; None without DP
    privacy: ModelPrivacy | None = None

    @property
    def score_meaning(self) -> str:
        return f"probability that {self.target_column!r} is {' or '.join(repr(v) for v in self.positive_values)}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": PREPROCESSING_FORMAT,
            "run": self.run,
            "round": self.round,
            "global_sha256": self.global_sha256,
            "context_fingerprint": self.fingerprint,
            "model": self.model.to_dict(),
            "model_sha256": self.model_sha256,
            "layout": self.layout.to_dict(),
            "feature_names": list(self.layout.feature_names),
            "standardiser": self.standardiser.to_dict(),
            "schema": self.schema.to_dict(),
            "source_schema": self.source_schema,
            "target": self.target,
            "target_column": self.target_column,
            "positive_values": list(self.positive_values),
            "exported_at": self.exported_at,
            "privacy": self.privacy.to_dict() if self.privacy is not None else None,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "preprocessing file") -> Preprocessing:
        if data.get("format") != PREPROCESSING_FORMAT:
            raise ConfigurationError(f"{source} is not a MedHeaven preprocessing file (format {PREPROCESSING_FORMAT})")
        try:
            preprocessing = cls(
                run=str(data["run"]),
                round=int(data["round"]),
                global_sha256=str(data["global_sha256"]),
                fingerprint=str(data["context_fingerprint"]),
                model=ModelSpec.from_dict(data["model"]),
                layout=FeatureLayout.from_dict(data["layout"]),
                standardiser=Standardiser.from_dict(data["standardiser"]),
                schema=Schema.from_dict(data["schema"]),
                source_schema=data.get("source_schema"),
                target=str(data["target"]),
                model_sha256=str(data.get("model_sha256", "")),
                exported_at=float(data.get("exported_at", 0.0)),
                **target_fields(data.get("source_schema"), data),
                privacy=ModelPrivacy.from_dict(data["privacy"]) if data.get("privacy") else None,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigurationError(f"{source} is malformed ({exc!r}); export the model again") from exc
        if preprocessing.standardiser.mean.size != preprocessing.layout.n_features:
            raise ConfigurationError(f"{source}: the standardiser and the feature layout disagree on the feature count")
        return preprocessing

    @classmethod
    def load(cls, path: Path) -> Preprocessing:
        remedy = "`medheaven export` writes it next to the .keras file; keep the two together or export again"
        data = read_json_object(path, what="preprocessing file", remedy=remedy, error=ConfigurationError)
        return cls.from_dict(data, source=str(path))


def preprocessing_path(model_path: Path) -> Path:
    """``model.keras`` -> ``model.preprocessing.json``."""
    return model_path.with_suffix(PREPROCESSING_SUFFIX)


def target_fields(source_schema: dict[str, Any] | None, recorded: dict[str, Any] | None = None) -> dict[str, Any]:
    """The target's name and positive class: as recorded, else from the split's source schema, else the label."""
    recorded = recorded or {}
    source = source_schema or {}
    column = recorded.get("target_column") or source.get("target") or "label"
    positives = recorded.get("positive_values") or source.get("positive_values") or ["1"]
    return {"target_column": str(column), "positive_values": tuple(str(v) for v in positives)}


def describe_target(source_schema: dict[str, Any] | None) -> str:
    if not source_schema:
        return "probability that label = 1 (the positive class of the target the federation's split was made with)"
    target, positives = source_schema.get("target"), source_schema.get("positive_values")
    meaning = (
        " (readmitted within 30 days)" if source_schema.get("name") == "diabetes130" and positives == ["<30"] else ""
    )
    return (
        f"probability that label = 1, i.e. that column {target!r} takes one of {positives}{meaning} "
        f"(source schema {source_schema.get('name')!r})"
    )


# -- keys -------------------------------------------------------------------------------------------------
def load_key_holder_context(path: Path) -> SecretKeys:
    """The secret context, with a message that says why a public one cannot do."""
    if not path.is_file():
        raise ConfigurationError(f"secret context file {path} does not exist; key holders have keys/context.secret")
    try:
        secret = secret_keys_from_bytes(path.read_bytes(), source=str(path))
    except KeyCustodyError as exc:
        raise KeyCustodyError(
            f"{path} is not a secret context ({exc}). Exporting decrypts the global model, which only key holders "
            "(hospitals) can do: pass the federation's context.secret, never context.public"
        ) from exc
    check_private_file_mode(path)
    return secret


# -- decryption -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DecryptedModel:
    description: RunDescription
    round: int
    global_sha256: str
    weights: np.ndarray
    total_samples: int


def _description(store: Store, run: str, secret: SecretKeys | None) -> RunDescription:
    paths = RunPaths(run)
    if not store.exists(paths.model):
        raise RunStateError(
            f"run {run!r} does not exist in store {store.location}: list runs with `medheaven store ls`"
        )
    description = RunDescription.from_dict(store.get_json(paths.model))
    if not description.plaintext and secret is not None and secret.fingerprint != description.fingerprint:
        raise ConfigurationError(
            f"run {run!r} was encrypted under key set {description.fingerprint[:12]}…, the secret context given is "
            f"{secret.fingerprint[:12]}…: pass the federation's own context.secret"
        )
    return description


def default_export_round(store: Store, run: str) -> tuple[int | None, str]:
    """The run's selected model: the round its held-out test metrics describe (chosen by validation), else the
    last committed round."""
    key = RunPaths(run).test_scores()
    if store.exists(key):
        record = store.get_json(key)
        if isinstance(record, dict) and isinstance(record.get("round"), int):
            how = record.get("selected_by") or "the round final-test.json scored"
            return int(record["round"]), f"the run's selected model ({how}), the one its test metrics describe"
    return None, "the last committed round"


def decrypt_global_model(
    store: Store, secret: SecretKeys | None, run: str, round_number: int | None = None
) -> DecryptedModel:
    """The global model of a committed round (default: the last one): its decrypted average, after the run's
    server step when it has one."""
    description = _description(store, run, secret)
    last = last_committed_round(store, run)
    chosen = last if round_number is None else round_number
    if last < 0 or not 0 <= chosen <= last:
        raise RunStateError(
            f"run {run!r} has no committed round {chosen}"
            + (f" (rounds 0..{last} are committed)" if last >= 0 else " (no round is committed yet)")
        )
    weights, total, manifest = committed_average(store, description, secret, chosen)
    if not description.server.is_plain:
        # the run's server step, re-derived from the committed rounds exactly as every hospital derives it
        replay = Trajectory(description.server, lambda r: committed_average(store, description, secret, r)[0])
        weights = replay.model(chosen)
    return DecryptedModel(description, chosen, manifest.result_sha256, weights, total)


def decrypt_standardiser(store: Store, secret: SecretKeys | None, description: RunDescription) -> Standardiser:
    """The federated standardiser, from the encrypted sum of every hospital's sufficient statistics."""
    return committed_standardiser(store, description, secret)


# -- the export -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ExportResult:
    model_path: Path
    preprocessing_path: Path
    preprocessing: Preprocessing
    total_samples: int
    reason: str  # why this round was exported


def read_split_schema(path: Path, layout: FeatureLayout) -> dict[str, Any] | None:
    """The source schema recorded in a split's schema.json, checked against the run's features."""
    remedy = "pass the schema.json `medheaven data split` wrote"
    data = read_json_object(path, what="split schema", remedy=remedy, error=DataFileError)
    features = set(data.get("numeric", [])) | set(data.get("categorical", []))
    expected = set(layout.numeric) | {c for c, _ in layout.categorical}
    if features != expected:
        raise SchemaError(
            f"split schema {path} describes other features than this run's layout "
            f"(differs in {', '.join(sorted(features ^ expected)[:8])}): pass the schema.json of the run's own split"
        )
    source = data.get("source_schema")
    return dict(source) if isinstance(source, dict) else None


def default_split_schema(store: Store, run: str) -> Path | None:
    """The schema.json beside the run's test file, when the run had one and it is readable on this machine."""
    key = RunPaths(run).config
    test_path = store.get_json(key).get("test_path") if store.exists(key) else None
    candidate = Path(test_path).parent / "schema.json" if test_path else None
    return candidate if candidate is not None and candidate.is_file() else None


def export_model(
    store: Store,
    secret: SecretKeys | None,
    run: str,
    out: Path,
    *,
    round_number: int | None = None,
    split_schema: Path | None = None,
) -> ExportResult:
    """Decrypt a committed global model and write ``out`` (.keras) and its preprocessing file beside it."""
    if out.suffix != ".keras":
        raise ConfigurationError(f"--out {out}: the model file name must end in .keras (the Keras 3 format)")
    if not out.parent.is_dir():
        raise ConfigurationError(f"--out {out}: folder {out.parent} does not exist")
    chosen, reason = (round_number, "asked for") if round_number is not None else default_export_round(store, run)
    decrypted = decrypt_global_model(store, secret, run, chosen)
    description = decrypted.description
    standardiser = decrypt_standardiser(store, secret, description)
    layout = description.layout
    source_schema = read_split_schema(split_schema, layout) if split_schema is not None else None
    if split_schema is None and (default := default_split_schema(store, run)) is not None:
        # best effort: the test file's folder may hold another split's schema.json; it only records the target
        with contextlib.suppress(MedHeavenError):
            source_schema = read_split_schema(default, layout)
    privacy = exported_privacy(store, run, decrypted.round)
    model_sha256 = _save_keras(description.model, decrypted.weights, out)
    preprocessing = Preprocessing(
        run=run,
        round=decrypted.round,
        global_sha256=decrypted.global_sha256,
        fingerprint=description.fingerprint,
        model=description.model,
        layout=layout,
        standardiser=standardiser,
        schema=prepared_schema_for(layout),
        source_schema=source_schema,
        target=describe_target(source_schema),
        model_sha256=model_sha256,
        exported_at=time.time(),
        **target_fields(source_schema),
        privacy=privacy,
    )
    side = preprocessing_path(out)
    write_private_file(side, (json.dumps(preprocessing.to_dict(), indent=2) + "\n").encode("utf-8"), force=True)
    return ExportResult(out, side, preprocessing, decrypted.total_samples, reason)


def exported_privacy(store: Store, run: str, round_number: int) -> ModelPrivacy | None:
    """Each hospital's spent (ε, δ) behind the model of ``round_number``, from the committed manifests' signed
    receipts (None when the run did not use DP-SGD)."""
    key = RunPaths(run).config
    dp = run_dp(store.get_json(key)) if store.exists(key) else None
    if dp is None:
        return None
    rounds = [
        (r, {e.hospital: dict(e.privacy) for e in manifest.folded if e.privacy})
        for r in range(1, round_number + 1)
        for manifest in (committed_manifest(store, run, kind=Phase.UPDATE, round_number=r),)
    ]
    return model_privacy(dp, rounds, up_to=round_number)


def _save_keras(spec: ModelSpec, weights: np.ndarray, out: Path) -> str:
    from medheaven.model import build_model, set_flat_weights

    model = build_model(spec)
    set_flat_weights(model, weights)
    # Keras writes the file itself; a private temporary folder (0700) keeps it unreadable to others until it is
    # made 0600 and moved into place.
    staging = private_staging_dir(out.parent, prefix=".export-")
    try:
        staged = staging / out.name
        model.save(staged)
        os.chmod(staged, 0o600)
        digest = hashlib.sha256(staged.read_bytes()).hexdigest()
        os.replace(staged, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return digest

"""Building nodes from settings, and the few multi-step operations that tasks delegate to.

Settings are passed in (read once at process start by the caller); nothing here reads the environment.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from medheaven.crypto.codec import load_secret_keys
from medheaven.crypto.signing import agreement_key_path, load_signing_key, validate_hospital_id
from medheaven.errors import ConfigurationError, KeyCustodyError
from medheaven.evaluation.metrics import binary_metrics
from medheaven.federated.aggregator import AggregatorNode
from medheaven.federated.hospital import HospitalNode
from medheaven.federated.paths import RunPaths
from medheaven.federated.phase import Phase
from medheaven.federated.protocol import sha256_hex
from medheaven.federated.release import released_metrics
from medheaven.memory import map_large_buffers_separately
from medheaven.private_files import check_private_file_mode
from medheaven.settings import Settings
from medheaven.store import open_store

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey


def schema_reader(schema_name: str, schema_file: Path | None) -> Any:
    from medheaven.data import get_schema, load_dataset

    schema = get_schema(schema_name, schema_file=schema_file)

    def read(path: Path) -> Any:
        return load_dataset(path, schema)

    return read


def check_hospital_settings(settings: Settings) -> None:
    """What a hospital worker verifies before it accepts any task."""
    missing = [
        name
        for name, value in (
            ("MEDHEAVEN_HOSPITAL_ID", settings.hospital_id),
            ("MEDHEAVEN_DATA_PATH", settings.data_path),
            ("MEDHEAVEN_SIGNING_KEY", settings.signing_key),
        )
        if value is None
    ]
    if missing:
        raise ConfigurationError(f"a hospital worker needs {', '.join(missing)}")
    assert settings.hospital_id is not None and settings.data_path is not None and settings.signing_key is not None
    validate_hospital_id(settings.hospital_id)
    if settings.secret_context is not None:
        check_private_file_mode(settings.secret_context)
    check_private_file_mode(settings.signing_key)
    if not settings.data_path.is_file():
        raise ConfigurationError(f"MEDHEAVEN_DATA_PATH={settings.data_path} is not a readable file")


def check_hospital_data(settings: Settings) -> None:
    """Read the hospital's data file with its schema once, at start-up: a file that lacks a column, holds target
    values the schema does not declare or text in a numeric column must stop the worker with that message, not fail
    every task later with the reason buried in a log."""
    from medheaven.errors import MedHeavenError

    assert settings.data_path is not None
    try:
        schema_reader(settings.schema_name, settings.schema_file)(settings.data_path)
    except MedHeavenError as exc:
        raise ConfigurationError(
            f"hospital {settings.hospital_id!r} refuses to start: its data file does not validate against its schema "
            f"({settings.schema_name}{f' from {settings.schema_file}' if settings.schema_file else ''}): {exc}"
        ) from exc


def hospital_node_from_settings(settings: Settings, *, expected_hospital: str) -> HospitalNode:
    check_hospital_settings(settings)
    assert settings.hospital_id is not None and settings.data_path is not None and settings.signing_key is not None
    if settings.hospital_id != expected_hospital:
        raise ConfigurationError(
            f"this worker is hospital {settings.hospital_id!r} but received a task for {expected_hospital!r}: "
            f"start it with -Q hospital.{settings.hospital_id} only"
        )
    secret = load_secret_keys(settings.secret_context) if settings.secret_context else None
    return HospitalNode(
        agreement_key=load_agreement_key_beside(settings.signing_key, settings.hospital_id),
        hospital_id=settings.hospital_id,
        store=open_store(settings.store, settings=settings),
        data_path=settings.data_path,
        reader=schema_reader(settings.schema_name, settings.schema_file),
        secret=secret,
        signing_key=load_signing_key(settings.signing_key, hospital_id=settings.hospital_id),
        validation_fraction=settings.validation_fraction,
    )


def load_agreement_key_beside(signing_key: Path, hospital_id: str) -> X25519PrivateKey | None:
    """The hospital's X25519 agreement key (``<id>.agreement.pem`` beside its signing key), or None if it has none
    (an identity made before masking: it can still serve ``ckks`` runs; a masked run's first upload says what to do).
    A key file that exists but is readable by others, or is not an X25519 key, stops the worker here."""
    from medheaven.crypto.masks import load_agreement_key

    path = agreement_key_path(signing_key, hospital_id)
    return load_agreement_key(path) if path.exists() else None


def check_aggregator_settings(settings: Settings) -> None:
    """The aggregator must never be handed a secret key, not even by accident of configuration."""
    if settings.secret_context is not None:
        raise KeyCustodyError(
            f"MEDHEAVEN_SECRET_CONTEXT={settings.secret_context} is set on the aggregator; the aggregator must not "
            "have access to the secret context: unset it"
        )


def aggregator_node_from_settings(settings: Settings) -> AggregatorNode:
    check_aggregator_settings(settings)
    map_large_buffers_separately()  # keeps the aggregator's peak at ~2 models (medheaven/memory.py)
    return AggregatorNode(
        open_store(settings.store, settings=settings),
        expected_fingerprint=settings.context_fingerprint,
        keep_updates=settings.keep_updates,
    )


def store_initial_model(node: HospitalNode, run: str) -> dict[str, Any]:
    """Write round 0's encrypted initial model unless round 0 is already committed; idempotent under redelivery."""
    paths = RunPaths(run)
    key = paths.global_model(0)
    if node.store.exists(paths.manifest(Phase.UPDATE, 0)):
        existing = node.store.get(key)
        return {"key": key, "sha256": sha256_hex(existing), "size": len(existing)}
    data, digest = node.initial_model(run)
    node.store.put(key, data)
    return {"key": key, "sha256": digest, "size": len(data)}


def score_test_file(node: HospitalNode, run: str, round_number: int) -> dict[str, Any]:
    """Score a committed global model on the run's held-out file; only released metrics leave the hospital.

    The file's path is read from the run's committed config, not passed as a task argument, so the task's arguments
    (shown by Flower) carry no filesystem path; the row count is not released (see ``medheaven.federated.release``).
    """
    from medheaven.data import FeatureLayout, encode_features

    paths = RunPaths(run)
    test_path = node.store.get_json(paths.config).get("test_path")
    if not test_path:
        raise ConfigurationError(f"run {run!r} has no test_path in {paths.config}: nothing to score")
    description = node.store.get_json(paths.model)
    layout = FeatureLayout.from_dict(description["layout"])
    frame = node.reader(Path(test_path))
    scores = node.score(run, round_number, encode_features(frame, layout))
    metrics = released_metrics(binary_metrics(frame["label"].to_numpy(), scores))
    record = {"run": run, "round": round_number, "scored_by": node.hospital_id, "metrics": metrics}
    node.store.put_json(RunPaths(run).test_scores(), record)
    return record

"""A hospital's own material: its id, secret context, signing and agreement keys (owner-only, registered) and data."""

from __future__ import annotations

import os
from pathlib import Path

from medheaven.crypto.codec import PublicKeys, secret_keys_from_bytes
from medheaven.crypto.signing import SigningKey, agreement_key_path, load_signing_key, validate_hospital_id
from medheaven.doctor.results import CheckResult, fail, ok, skip
from medheaven.errors import MedHeavenError
from medheaven.federated.paths import REGISTRY_KEY
from medheaven.federated.setup import load_registry
from medheaven.private_files import check_private_file_mode
from medheaven.settings import Settings
from medheaven.store.base import Store


def check_hospital_id(settings: Settings) -> CheckResult:
    name = "hospital id"
    if not settings.hospital_id:
        return fail(name, "MEDHEAVEN_HOSPITAL_ID is not set (the worker serves queue hospital.<id>)")
    try:
        validate_hospital_id(settings.hospital_id)
    except MedHeavenError as exc:
        return fail(name, str(exc))
    return ok(name, f"{settings.hospital_id} (queue hospital.{settings.hospital_id})")


def _mode(path: Path) -> str:
    return f"{path.stat().st_mode & 0o777:o}"


def check_secret_context(settings: Settings, public: PublicKeys | None) -> CheckResult:
    name = "secret context"
    path = settings.secret_context
    if path is None:
        return fail(
            name,
            "MEDHEAVEN_SECRET_CONTEXT is not set: install the federation's context.secret (from the key holder, "
            "out of band) with mode 600 and point the variable at it",
        )
    if not path.is_file():
        return fail(name, f"MEDHEAVEN_SECRET_CONTEXT={path} does not exist")
    try:
        check_private_file_mode(path)
        secret = secret_keys_from_bytes(path.read_bytes(), source=str(path))
    except (MedHeavenError, OSError) as exc:
        return fail(name, str(exc))
    expected = settings.context_fingerprint
    if expected and secret.fingerprint != expected:
        return fail(
            name,
            f"{path} is key set {secret.fingerprint[:16]}…, MEDHEAVEN_CONTEXT_FINGERPRINT is {expected[:16]}…: "
            "install this federation's context.secret",
        )
    if public is not None and secret.fingerprint != public.fingerprint:
        return fail(
            name,
            f"{path} is key set {secret.fingerprint[:16]}…, the store's public context is "
            f"{public.fingerprint[:16]}…: this hospital holds another federation's key",
        )
    against = "the store's public context" if public is not None else "nothing (no public context to compare)"
    return ok(name, f"{path} (mode {_mode(path)}, key set {secret.fingerprint[:16]}…) matches {against}")


def _registration_problem(store: Store, hospital: str, key: SigningKey, path: Path) -> str | None:
    try:
        registry = load_registry(store)
    except MedHeavenError as exc:
        return str(exc)
    registered = registry.keys.get(hospital)
    if registered is None:
        return (
            f"hospital {hospital} is not registered in {REGISTRY_KEY}: send {hospital}.verify.hex to the operator "
            f"for `medheaven hospital register --id {hospital} --verify-key {hospital}.verify.hex`"
        )
    if registered.strip() != key.verify_key_hex():
        return (
            f"{path} does not match the verification key registered for {hospital} (registered "
            f"{registered.strip()[:16]}…, this key {key.verify_key_hex()[:16]}…): re-register this hospital's "
            "verify.hex, or install the signing key that was registered"
        )
    return None


def check_signing_key(settings: Settings, store: Store | None) -> CheckResult:
    name = "signing key"
    path, hospital = settings.signing_key, settings.hospital_id
    if path is None:
        return fail(name, "MEDHEAVEN_SIGNING_KEY is not set: create one with `medheaven hospital init`")
    if not hospital:
        return skip(name, "MEDHEAVEN_HOSPITAL_ID is not set")
    try:
        key = load_signing_key(path, hospital_id=hospital)
    except (MedHeavenError, OSError) as exc:
        return fail(name, str(exc))
    if store is None:
        return skip(name, f"{path} loads, but the store is unreachable, so its registration is unknown")
    problem = _registration_problem(store, hospital, key, path)
    if problem:
        return fail(name, problem)
    return ok(name, f"{path} (mode {_mode(path)}) is registered for {hospital}")


def check_agreement_key(settings: Settings, store: Store | None) -> CheckResult:
    """The X25519 agreement key beside the signing key: present, owner-only, its public half registered."""
    name = "agreement key"
    if settings.signing_key is None or not settings.hospital_id:
        return skip(name, "MEDHEAVEN_SIGNING_KEY or MEDHEAVEN_HOSPITAL_ID is not set")
    hospital = settings.hospital_id
    fix = (
        f"run `medheaven hospital init --id {hospital} --out {settings.signing_key.parent}` (keeps the signing key) "
        f"and have the operator run `medheaven hospital register --id {hospital} --verify-key {hospital}.verify.hex "
        f"--agreement-key {hospital}.agreement.hex`"
    )
    try:
        from medheaven.crypto.masks import agreement_public_hex, load_agreement_key

        path = agreement_key_path(settings.signing_key, hospital)
        if not path.exists():
            return fail(name, f"{path} does not exist: pairwise-masked runs need it; {fix}")
        public = agreement_public_hex(load_agreement_key(path))  # refuses a group- or world-readable file
    except (MedHeavenError, OSError) as exc:
        return fail(name, str(exc))
    if store is None:
        return skip(name, f"{path} loads, but the store is unreachable, so its registration is unknown")
    problem = _agreement_registration_problem(store, hospital, public, path, fix)
    if problem:
        return fail(name, problem)
    return ok(name, f"{path} (mode {_mode(path)}) is registered for {hospital}")


def _agreement_registration_problem(store: Store, hospital: str, public: str, path: Path, fix: str) -> str | None:
    try:
        registered = load_registry(store).agreement.get(hospital)
    except MedHeavenError as exc:
        return str(exc)
    if registered is None:
        return f"{REGISTRY_KEY} holds no agreement key for {hospital}: {fix}"
    if registered.strip() != public:
        return (
            f"{path} does not match the agreement key registered for {hospital} (registered {registered.strip()[:16]}…, "
            f"this key {public[:16]}…): re-register {hospital}.agreement.hex, or install the key that was registered"
        )
    return None


def check_data(settings: Settings) -> CheckResult:
    name = "data"
    path = settings.data_path
    if path is None:
        return fail(name, "MEDHEAVEN_DATA_PATH is not set")
    if not path.is_file() or not os.access(path, os.R_OK):
        return fail(name, f"MEDHEAVEN_DATA_PATH={path} is not a readable file")
    from medheaven.data import GROUP, LABEL, get_schema, load_dataset

    try:
        schema = get_schema(settings.schema_name, schema_file=settings.schema_file)
        frame = load_dataset(path, schema)
    except (MedHeavenError, OSError) as exc:
        return fail(name, f"{path} with schema {settings.schema_name}: {exc}")
    rows = len(frame)
    if rows == 0:
        return fail(name, f"{path} has no usable rows with schema {settings.schema_name}")
    patients = int(frame[GROUP].nunique())
    positive = float(frame[LABEL].mean())
    return ok(
        name,
        f"{path}: {rows} rows, {patients} patients, {positive:.1%} positive (schema {settings.schema_name})",
    )

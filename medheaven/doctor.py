"""``medheaven doctor``: check a node's configuration before it joins a federation.

Every check is a plain function over ``Settings`` (plus what an earlier check produced) that returns a
:class:`CheckResult`; a misconfiguration is a ``fail`` result whose detail says what to fix, never an exception.
``run_checks`` picks the checks of a role:

* every role: the settings parse, the broker answers (``memory://`` is refused: it is not a deployment broker),
  the store is reachable and holds the federation's public context with the pinned fingerprint;
* hospital: a valid hospital id, the secret context (owner-only mode, same key set as the store), the signing key
  (owner-only mode, registered in ``hospitals.json`` with the same verification key), the X25519 agreement key
  beside it (owner-only, its public half registered: pairwise-masked runs need it) and a readable data file;
* aggregator and coordinator: no secret context and no signing key, neither configured nor readable in the
  secret folders (``/run/secrets``), and a non-empty hospital registry.

Nothing here prints the broker password: URLs are shown with the password replaced by ``***``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import ValidationError

from medheaven.crypto.codec import PublicKeys, public_keys_from_bytes, secret_keys_from_bytes
from medheaven.crypto.context import SecretContext
from medheaven.crypto.signing import SigningKey, agreement_key_path, load_signing_key, validate_hospital_id
from medheaven.errors import KeyCustodyError, MedHeavenError
from medheaven.federated.nodes import check_aggregator_settings
from medheaven.federated.paths import CONTEXT_KEY, REGISTRY_KEY
from medheaven.federated.setup import load_registry
from medheaven.private_files import check_private_file_mode
from medheaven.settings import Settings
from medheaven.store import open_store
from medheaven.store.base import Store

Status = Literal["ok", "warn", "fail", "skip"]
Role = Literal["hospital", "aggregator", "coordinator"]
ROLES: tuple[Role, ...] = ("hospital", "aggregator", "coordinator")

#: where container platforms (Docker, Kubernetes) mount secrets; scanned on nodes that must hold none
DEFAULT_SECRET_DIRS: tuple[Path, ...] = (Path("/run/secrets"),)
_MAX_PROBED_FILE = 64 * 1024 * 1024


@dataclass(frozen=True)
class CheckResult:
    name: str
    status: Status
    detail: str

    @property
    def failed(self) -> bool:
        return self.status == "fail"

    def to_dict(self) -> dict[str, str]:
        return {"check": self.name, "status": self.status, "detail": self.detail}


@dataclass(frozen=True)
class DoctorReport:
    role: str
    checks: tuple[CheckResult, ...]

    @property
    def ok(self) -> bool:
        return not any(check.failed for check in self.checks)

    def to_dict(self) -> dict[str, Any]:
        return {"role": self.role, "ok": self.ok, "checks": [check.to_dict() for check in self.checks]}


def _ok(name: str, detail: str) -> CheckResult:
    return CheckResult(name, "ok", detail)


def _fail(name: str, detail: str) -> CheckResult:
    return CheckResult(name, "fail", detail)


def _skip(name: str, because: str) -> CheckResult:
    return CheckResult(name, "skip", f"not checked: {because}")


def redact_url(url: str) -> str:
    """``redis://:secret@host:6379/0`` -> ``redis://:***@host:6379/0``: safe to print and log."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


# -- settings ---------------------------------------------------------------------------------------------
def load_settings(factory: Callable[[], Settings] = Settings) -> tuple[Settings | None, CheckResult]:
    """Read the MEDHEAVEN_* environment once; a value that does not parse is reported by its variable name."""
    try:
        settings = factory()
    except ValidationError as exc:
        problems = "; ".join(
            f"MEDHEAVEN_{str(error['loc'][0]).upper() if error['loc'] else '?'}: {error['msg']}"
            for error in exc.errors()
        )
        return None, _fail("settings", problems)
    return settings, _ok("settings", "MEDHEAVEN_* variables parse")


# -- broker -----------------------------------------------------------------------------------------------
def _tls_arguments(settings: Settings) -> tuple[dict[str, Any], str | None]:
    """redis-py TLS keyword arguments for a rediss:// URL, or the name of a configured file that is missing."""
    arguments: dict[str, Any] = {"ssl_cert_reqs": "required"}
    for variable, value, keyword in (
        ("MEDHEAVEN_REDIS_TLS_CA", settings.redis_tls_ca, "ssl_ca_certs"),
        ("MEDHEAVEN_REDIS_TLS_CERT", settings.redis_tls_cert, "ssl_certfile"),
        ("MEDHEAVEN_REDIS_TLS_KEY", settings.redis_tls_key, "ssl_keyfile"),
    ):
        if value is None:
            continue
        if not value.is_file():
            return {}, f"{variable}={value} is not a readable file"
        arguments[keyword] = str(value)
    return arguments, None


def _redis_arguments(url: str, settings: Settings) -> tuple[dict[str, Any], str | None]:
    """redis-py keyword arguments for ``url``, or why ``url`` cannot be a deployment broker."""
    if url.startswith("memory://") or url.startswith("cache+memory://"):
        return {}, (
            f"{url} is not a deployment broker (it only reaches this process): set MEDHEAVEN_BROKER_URL="
            "redis://:PASSWORD@HOST:6379/0, or rediss://... for TLS"
        )
    if url.startswith("rediss://"):
        return _tls_arguments(settings)
    if not url.startswith("redis://"):
        return {}, f"{redact_url(url)}: MedHeaven deployments use redis:// or rediss:// (TLS)"
    return {}, None


def _explain_redis_error(url: str, exc: Exception, timeout: float) -> str:
    import redis

    shown = redact_url(url)
    denied = isinstance(exc, redis.exceptions.AuthenticationError) or "NOAUTH" in str(exc)
    if denied and urlsplit(url).password is None:
        return f"{shown} requires a password: use redis://:PASSWORD@host:port/db ({exc})"
    if denied:
        return f"{shown} refused the credentials ({exc}): check the password (or ACL user) in the URL"
    if isinstance(exc, redis.exceptions.ResponseError):
        return f"{shown} answered PING with an error: {exc}"
    return f"cannot reach {shown} within {timeout:g}s: {exc}"


def ping_redis(url: str, settings: Settings, *, name: str, timeout: float) -> CheckResult:
    import redis

    shown = redact_url(url)
    arguments, problem = _redis_arguments(url, settings)
    if problem:
        return _fail(name, problem)
    client = redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout, **arguments)
    try:
        started = time.perf_counter()
        client.ping()
        elapsed = (time.perf_counter() - started) * 1000
        policy = _eviction_policy(client)
    except (redis.exceptions.RedisError, OSError) as exc:
        return _fail(name, _explain_redis_error(url, exc, timeout))
    finally:
        client.close()
    detail = f"{shown} answered PING in {elapsed:.1f} ms"
    if policy is not None and policy != "noeviction":
        return CheckResult(
            name,
            "warn",
            f"{detail}, but maxmemory-policy is {policy}: Redis may evict queued tasks under memory pressure; "
            "set maxmemory-policy noeviction",
        )
    return _ok(name, detail + (f", maxmemory-policy {policy}" if policy else " (maxmemory-policy not readable)"))


def _eviction_policy(client: Any) -> str | None:
    """Redis' eviction policy, or None where an ACL user may not read the configuration."""
    import redis

    try:
        config = client.config_get("maxmemory-policy")
    except redis.exceptions.ResponseError:
        return None
    value = config.get("maxmemory-policy") if isinstance(config, dict) else None
    return value.decode() if isinstance(value, bytes) else value


def check_broker(settings: Settings, *, timeout: float = 3.0) -> CheckResult:
    return ping_redis(settings.broker_url, settings, name="broker", timeout=timeout)


def check_result_backend(settings: Settings, *, timeout: float = 3.0) -> CheckResult | None:
    """Only when MEDHEAVEN_RESULT_BACKEND names another server than the broker."""
    backend = settings.result_backend
    if not backend or backend == settings.broker_url:
        return None
    return ping_redis(backend, settings, name="result backend", timeout=timeout)


# -- store ------------------------------------------------------------------------------------------------
def check_store(settings: Settings) -> tuple[CheckResult, Store | None]:
    """Open the store without creating anything: a mistyped folder must not become an empty new store."""
    url = settings.store
    if url.startswith("file://"):
        root = Path(url.removeprefix("file://") or ".").resolve()
        if not root.is_dir():
            return _fail(
                "store", f"store folder {root} does not exist: mount the shared store there or fix MEDHEAVEN_STORE"
            ), None
        if not os.access(root, os.R_OK | os.W_OK | os.X_OK):
            return _fail("store", f"store folder {root} is not writable by this user (uid {os.getuid()})"), None
    try:
        store = open_store(url, settings=settings)
        has_context = store.exists(CONTEXT_KEY)
        has_registry = store.exists(REGISTRY_KEY)
    except (MedHeavenError, OSError) as exc:
        return _fail("store", f"{url}: {exc}"), None
    found = [key for key, present in ((CONTEXT_KEY, has_context), (REGISTRY_KEY, has_registry)) if present]
    return _ok("store", f"{store.location} reachable ({', '.join(found) or 'empty'})"), store


def check_public_context(settings: Settings, store: Store | None) -> tuple[CheckResult, PublicKeys | None]:
    name = "public context"
    if store is None:
        return _skip(name, "the store is unreachable"), None
    if not store.exists(CONTEXT_KEY):
        return _fail(
            name,
            f"{CONTEXT_KEY} is not in the store: the operator publishes it with "
            "`medheaven federation publish --public-context context.public`",
        ), None
    try:
        context = public_keys_from_bytes(store.get(CONTEXT_KEY), source=f"{store.location}/{CONTEXT_KEY}")
    except MedHeavenError as exc:
        return _fail(name, str(exc)), None
    expected = settings.context_fingerprint
    if expected and context.fingerprint != expected:
        return _fail(
            name,
            f"the store holds key set {context.fingerprint[:16]}…, MEDHEAVEN_CONTEXT_FINGERPRINT is "
            f"{expected[:16]}…: point MEDHEAVEN_STORE at this federation's store or fix the fingerprint",
        ), context
    if not expected:
        return CheckResult(
            name,
            "warn",
            f"key set {context.fingerprint[:16]}… (MEDHEAVEN_CONTEXT_FINGERPRINT is not set: set it to "
            f"{context.fingerprint} so this node refuses a store with another key set)",
        ), context
    return _ok(name, f"key set {context.fingerprint[:16]}… matches MEDHEAVEN_CONTEXT_FINGERPRINT"), context


def check_registry(store: Store | None) -> CheckResult:
    name = "registry"
    if store is None:
        return _skip(name, "the store is unreachable")
    try:
        registry = load_registry(store)
    except MedHeavenError as exc:
        return _fail(name, str(exc))
    if not registry.keys:
        return CheckResult(
            name,
            "warn",
            f"no hospital is registered in {REGISTRY_KEY}: `medheaven hospital register --id ID --verify-key "
            "ID.verify.hex` for each hospital before a run",
        )
    return _ok(name, f"{len(registry.keys)} hospitals registered: {', '.join(sorted(registry.keys))}")


# -- hospital ---------------------------------------------------------------------------------------------
def check_hospital_id(settings: Settings) -> CheckResult:
    name = "hospital id"
    if not settings.hospital_id:
        return _fail(name, "MEDHEAVEN_HOSPITAL_ID is not set (the worker serves queue hospital.<id>)")
    try:
        validate_hospital_id(settings.hospital_id)
    except MedHeavenError as exc:
        return _fail(name, str(exc))
    return _ok(name, f"{settings.hospital_id} (queue hospital.{settings.hospital_id})")


def _mode(path: Path) -> str:
    return f"{path.stat().st_mode & 0o777:o}"


def check_secret_context(settings: Settings, public: PublicKeys | None) -> CheckResult:
    name = "secret context"
    path = settings.secret_context
    if path is None:
        return _fail(
            name,
            "MEDHEAVEN_SECRET_CONTEXT is not set: install the federation's context.secret (from the key holder, "
            "out of band) with mode 600 and point the variable at it",
        )
    if not path.is_file():
        return _fail(name, f"MEDHEAVEN_SECRET_CONTEXT={path} does not exist")
    try:
        check_private_file_mode(path)
        secret = secret_keys_from_bytes(path.read_bytes(), source=str(path))
    except (MedHeavenError, OSError) as exc:
        return _fail(name, str(exc))
    expected = settings.context_fingerprint
    if expected and secret.fingerprint != expected:
        return _fail(
            name,
            f"{path} is key set {secret.fingerprint[:16]}…, MEDHEAVEN_CONTEXT_FINGERPRINT is {expected[:16]}…: "
            "install this federation's context.secret",
        )
    if public is not None and secret.fingerprint != public.fingerprint:
        return _fail(
            name,
            f"{path} is key set {secret.fingerprint[:16]}…, the store's public context is "
            f"{public.fingerprint[:16]}…: this hospital holds another federation's key",
        )
    against = "the store's public context" if public is not None else "nothing (no public context to compare)"
    return _ok(name, f"{path} (mode {_mode(path)}, key set {secret.fingerprint[:16]}…) matches {against}")


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
        return _fail(name, "MEDHEAVEN_SIGNING_KEY is not set: create one with `medheaven hospital init`")
    if not hospital:
        return _skip(name, "MEDHEAVEN_HOSPITAL_ID is not set")
    try:
        key = load_signing_key(path, hospital_id=hospital)
    except (MedHeavenError, OSError) as exc:
        return _fail(name, str(exc))
    if store is None:
        return _skip(name, f"{path} loads, but the store is unreachable, so its registration is unknown")
    problem = _registration_problem(store, hospital, key, path)
    if problem:
        return _fail(name, problem)
    return _ok(name, f"{path} (mode {_mode(path)}) is registered for {hospital}")


def check_agreement_key(settings: Settings, store: Store | None) -> CheckResult:
    """The X25519 agreement key beside the signing key: present, owner-only, its public half registered."""
    name = "agreement key"
    if settings.signing_key is None or not settings.hospital_id:
        return _skip(name, "MEDHEAVEN_SIGNING_KEY or MEDHEAVEN_HOSPITAL_ID is not set")
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
            return _fail(name, f"{path} does not exist: pairwise-masked runs need it; {fix}")
        public = agreement_public_hex(load_agreement_key(path))  # refuses a group- or world-readable file
    except (MedHeavenError, OSError) as exc:
        return _fail(name, str(exc))
    if store is None:
        return _skip(name, f"{path} loads, but the store is unreachable, so its registration is unknown")
    problem = _agreement_registration_problem(store, hospital, public, path, fix)
    if problem:
        return _fail(name, problem)
    return _ok(name, f"{path} (mode {_mode(path)}) is registered for {hospital}")


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
        return _fail(name, "MEDHEAVEN_DATA_PATH is not set")
    if not path.is_file() or not os.access(path, os.R_OK):
        return _fail(name, f"MEDHEAVEN_DATA_PATH={path} is not a readable file")
    from medheaven.data import GROUP, LABEL, get_schema, load_dataset

    try:
        schema = get_schema(settings.schema_name, schema_file=settings.schema_file)
        frame = load_dataset(path, schema)
    except (MedHeavenError, OSError) as exc:
        return _fail(name, f"{path} with schema {settings.schema_name}: {exc}")
    rows = len(frame)
    if rows == 0:
        return _fail(name, f"{path} has no usable rows with schema {settings.schema_name}")
    patients = int(frame[GROUP].nunique())
    positive = float(frame[LABEL].mean())
    return _ok(
        name,
        f"{path}: {rows} rows, {patients} patients, {positive:.1%} positive (schema {settings.schema_name})",
    )


# -- nodes that must hold no secret -----------------------------------------------------------------------
def secret_material_kind(path: Path) -> str | None:
    """'a secret CKKS context', 'an Ed25519 signing key' or 'an X25519 agreement key' if ``path`` is readable and
    holds one, else None."""
    try:
        if not path.is_file() or path.stat().st_size > _MAX_PROBED_FILE:
            return None
        data = path.read_bytes()
    except OSError:
        return None  # unreadable by this user is exactly what a node without keys needs
    try:
        secret = secret_keys_from_bytes(data, source=str(path))
        return "a secret CKKS context" if isinstance(secret, SecretContext) else "a secret bfv-masked context"
    except MedHeavenError:
        pass
    if b"PRIVATE KEY-----" in data:
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
        from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
        from cryptography.hazmat.primitives.serialization import load_pem_private_key

        try:
            key = load_pem_private_key(data, password=None)
        except (ValueError, TypeError):
            key = None
        kinds = {Ed25519PrivateKey: "an Ed25519 signing key", X25519PrivateKey: "an X25519 agreement key"}
        return next((kind for cls, kind in kinds.items() if isinstance(key, cls)), None)
    return None


def _configured_paths(settings: Settings) -> list[tuple[str, Path]]:
    paths: list[tuple[str, Path]] = []
    for field in Settings.model_fields:
        value = getattr(settings, field)
        if isinstance(value, Path) and field not in {"secret_context", "signing_key"}:
            paths.append((f"MEDHEAVEN_{field.upper()}", value))
    return paths


def check_no_secret_material(
    settings: Settings, *, role: Role, secret_dirs: Iterable[Path] = DEFAULT_SECRET_DIRS
) -> CheckResult:
    """The aggregator and the coordinator must not be able to decrypt or to sign as a hospital."""
    name = "no secret key"
    if settings.secret_context is not None:
        if role == "aggregator":
            try:  # the very refusal the aggregator worker's start-up check raises
                check_aggregator_settings(settings)
            except KeyCustodyError as exc:
                return _fail(name, str(exc))
        return _fail(
            name,
            f"MEDHEAVEN_SECRET_CONTEXT={settings.secret_context} is set on the {role}; the {role} must not have "
            "access to the secret context: unset it",
        )
    if settings.signing_key is not None:
        return _fail(
            name,
            f"MEDHEAVEN_SIGNING_KEY={settings.signing_key} is set on the {role}; signing keys stay on their "
            "hospital's machines: unset it",
        )
    for variable, path in _configured_paths(settings):
        kind = secret_material_kind(path)
        if kind:
            return _fail(name, f"{variable}={path} is {kind}; the {role} must not be able to read it")
    scanned: list[str] = []
    for folder in secret_dirs:
        if not folder.is_dir():
            continue
        scanned.append(str(folder))
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            kind = secret_material_kind(path)
            if kind:
                return _fail(
                    name, f"{path} is {kind} and readable by the {role}: remove it from this node's secrets/mounts"
                )
    where = f", nothing readable in {', '.join(scanned)}" if scanned else ""
    return _ok(name, f"no secret context or signing key configured{where}")


# -- roles ------------------------------------------------------------------------------------------------
def run_checks(
    role: Role,
    settings: Settings,
    *,
    timeout: float = 3.0,
    secret_dirs: Sequence[Path] = DEFAULT_SECRET_DIRS,
) -> list[CheckResult]:
    """The checks of ``role``, in the order an operator fixes them."""
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}; choose one of {', '.join(ROLES)}")
    results: list[CheckResult] = []
    if role == "hospital":
        results.append(check_hospital_id(settings))
    results.append(check_broker(settings, timeout=timeout))
    backend = check_result_backend(settings, timeout=timeout)
    if backend is not None:
        results.append(backend)
    store_result, store = check_store(settings)
    results.append(store_result)
    context_result, public = check_public_context(settings, store)
    results.append(context_result)
    if role == "hospital":
        results.append(check_secret_context(settings, public))
        results.append(check_signing_key(settings, store))
        results.append(check_agreement_key(settings, store))
        results.append(check_data(settings))
    else:
        results.append(check_no_secret_material(settings, role=role, secret_dirs=secret_dirs))
        results.append(check_registry(store))
    return results


def diagnose(
    role: Role,
    *,
    settings_factory: Callable[[], Settings] = Settings,
    timeout: float = 3.0,
    secret_dirs: Sequence[Path] = DEFAULT_SECRET_DIRS,
) -> DoctorReport:
    """Load the settings and run the role's checks; what ``medheaven doctor`` prints."""
    settings, parsed = load_settings(settings_factory)
    if settings is None:
        return DoctorReport(role, (parsed,))
    checks = run_checks(role, settings, timeout=timeout, secret_dirs=secret_dirs)
    return DoctorReport(role, (parsed, *checks))

"""Nodes that must hold no secret: neither configured nor readable in the secret folders (``/run/secrets``)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from medheaven.crypto.codec import secret_keys_from_bytes
from medheaven.crypto.context import SecretContext
from medheaven.doctor.results import CheckResult, Role, fail, ok
from medheaven.errors import KeyCustodyError, MedHeavenError
from medheaven.federated.nodes import check_aggregator_settings
from medheaven.settings import Settings

#: where container platforms (Docker, Kubernetes) mount secrets; scanned on nodes that must hold none
DEFAULT_SECRET_DIRS: tuple[Path, ...] = (Path("/run/secrets"),)
_MAX_PROBED_FILE = 64 * 1024 * 1024


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
                return fail(name, str(exc))
        return fail(
            name,
            f"MEDHEAVEN_SECRET_CONTEXT={settings.secret_context} is set on the {role}; the {role} must not have "
            "access to the secret context: unset it",
        )
    if settings.signing_key is not None:
        return fail(
            name,
            f"MEDHEAVEN_SIGNING_KEY={settings.signing_key} is set on the {role}; signing keys stay on their "
            "hospital's machines: unset it",
        )
    for variable, path in _configured_paths(settings):
        kind = secret_material_kind(path)
        if kind:
            return fail(name, f"{variable}={path} is {kind}; the {role} must not be able to read it")
    scanned: list[str] = []
    for folder in secret_dirs:
        if not folder.is_dir():
            continue
        scanned.append(str(folder))
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            kind = secret_material_kind(path)
            if kind:
                return fail(
                    name, f"{path} is {kind} and readable by the {role}: remove it from this node's secrets/mounts"
                )
    where = f", nothing readable in {', '.join(scanned)}" if scanned else ""
    return ok(name, f"no secret context or signing key configured{where}")

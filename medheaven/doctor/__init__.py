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

from collections.abc import Callable, Sequence
from pathlib import Path

from medheaven.doctor.broker import check_broker, check_result_backend, load_settings, ping_redis
from medheaven.doctor.custody import DEFAULT_SECRET_DIRS, check_no_secret_material, secret_material_kind
from medheaven.doctor.hospital import (
    check_agreement_key,
    check_data,
    check_hospital_id,
    check_secret_context,
    check_signing_key,
)
from medheaven.doctor.results import ROLES, CheckResult, DoctorReport, Role, Status, redact_url
from medheaven.doctor.store import check_public_context, check_registry, check_store
from medheaven.settings import Settings

__all__ = [
    "DEFAULT_SECRET_DIRS",
    "ROLES",
    "CheckResult",
    "DoctorReport",
    "Role",
    "Status",
    "check_agreement_key",
    "check_broker",
    "check_data",
    "check_hospital_id",
    "check_no_secret_material",
    "check_public_context",
    "check_registry",
    "check_result_backend",
    "check_secret_context",
    "check_signing_key",
    "check_store",
    "diagnose",
    "load_settings",
    "ping_redis",
    "redact_url",
    "run_checks",
    "secret_material_kind",
]


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

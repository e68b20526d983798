"""The store is reachable and holds the federation's public context (pinned fingerprint) and its hospital registry."""

from __future__ import annotations

import os
from pathlib import Path

from medheaven.crypto.codec import PublicKeys, public_keys_from_bytes
from medheaven.doctor.results import CheckResult, fail, ok, skip
from medheaven.errors import MedHeavenError
from medheaven.federated.paths import CONTEXT_KEY, REGISTRY_KEY
from medheaven.federated.setup import load_registry
from medheaven.settings import Settings
from medheaven.store import open_store
from medheaven.store.base import Store


def check_store(settings: Settings) -> tuple[CheckResult, Store | None]:
    """Open the store without creating anything: a mistyped folder must not become an empty new store."""
    url = settings.store
    if url.startswith("file://"):
        root = Path(url.removeprefix("file://") or ".").resolve()
        if not root.is_dir():
            return fail(
                "store", f"store folder {root} does not exist: mount the shared store there or fix MEDHEAVEN_STORE"
            ), None
        if not os.access(root, os.R_OK | os.W_OK | os.X_OK):
            return fail("store", f"store folder {root} is not writable by this user (uid {os.getuid()})"), None
    try:
        store = open_store(url, settings=settings)
        has_context = store.exists(CONTEXT_KEY)
        has_registry = store.exists(REGISTRY_KEY)
    except (MedHeavenError, OSError) as exc:
        return fail("store", f"{url}: {exc}"), None
    found = [key for key, present in ((CONTEXT_KEY, has_context), (REGISTRY_KEY, has_registry)) if present]
    return ok("store", f"{store.location} reachable ({', '.join(found) or 'empty'})"), store


def check_public_context(settings: Settings, store: Store | None) -> tuple[CheckResult, PublicKeys | None]:
    name = "public context"
    if store is None:
        return skip(name, "the store is unreachable"), None
    if not store.exists(CONTEXT_KEY):
        return fail(
            name,
            f"{CONTEXT_KEY} is not in the store: the operator publishes it with "
            "`medheaven federation publish --public-context context.public`",
        ), None
    try:
        context = public_keys_from_bytes(store.get(CONTEXT_KEY), source=f"{store.location}/{CONTEXT_KEY}")
    except MedHeavenError as exc:
        return fail(name, str(exc)), None
    expected = settings.context_fingerprint
    if expected and context.fingerprint != expected:
        return fail(
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
    return ok(name, f"key set {context.fingerprint[:16]}… matches MEDHEAVEN_CONTEXT_FINGERPRINT"), context


def check_registry(store: Store | None) -> CheckResult:
    name = "registry"
    if store is None:
        return skip(name, "the store is unreachable")
    try:
        registry = load_registry(store)
    except MedHeavenError as exc:
        return fail(name, str(exc))
    if not registry.keys:
        return CheckResult(
            name,
            "warn",
            f"no hospital is registered in {REGISTRY_KEY}: `medheaven hospital register --id ID --verify-key "
            "ID.verify.hex` for each hospital before a run",
        )
    return ok(name, f"{len(registry.keys)} hospitals registered: {', '.join(sorted(registry.keys))}")

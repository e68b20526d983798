"""Operator views of a store: what runs and rounds it holds, and whether every committed file matches its manifest."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from medheaven.crypto.codec import public_keys_from_bytes
from medheaven.errors import StoreKeyNotFoundError
from medheaven.federated.paths import CONTEXT_KEY, RunPaths
from medheaven.federated.phase import Phase
from medheaven.federated.protocol import sha256_hex
from medheaven.federated.results import last_committed_round
from medheaven.federated.wire import Manifest
from medheaven.store.base import Store


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return {"check": self.name, "ok": self.ok, "detail": self.detail}


def list_runs(store: Store) -> list[str]:
    return sorted({key.split("/", 1)[0] for key in store.list() if key.endswith("/model.json")})


def committed_rounds(store: Store, run: str) -> list[int]:
    return list(range(last_committed_round(store, run) + 1))


def _check_file(store: Store, key: str, sha256: str, what: str) -> Check:
    try:
        data = store.get(key)
    except StoreKeyNotFoundError:
        return Check(what, False, f"{key} is missing")
    digest = sha256_hex(data)
    if digest != sha256:
        return Check(what, False, f"{key} has sha256 {digest[:12]}…, the manifest says {sha256[:12]}…")
    return Check(what, True, f"{key} ({len(data)} bytes) matches")


def check_run(store: Store, run: str) -> list[Check]:
    """Every committed round's files exist and match the digests in its manifest; the chain of bases holds."""
    paths = RunPaths(run)
    checks: list[Check] = []
    model = store.get_json(paths.model)
    if not model.get("plaintext"):
        try:
            context = public_keys_from_bytes(store.get(CONTEXT_KEY), source=CONTEXT_KEY)
            same = context.fingerprint == model["fingerprint"]
            checks.append(
                Check(
                    "context",
                    same,
                    f"public context {context.fingerprint[:12]}… "
                    + ("matches model.json" if same else f"but model.json says {model['fingerprint'][:12]}…"),
                )
            )
        except StoreKeyNotFoundError:
            checks.append(Check("context", False, f"{CONTEXT_KEY} is missing from the store"))
    previous = ""
    stats_key = paths.manifest(Phase.STATS, 0)
    if store.exists(stats_key):
        stats = Manifest.from_dict(store.get_json(stats_key))
        checks.append(_check_file(store, stats.result_key, stats.result_sha256, "stats"))
    for round_number in committed_rounds(store, run):
        manifest = Manifest.from_dict(store.get_json(paths.manifest(Phase.UPDATE, round_number)))
        label = f"round {round_number}"
        checks.append(_check_file(store, manifest.result_key, manifest.result_sha256, label))
        if manifest.base_sha256 != previous:
            checks.append(
                Check(
                    label,
                    False,
                    f"starts from {manifest.base_sha256[:12]}…, round {round_number - 1} committed {previous[:12]}…",
                )
            )
        for entry in manifest.folded:
            if store.exists(entry.key):
                checks.append(_check_file(store, entry.key, entry.sha256, f"{label} update {entry.hospital}"))
        previous = manifest.result_sha256
    return checks

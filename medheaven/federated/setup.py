"""The key ceremony and federation set-up as functions: used by the CLI, the demo and the tests alike.

In a real deployment each step runs on a different machine (see docs/deployment.md): one key holder runs
``init_keys`` and hands the secret context to the other hospitals out of band; every hospital runs
``create_hospital_identity`` and ``create_agreement_key`` and sends only the two public halves (verification key,
agreement key); an operator publishes the public context and the registry to the store.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from medheaven.crypto.codec import Parameters, PublicKeys, create_keys, load_public_keys, public_keys_from_bytes
from medheaven.crypto.masks import create_agreement_key
from medheaven.crypto.signing import HospitalRegistry, create_hospital_identity
from medheaven.errors import ConfigurationError, StoreConflictError
from medheaven.federated.paths import CONTEXT_KEY, REGISTRY_KEY
from medheaven.private_files import write_private_file, write_public_file
from medheaven.store.base import Store

SECRET_CONTEXT_FILE = "context.secret"  # noqa: S105 - a file name, not a secret
PUBLIC_CONTEXT_FILE = "context.public"


@dataclass(frozen=True)
class KeyFiles:
    secret: Path
    public: Path
    fingerprint: str


def init_keys(out_dir: Path, params: Parameters, *, force: bool = False, encryption: str | None = None) -> KeyFiles:
    """Create the federation's key set (bfv-masked or ckks, by ``params``): secret context (0600, hospitals only)
    and public context. ``encryption`` (symmetric / public-key) applies to ``ckks`` only."""
    secret_path = out_dir / SECRET_CONTEXT_FILE
    public_path = out_dir / PUBLIC_CONTEXT_FILE
    if not force:
        for path in (secret_path, public_path):
            if path.exists():
                raise ConfigurationError(f"{path} exists; pass --force to replace the federation's keys")
    secret = create_keys(params, encryption=encryption)
    write_private_file(secret_path, secret.to_bytes(), force=force)
    write_public_file(public_path, secret.public().to_bytes(), force=force)
    return KeyFiles(secret=secret_path, public=public_path, fingerprint=secret.fingerprint)


def publish_public_context(store: Store, context: PublicKeys) -> None:
    """Put the public context in the store; an existing, different one is never replaced."""
    data = context.to_bytes()
    if store.exists(CONTEXT_KEY):
        current = public_keys_from_bytes(store.get(CONTEXT_KEY), source=f"{store.location}/{CONTEXT_KEY}")
        if current.fingerprint != context.fingerprint:
            raise StoreConflictError(
                f"{store.location}/{CONTEXT_KEY} holds key set {current.fingerprint[:12]}…; refusing to replace it "
                f"with {context.fingerprint[:12]}… (runs encrypted under it would become unreadable)"
            )
        return
    store.create(CONTEXT_KEY, data)


def load_registry(store: Store) -> HospitalRegistry:
    if not store.exists(REGISTRY_KEY):
        return HospitalRegistry()
    return HospitalRegistry.from_dict(store.get_json(REGISTRY_KEY), source=f"{store.location}/{REGISTRY_KEY}")


def register_hospital(
    store: Store, hospital_id: str, verify_key_hex: str, agreement_key_hex: str | None = None
) -> HospitalRegistry:
    """Add or replace a hospital's entry; without an agreement key it can only take part in unmasked runs."""
    registry = load_registry(store).with_hospital(hospital_id, verify_key_hex, agreement_key_hex)
    store.put_json(REGISTRY_KEY, registry.to_dict())
    return registry


def unregister_hospital(store: Store, hospital_id: str) -> HospitalRegistry:
    registry = load_registry(store).without_hospital(hospital_id)
    store.put_json(REGISTRY_KEY, registry.to_dict())
    return registry


@dataclass(frozen=True)
class HospitalFiles:
    hospital_id: str
    signing_key: Path
    verify_key: Path
    agreement_key: Path  # X25519 private key (0600), beside the signing key
    agreement_public: Path


def set_up_federation(
    keys_dir: Path, store: Store, hospitals: list[str], params: Parameters
) -> tuple[KeyFiles, dict[str, HospitalFiles]]:
    """Everything a simulation needs in one call: keys, identities, registry and public context in the store."""
    keys = init_keys(keys_dir, params, force=True)
    publish_public_context(store, load_public_keys(keys.public))
    identities: dict[str, HospitalFiles] = {}
    for hospital in hospitals:
        signing, verify = create_hospital_identity(hospital, keys_dir, force=True)
        agreement, agreement_public = create_agreement_key(hospital, keys_dir, force=True)
        register_hospital(store, hospital, verify.read_text(), agreement_public.read_text())
        identities[hospital] = HospitalFiles(hospital, signing, verify, agreement, agreement_public)
    return keys, identities

"""The original project's "privacy measure", done properly: the same updates aggregated under encryption and in
the clear must agree to within the CKKS error bound. Key holders only (it decrypts individual updates)."""

from __future__ import annotations

from typing import Any

import numpy as np

from medheaven.crypto.context import SecretContext
from medheaven.crypto.envelope import Envelope
from medheaven.crypto.packing import decrypt_chunks, unpack_average
from medheaven.errors import DigestMismatchError
from medheaven.federated.paths import RunPaths
from medheaven.federated.phase import Phase
from medheaven.federated.protocol import envelope_limits, sha256_hex
from medheaven.federated.wire import Manifest, RunDescription
from medheaven.store.base import Store


def _open(store: Store, run: RunDescription, secret: SecretContext | None, key: str, sha256: str) -> np.ndarray:
    data = store.get(key)
    if sha256_hex(data) != sha256:
        raise DigestMismatchError(f"{key} does not match the digest recorded in the manifest")
    envelope = Envelope.from_bytes(data, limits=envelope_limits(run))
    if run.plaintext or secret is None:
        return np.concatenate([np.frombuffer(c, dtype="<f8") for c in envelope.chunks])[: envelope.length]
    return decrypt_chunks(secret, envelope.chunks, length=envelope.length)


def verify_round(store: Store, secret: SecretContext | None, run: str, round_number: int) -> dict[str, Any]:
    """Compare the committed (homomorphically summed) global model with plaintext FedAvg of the folded updates."""
    paths = RunPaths(run)
    description = RunDescription.from_dict(store.get_json(paths.model))
    manifest = Manifest.from_dict(store.get_json(paths.manifest(Phase.UPDATE, round_number)))
    plain_sum = np.zeros(description.vector_length)
    for entry in manifest.folded:
        plain_sum += _open(store, description, secret, str(entry["key"]), str(entry["sha256"]))
    reference, reference_total = unpack_average(plain_sum)
    he_sum = _open(store, description, secret, manifest.result_key, manifest.result_sha256)
    he_average, he_total = unpack_average(he_sum)
    error = np.abs(he_average - reference)
    relative = error / np.maximum(np.abs(reference), 1e-12)
    return {
        "run": run,
        "round": round_number,
        "hospitals": list(manifest.participants),
        "parameters": int(reference.size),
        "total_samples_match": he_total == reference_total,
        "max_abs_error": float(error.max()),
        "mean_abs_error": float(error.mean()),
        "max_rel_error": float(relative[np.abs(reference) > 1e-6].max()) if np.any(np.abs(reference) > 1e-6) else 0.0,
        "error_bound": description.params.error_bound,
        "within_bound": bool(error.max() <= description.params.error_bound),
    }

"""The original project's "privacy measure", done properly: the same updates aggregated under encryption and in
the clear must agree. Key holders only.

``ckks`` (and the plaintext mode): each folded update is decrypted, the plaintext FedAvg of those updates is
compared with the committed global model within the CKKS error bound.

``bfv-masked``: an individual upload decrypts to uniform residues (its pairwise mask), so the check is the exact
one: the residues of the folded uploads, added mod t, must equal the committed sum's residues *bit for bit* (the
masks cancel exactly, and BFV addition is exact). The committed average is then within the quantisation bound of
what the hospitals meant to send, which the codec's own tests establish; this function never sees an unmasked
individual update, because nobody can produce one.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from medheaven.crypto.codec import BfvMaskedCodec, SecretKeys, hospital_codec
from medheaven.crypto.envelope import Envelope
from medheaven.crypto.packing import unpack_average
from medheaven.errors import DigestMismatchError
from medheaven.federated.paths import RunPaths
from medheaven.federated.phase import Phase
from medheaven.federated.protocol import envelope_limits, sha256_hex
from medheaven.federated.wire import Manifest, RunDescription
from medheaven.store.base import Store


def _envelope(store: Store, run: RunDescription, key: str, sha256: str) -> Envelope:
    data = store.get(key)
    if sha256_hex(data) != sha256:
        raise DigestMismatchError(f"{key} does not match the digest recorded in the manifest")
    return Envelope.from_bytes(data, limits=envelope_limits(run))


def verify_round(store: Store, secret: SecretKeys | None, run: str, round_number: int) -> dict[str, Any]:
    """Compare the committed (homomorphically summed) global model with the sum of the folded updates."""
    paths = RunPaths(run)
    description = RunDescription.from_dict(store.get_json(paths.model))
    manifest = Manifest.from_dict(store.get_json(paths.manifest(Phase.UPDATE, round_number)))
    codec = hospital_codec(description.scheme, secret, slots=description.params.slots)
    if isinstance(codec, BfvMaskedCodec):
        return _verify_exact(store, codec, description, manifest)
    plain_sum = np.zeros(description.vector_length)
    for entry in manifest.folded:
        envelope = _envelope(store, description, entry.key, entry.sha256)
        plain_sum += codec.decode_sum(envelope.chunks, length=envelope.length, scale_bits=envelope.scale_bits)
    reference, reference_total = unpack_average(plain_sum)
    result = _envelope(store, description, manifest.result_key, manifest.result_sha256)
    he_sum = codec.decode_sum(result.chunks, length=result.length, scale_bits=result.scale_bits)
    he_average, he_total = unpack_average(he_sum)
    error = np.abs(he_average - reference)
    relative = error / np.maximum(np.abs(reference), 1e-12)
    return {
        "run": run,
        "round": round_number,
        "scheme": description.scheme.value,
        "hospitals": list(manifest.participants),
        "parameters": int(reference.size),
        "total_samples_match": he_total == reference_total,
        "max_abs_error": float(error.max()),
        "mean_abs_error": float(error.mean()),
        "max_rel_error": float(relative[np.abs(reference) > 1e-6].max()) if np.any(np.abs(reference) > 1e-6) else 0.0,
        "error_bound": description.params.error_bound,
        "within_bound": bool(error.max() <= description.params.error_bound),
    }


def _verify_exact(
    store: Store, codec: BfvMaskedCodec, description: RunDescription, manifest: Manifest
) -> dict[str, Any]:
    modulus_mask = np.uint64(codec.params.plain_modulus - 1)
    length = description.vector_length
    residues = np.zeros(length, dtype=np.uint64)
    for entry in manifest.folded:
        envelope = _envelope(store, description, entry.key, entry.sha256)
        residues += codec.decode_residues(envelope.chunks, length=envelope.length)  # wraps mod 2^64; t divides it
    np.bitwise_and(residues, modulus_mask, out=residues)
    result = _envelope(store, description, manifest.result_key, manifest.result_sha256)
    committed = codec.decode_residues(result.chunks, length=result.length)
    mismatched = int(np.count_nonzero(committed != residues))
    average, total = unpack_average(
        codec.decode_sum(result.chunks, length=result.length, scale_bits=result.scale_bits), exact=True
    )
    return {
        "run": manifest.run,
        "round": manifest.round,
        "scheme": description.scheme.value,
        "hospitals": list(manifest.participants),
        "parameters": int(average.size),
        "total_samples": total,
        "total_samples_match": mismatched == 0,
        "mismatched_lanes": mismatched,
        "max_abs_error": 0.0 if mismatched == 0 else float("inf"),
        "mean_abs_error": 0.0 if mismatched == 0 else float("inf"),
        "max_rel_error": 0.0 if mismatched == 0 else float("inf"),
        "error_bound": description.params.error_bound,
        "within_bound": mismatched == 0,
    }

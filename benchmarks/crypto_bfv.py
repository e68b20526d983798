"""bfv-masked rows of ``python -m benchmarks.crypto``: sizes, encrypt + mask cost against K, the real fold path.

Measured per model parameter, on one core (``benchmarks.crypto`` pins the process):

* upload and global-model bytes (seeded upload, full-size sum);
* encrypt + mask at K hospitals: one hospital derives K - 1 pair streams (``masks.pairwise_mask``) and encodes
  (quantise, add mask, seeded ``encrypt_symmetric``); reported for several K, since the mask cost grows with K;
* the real fold path, as the aggregator runs it per envelope: one sha256 pass (``read_envelope``: receipt digest and
  signed body digest), Ed25519 verification and header checks (``check_envelope``), SEAL load of every seeded chunk
  (seed expansion, validity checks) and addition (``BfvAccumulator.add_chunks``). The same path for a ckks envelope
  of format 2 and of format 1 (two digest passes) is measured for comparison;
* decrypt (hospital side, the global model) and the FedAvg error against the plaintext reference.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from functools import partial
from typing import Any

import numpy as np
import tenseal.sealapi as seal
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from benchmarks.timing import best_time
from medheaven.crypto.bfv import BfvSecretKeys
from medheaven.crypto.bfv_planning import plan_bfv_parameters
from medheaven.crypto.codec import (
    AggregatorCodec,
    BfvMaskedCodec,
    Scheme,
    aggregator_codec,
    create_keys,
    hospital_codec,
)
from medheaven.crypto.context import SecretContext, create_key_material
from medheaven.crypto.envelope import Envelope, EnvelopeExpectation, EnvelopeLimits, read_envelope
from medheaven.crypto.masks import MaskScope, pairwise_mask
from medheaven.crypto.packing import pack_update, unpack_average
from medheaven.crypto.planning import plan_ckks_parameters
from medheaven.crypto.seal_files import load_path
from medheaven.crypto.signing import HospitalRegistry, SigningKey
from medheaven.federated.fedavg import fedavg
from medheaven.federated.fold import fold_update

MASK_COHORTS = (2, 5, 10, 25, 50, 100)
BASE = "ab" * 32


def _cohort(size: int) -> tuple[list[str], dict[str, X25519PrivateKey], MaskScope]:
    ids = [f"h{i:03d}" for i in range(size)]
    keys = {h: X25519PrivateKey.generate() for h in ids}
    return ids, keys, MaskScope(run="bench", phase="update", round=1, attempt=0, cohort=tuple(ids))


def _mask(ids: list[str], keys: dict[str, X25519PrivateKey], scope: MaskScope, own: str, length: int) -> np.ndarray:
    peers = {p: keys[p].public_key() for p in ids if p != own}
    return pairwise_mask(own, keys[own], peers, scope, length, 1 << 47)


def _envelope(hospital: str, chunks: tuple[bytes, ...], length: int, scale: int, fp: str, scheme: str) -> Envelope:
    return Envelope("update", "bench", 1, hospital, fp, BASE, length, scale, chunks, scheme=scheme)


def fold_path_seconds(
    aggregator: AggregatorCodec,
    envelopes: list[bytes],
    *,
    limits: EnvelopeLimits,
    expect: EnvelopeExpectation,
    registry: HospitalRegistry,
    repeat: int,
) -> float:
    """Seconds to fold ``envelopes[1]`` into a sum holding ``envelopes[0]``, as the aggregator does (best of R),
    each repeat into a fresh accumulator of the aggregator's codec."""
    receipts = [read_envelope(data, limits=limits)[1] for data in envelopes]
    times = []
    for _ in range(repeat):
        accumulator = aggregator.accumulator(expect.length)
        first, _ = read_envelope(envelopes[0], limits=limits)
        fold_update(accumulator, first, expect=expect, registry=registry)
        start = time.perf_counter()
        envelope, digest = read_envelope(envelopes[1], limits=limits)
        if digest != receipts[1]:
            raise AssertionError("receipt digest mismatch in the benchmark")
        fold_update(accumulator, envelope, expect=expect, registry=registry)
        times.append(time.perf_counter() - start)
    return min(times)


def _seal_load_add(secret: BfvSecretKeys, first: tuple[bytes, ...]) -> Callable[[tuple[bytes, ...]], None]:
    """SEAL's own share of a fold: load (expand the seed, check) and add each chunk; the floor for the fold path."""
    context = secret.context
    evaluator = seal.Evaluator(context)
    sums = []
    for chunk in first:
        ciphertext = seal.Ciphertext(context)
        ciphertext.load(context, load_path(chunk))
        sums.append(ciphertext)

    def add(second: tuple[bytes, ...]) -> None:
        for index, chunk in enumerate(second):
            ciphertext = seal.Ciphertext(context)
            ciphertext.load(context, load_path(chunk))
            evaluator.add_inplace(sums[index], ciphertext)

    return add


def _signed(envelope: Envelope, key: SigningKey) -> bytes:
    return envelope.signed_by(key).to_bytes()


def measure_bfv_masked(updates: list[tuple[np.ndarray, int]], repeat: int) -> dict[str, Any]:
    params = plan_bfv_parameters()
    secret = create_keys(params)
    assert isinstance(secret, BfvSecretKeys)
    codec = hospital_codec(Scheme.BFV_MASKED, secret)
    assert isinstance(codec, BfvMaskedCodec)
    packed = [pack_update(w, n, params=params) for w, n in updates]
    length = packed[0].size
    parameters = length - 1
    ids, keys, scope = _cohort(len(packed))
    masks = [_mask(ids, keys, scope, h, length) for h in ids]
    uploads = [codec.encode(v, scale_bits=params.scale_bits, mask=m) for v, m in zip(packed, masks, strict=True)]

    encode_seconds = best_time(lambda: codec.encode(packed[0], scale_bits=params.scale_bits, mask=masks[0]), repeat)
    mask_seconds: dict[int, float] = {}
    for size in MASK_COHORTS:
        mask_seconds[size] = best_time(partial(_mask, *_cohort(size), "h000", length), max(1, repeat - 1))

    signing = {h: SigningKey(h, Ed25519PrivateKey.generate()) for h in ids}
    registry = HospitalRegistry({h: k.verify_key_hex() for h, k in signing.items()})
    aggregator = aggregator_codec(Scheme.BFV_MASKED, secret.public())
    envelopes = [
        _signed(_envelope(h, up, length, params.scale_bits, secret.fingerprint, "bfv-masked"), signing[h])
        for h, up in zip(ids, uploads, strict=True)
    ]
    limits = EnvelopeLimits(
        max_chunks=codec.chunk_count(length), max_chunk_bytes=aggregator.max_upload_chunk_bytes(), max_length=length
    )
    expect = EnvelopeExpectation(
        "update", "bench", 1, secret.fingerprint, BASE, length, codec.chunk_count(length), params.scale_bits,
        scheme="bfv-masked",
    )  # fmt: skip
    fold_seconds = fold_path_seconds(
        aggregator, envelopes, limits=limits, expect=expect, registry=registry, repeat=repeat
    )
    seal_seconds = best_time(partial(_seal_load_add(secret, uploads[0]), uploads[1]), repeat)
    accumulator = aggregator.accumulator(length)
    for index, upload in enumerate(uploads):
        accumulator.add_chunks(upload, source=f"hospital {index}")
    summed = accumulator.to_chunks()
    decrypt_seconds = best_time(lambda: codec.decode_sum(summed, length=length, scale_bits=params.scale_bits), repeat)
    decoded = codec.decode_sum(summed, length=length, scale_bits=params.scale_bits)
    average, _ = unpack_average(decoded, exact=True)
    exact = np.array_equal(
        np.ldexp(decoded, params.scale_bits).astype(np.int64),
        sum(codec.quantise(v, scale_bits=params.scale_bits) for v in packed),
    )
    per_param = 1e6 / parameters
    return {
        "name": "medheaven bfv-masked (default)",
        "plain_modulus_bits": params.plain_modulus_bits,
        "scale_bits": params.scale_bits,
        "max_hospitals": params.max_hospitals,
        "error_bound": params.error_bound,
        "chunks": len(uploads[0]),
        "upload_bytes_per_param": sum(map(len, uploads[0])) / parameters,
        "global_bytes_per_param": sum(map(len, summed)) / parameters,
        "envelope_bytes_per_param": len(envelopes[0]) / parameters,
        "encode_us_per_param": encode_seconds * per_param,
        "mask_us_per_param_by_hospitals": {str(k): s * per_param for k, s in mask_seconds.items()},
        "encrypt_mask_us_per_param_by_hospitals": {
            str(k): (s + encode_seconds) * per_param for k, s in mask_seconds.items()
        },
        "fold_path_us_per_param": fold_seconds * per_param,
        "fold_path_mparams_per_s": parameters / fold_seconds / 1e6,
        "seal_load_add_mparams_per_s": parameters / seal_seconds / 1e6,
        "decrypt_us_per_param": decrypt_seconds * per_param,
        "max_abs_error": float(np.max(np.abs(average - fedavg(updates)))),
        "sum_exact": bool(exact),
        "noise_budget_bits_after_hospitals": secret.noise_budget(summed[0]),
        "hospitals": len(packed),
    }


def measure_ckks_fold_path(updates: list[tuple[np.ndarray, int]], repeat: int) -> dict[str, float]:
    """The same fold path for the older scheme: format 2 (one digest pass) and format 1 (two)."""
    params = plan_ckks_parameters()
    secret: SecretContext = create_key_material(params)
    codec = hospital_codec(Scheme.CKKS, secret)
    packed = [pack_update(w, n, params=params) for w, n in updates[:2]]
    length = packed[0].size
    ids = ["h000", "h001"]
    signing = {h: SigningKey(h, Ed25519PrivateKey.generate()) for h in ids}
    registry = HospitalRegistry({h: k.verify_key_hex() for h, k in signing.items()})
    aggregator = aggregator_codec(Scheme.CKKS, secret.public())
    uploads = [codec.encode(v, scale_bits=params.scale_bits, mask=None) for v in packed]
    limits = EnvelopeLimits(
        max_chunks=codec.chunk_count(length), max_chunk_bytes=params.max_chunk_bytes(), max_length=length
    )
    expect = EnvelopeExpectation(
        "update", "bench", 1, secret.fingerprint, BASE, length, codec.chunk_count(length), params.scale_bits
    )
    result = {}
    for version in (2, 1):
        envelopes = []
        for h, up in zip(ids, uploads, strict=True):
            envelope = _envelope(h, up, length, params.scale_bits, secret.fingerprint, "ckks")
            envelope = replace(envelope, version=version)
            envelopes.append(_signed(envelope, signing[h]))
        seconds = fold_path_seconds(
            aggregator, envelopes, limits=limits, expect=expect, registry=registry, repeat=repeat
        )
        result[f"format_{version}_mparams_per_s"] = (length - 1) / seconds / 1e6
    return result

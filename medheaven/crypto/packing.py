"""Packing: flat weights -> pre-scaled plaintext vector -> CKKS chunks, and back after aggregation.

A hospital with ``n_k`` training examples encrypts ``[n_k * w_0, ..., n_k * w_{P-1}, n_k]``. The encrypted sum
over hospitals is ``[sum n_k w, N]``; a key holder decrypts and divides by ``N`` (rounded to the integer it must
be). The aggregator therefore only adds, and no party but the hospitals ever sees an ``n_k`` or a weight.

Bounds are enforced *before* encryption because nobody can inspect values under encryption afterwards: a
non-finite or out-of-range weight would silently corrupt every hospital's result.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Protocol

import numpy as np

from medheaven.crypto.bfv_planning import BfvParameters
from medheaven.crypto.context import SecretContext
from medheaven.crypto.planning import CkksParameters
from medheaven.errors import PackingError


class UpdateBounds(Protocol):
    """What packing needs of a key set's parameters (CKKS or bfv-masked)."""

    @property
    def max_abs_weight(self) -> float: ...

    @property
    def max_total_samples(self) -> int: ...


def pack_update(weights: np.ndarray, n_samples: int, *, params: UpdateBounds) -> np.ndarray:
    vector = np.asarray(weights, dtype=np.float64)
    if vector.ndim != 1 or vector.size == 0:
        raise PackingError(f"weights must be a non-empty flat vector, got shape {vector.shape}")
    if not np.all(np.isfinite(vector)):
        bad = int(np.flatnonzero(~np.isfinite(vector))[0])
        raise PackingError(f"weight {bad} is {vector[bad]}: training diverged; refusing to encrypt it")
    largest = float(np.max(np.abs(vector)))
    if largest > params.max_abs_weight:
        raise PackingError(
            f"a weight of magnitude {largest:.4g} exceeds the federation's bound max_abs_weight="
            f"{params.max_abs_weight}: lower the learning rate or add regularisation, or re-key with a larger bound"
        )
    if not 1 <= n_samples <= params.max_total_samples:
        raise PackingError(
            f"sample count {n_samples} is outside 1..{params.max_total_samples} (max_total_samples of the key set)"
        )
    packed = np.empty(vector.size + 1, dtype=np.float64)
    np.multiply(vector, float(n_samples), out=packed[:-1])
    packed[-1] = float(n_samples)
    return packed


def encrypt_chunks(secret: SecretContext, values: np.ndarray, *, scale_bits: int | None = None) -> tuple[bytes, ...]:
    slots = secret.params.slots
    return tuple(
        secret.encrypt(values[start : start + slots], scale_bits=scale_bits) for start in range(0, values.size, slots)
    )


def decrypt_chunks(secret: SecretContext, chunks: Sequence[bytes | memoryview], *, length: int) -> np.ndarray:
    slots = secret.params.slots
    out = np.empty(length, dtype=np.float64)
    for index, chunk in enumerate(chunks):
        start = index * slots
        values = secret.decrypt(chunk)
        end = min(start + slots, length)
        out[start:end] = values[: end - start]
    return out


def unpack_average(summed: np.ndarray, *, exact: bool = False) -> tuple[np.ndarray, int]:
    """Divide the decrypted sum by the decrypted total sample count (an integer, so rounding is exact).

    ``exact`` (schemes whose sums decrypt exactly, ``Scheme.exact``): the total must *be* an integer. A masked sum
    that did not unmask (an unmasked upload, a mask of another attempt or cohort, a missing hospital) decodes every
    lane to a uniform residue, which is an integer >= 1 with probability about 2^-24 at the default step 2^-23.
    """
    if not math.isfinite(summed[-1]) or round(float(summed[-1])) < 1:
        raise PackingError(f"decrypted sample total is {summed[-1]!r}: the aggregate is empty or corrupt")
    if exact and float(summed[-1]) != round(float(summed[-1])):
        raise PackingError(
            f"decrypted sample total is {float(summed[-1])!r}, not an integer: the masks did not cancel (an upload "
            "was unmasked, masked for another attempt or cohort, or a hospital of the cohort is missing)"
        )
    total = round(float(summed[-1]))
    return summed[:-1] / total, total


def stats_scale_bits(params: CkksParameters | BfvParameters, *, max_abs_feature: float) -> int:
    """Scale for sufficient statistics (counts, sums, sums of squares), which need range more than precision."""
    bound = params.max_total_samples * max(max_abs_feature, 1.0) ** 2
    if isinstance(params, BfvParameters):
        bits = params.scale_bits_for(bound)  # the same wrap bound as the weights', at the statistics' range
    else:
        bits = math.floor(params.data_bits - 2 - math.log2(bound))
    if bits < 10:
        raise PackingError(
            f"sufficient statistics up to {bound:.3g} do not fit this key set; lower max_abs_feature "
            f"({max_abs_feature}) or max_total_samples ({params.max_total_samples})"
        )
    return min(bits, params.scale_bits)

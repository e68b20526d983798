"""CKKS parameter planning for additions-only FedAvg.

What is encrypted: slot values ``n_k * w_i`` (a hospital's weights pre-scaled by its sample count) plus ``n_k``
in a spare slot. The aggregator only adds, so no rescaling level is needed and the data modulus can be a single
prime; the last prime of TenSEAL's chain is the special (key-switching) prime, which TenSEAL requires even though
FedAvg never key-switches.

Two bounds decide the parameters (values in slots are multiplied by the scale ``2**s`` before rounding):

* overflow: every slot of the sum satisfies ``|value| <= B = max_total_samples * max(max_abs_weight, 1)``; the
  encoded sum must stay below half the data modulus with one bit to spare for noise:
  ``B * 2**s < 2**(data_bits - 2)``.
* precision: a fresh encryption adds at most ``2**NOISE_BITS`` (in scaled units) to each slot; a sum of K updates
  at most K times that. The average divides by ``N = sum n_k >= K`` (every hospital has at least one sample),
  so the error of the averaged weights is at most ``2**NOISE_BITS / 2**s``, whatever K is.

NOISE_BITS = 14 is the measured fresh-encryption error with two bits of margin: with TenSEAL 0.3.18 the largest
slot error at N=4096 and N=8192 was about 2**12 scaled units (``python -m benchmarks.crypto`` re-measures it).

Security: the total coefficient-modulus bit count must not exceed the HomomorphicEncryption.org standard's
128-bit classical security bound for the ring dimension (the table SEAL enforces by default).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from medheaven.errors import ParameterPlanningError
from medheaven.records import decode_record, encode_record

#: max total coefficient-modulus bits for 128-bit security (HE standard, ternary secret), by ring dimension
SECURITY_128_MAX_BITS: dict[int, int] = {1024: 27, 2048: 54, 4096: 109, 8192: 218, 16384: 438, 32768: 881}

NOISE_BITS = 14
#: public-key encryption noise grows ~linearly in N: measured max 2**12.8 / 2**13.9 / 2**14.6, plus margin
NOISE_BITS_BY_DEGREE: dict[int, int] = {4096: NOISE_BITS, 8192: NOISE_BITS + 1, 16384: NOISE_BITS + 2}

#: candidate chains, cheapest first: (ring dimension, data primes..., special prime)
_CANDIDATES: tuple[tuple[int, tuple[int, ...]], ...] = (
    (4096, (60, 49)),
    (8192, (60, 60, 60)),
    (16384, (60, 60, 60, 60)),
)

_MAX_SCALE_BITS = 58  # keeps encode() inside double precision's comfortable range


@dataclass(frozen=True)
class CkksParameters:
    poly_modulus_degree: int
    coeff_mod_bit_sizes: tuple[int, ...]
    scale_bits: int
    max_abs_weight: float
    max_total_samples: int
    precision: float

    @property
    def slots(self) -> int:
        return self.poly_modulus_degree // 2

    @property
    def data_bits(self) -> int:
        return sum(self.coeff_mod_bit_sizes[:-1])

    @property
    def error_bound(self) -> float:
        """Worst-case absolute error of a decrypted, averaged weight."""
        return float(2.0 ** NOISE_BITS_BY_DEGREE[self.poly_modulus_degree] / 2.0**self.scale_bits)

    @property
    def wire_bytes_per_slot(self) -> int:
        """Two polynomials of N coefficients per data prime, 8 bytes each, spread over N/2 slots."""
        return 32 * (len(self.coeff_mod_bit_sizes) - 1)

    def chunk_count(self, vector_length: int) -> int:
        return max(1, math.ceil(vector_length / self.slots))

    def max_chunk_bytes(self) -> int:
        """Upper bound on one serialised ciphertext, used by decoders before they allocate."""
        return 2 * self.poly_modulus_degree * (len(self.coeff_mod_bit_sizes) - 1) * 8 + 65536

    def to_dict(self) -> dict[str, Any]:
        return encode_record(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CkksParameters:
        return decode_record(cls, data, what="CKKS parameters", error=ParameterPlanningError)


def check_planning_bounds(*, max_abs_weight: float, max_total_samples: int, precision: float) -> None:
    """The bounds every scheme's planner takes, refused when they cannot mean anything."""
    if not math.isfinite(max_abs_weight) or max_abs_weight <= 0:
        raise ParameterPlanningError(f"max_abs_weight must be a positive number, got {max_abs_weight}")
    if max_total_samples < 1:
        raise ParameterPlanningError(f"max_total_samples must be >= 1, got {max_total_samples}")
    if not 0 < precision < 1:
        raise ParameterPlanningError(f"precision must be in (0, 1), got {precision}")


def plan_ckks_parameters(
    *,
    max_abs_weight: float = 8.0,
    max_total_samples: int = 1_000_000,
    precision: float = 1e-6,
) -> CkksParameters:
    """Choose the cheapest ring and chain whose overflow and precision bounds both hold.

    The ciphertext count follows from the model's parameter count (``chunk_count``); it does not change which
    parameters are feasible, because every slot is bounded by the same B.
    """
    check_planning_bounds(max_abs_weight=max_abs_weight, max_total_samples=max_total_samples, precision=precision)

    bound = max_total_samples * max(max_abs_weight, 1.0)
    for degree, chain in _CANDIDATES:
        min_scale = math.ceil(NOISE_BITS_BY_DEGREE[degree] + math.log2(1.0 / precision))
        if sum(chain) > SECURITY_128_MAX_BITS[degree]:
            continue
        data_bits = sum(chain[:-1])
        max_scale = min(math.floor(data_bits - 2 - math.log2(bound)), _MAX_SCALE_BITS)
        if max_scale >= min_scale:
            return CkksParameters(
                poly_modulus_degree=degree,
                coeff_mod_bit_sizes=chain,
                scale_bits=max_scale,
                max_abs_weight=float(max_abs_weight),
                max_total_samples=int(max_total_samples),
                precision=float(precision),
            )
    raise ParameterPlanningError(
        f"no 128-bit-secure CKKS parameters hold sums up to {bound:.3g} "
        f"(max_total_samples={max_total_samples} x max_abs_weight={max_abs_weight}) with precision {precision}: "
        "lower max_total_samples or max_abs_weight, or accept a coarser precision"
    )

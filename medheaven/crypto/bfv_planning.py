"""Parameter planning for ``bfv-masked``: exact BFV sums of fixed-point, pairwise-masked FedAvg updates.

What is encrypted: a hospital's packed values ``v = [n_k * w_0, ..., n_k * w_{P-1}, n_k]`` (``packing.pack_update``)
quantised to integers ``x = rint(v * 2^s)``, plus its pairwise mask, as residues mod the plain modulus ``t``, one
value per plaintext *coefficient* (no batching: addition is coefficient-wise in either encoding, and coefficient
encoding lets ``t`` be a power of two, which makes masks and residues exact bit operations). N = 4096 values per
ciphertext; a seeded symmetric ciphertext (SEAL's one-argument ``encrypt_symmetric``) stores its second polynomial
as a PRNG seed: 32,972 bytes = 8.05 B/value on upload; the aggregate is full size, 65,659 bytes = 16.03 B/value.

Bounds (B = max_total_samples * max(max_abs_weight, 1) bounds every lane of the *sum*, the sample lane included):

* precision: ``rint`` errs by at most 1/2 per hospital and lane; a sum over K hospitals by K/2 units of 2^-s; the
  average divides by ``N = sum n_k >= K``, so the averaged weight errs by at most ``2^-(s+1)`` whatever K is.
  ``error_bound = 2^-s`` keeps a factor 2 for float64 rounding (an int below 2^53 converts exactly; one division
  adds at most 2^-52 relative). Default plan: s = 23, error bound 1.19e-7 (precision asked: 1e-6).
* no wrap-around of the *unmasked* sum: ``B * 2^s + K/2 < t/2``, so the signed residue of the sum is the sum.
  The masks are uniform mod t and wrap freely: they cancel exactly mod t, which is all decryption needs.
* noise: SEAL samples encryption noise from a centred binomial distribution on [-21, 21] (SEAL 4.1,
  ``sample_poly_cbd``), and ``round(q * m / t)`` errs by at most 1/2 per coefficient. A sum of K symmetric fresh
  ciphertexts carries ``|noise| <= K * (21 + 1/2)``, which decrypts correctly while it is below ``q / (2t)``. This
  is a worst case, not a probability: the distribution is bounded. The plan requires ``K * 21.5 + 1 < q / (2t)``;
  for q ~ 2^60, t = 2^47 that is K <= 190, planned as ``max_hospitals = 100`` (~0.93 bits of margin at K = 100;
  SEAL's ``invariant_noise_budget`` reads 1 bit after 100 additions, measured by tests/test_crypto_bfv.py).
* security: N = 4096 and a single 60-bit prime q (no special prime: FedAvg never key-switches, so no relinearisation
  or Galois keys exist at all). The HomomorphicEncryption.org standard allows log q <= 109 at N = 4096 for 128-bit
  classical security with a ternary secret; 60 bits is well inside it (a smaller q is a harder LWE instance). SEAL
  re-checks this when the context is built (``sec_level = tc128``).

Ring and modulus are fixed: N = 4096 is the smallest ring whose secure q leaves room for both the noise and a
precision of 1e-6 (N = 2048 allows log q <= 54, which leaves t <= 2^41 and s <= 17: 7.6e-6). ``plan`` therefore only
picks t (the largest power of two the noise bound allows for ``max_hospitals``) and s (the finest step the wrap
bound allows for B), and refuses plans that miss the precision asked.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from medheaven.crypto.planning import check_planning_bounds
from medheaven.errors import ParameterPlanningError

SCHEME_NAME = "bfv-masked"
POLY_MODULUS_DEGREE = 4096
COEFF_MOD_BIT_SIZES = (60,)
#: the prime SEAL's ``CoeffModulus.Create(4096, [60])`` returns (checked when a context is built)
COEFF_MODULUS = 1152921504606830593
#: per-ciphertext worst-case noise: SEAL's centred binomial sampler's range plus the encoding's rounding
NOISE_PER_CIPHERTEXT = 21.5
MAX_PLAIN_BITS = 59
_SEAL_HEADER = 16
#: seeded upload: header + metadata + one polynomial + the seed, stored by SEAL's zstd framing (measured 32,972)
_SEEDED_SLACK = 1024


@dataclass(frozen=True)
class BfvParameters:
    plain_modulus_bits: int
    scale_bits: int
    max_abs_weight: float
    max_total_samples: int
    max_hospitals: int
    precision: float
    poly_modulus_degree: int = POLY_MODULUS_DEGREE
    coeff_mod_bit_sizes: tuple[int, ...] = COEFF_MOD_BIT_SIZES

    scheme = SCHEME_NAME

    @property
    def plain_modulus(self) -> int:
        return 1 << self.plain_modulus_bits

    @property
    def slots(self) -> int:
        """Values per ciphertext: one per coefficient."""
        return self.poly_modulus_degree

    @property
    def error_bound(self) -> float:
        """Worst-case absolute error of a decrypted, averaged weight (module docstring)."""
        return float(2.0**-self.scale_bits)

    @property
    def value_bound(self) -> float:
        """B: the largest magnitude any lane of a cohort's unmasked sum can reach."""
        return self.max_total_samples * max(self.max_abs_weight, 1.0)

    def chunk_count(self, vector_length: int) -> int:
        return max(1, math.ceil(vector_length / self.slots))

    def max_upload_chunk_bytes(self) -> int:
        """A seeded ciphertext: one polynomial of N 8-byte coefficients per prime, plus framing and seed."""
        return self.poly_modulus_degree * 8 * len(self.coeff_mod_bit_sizes) + _SEEDED_SLACK

    def max_chunk_bytes(self) -> int:
        """A full ciphertext (a sum): two polynomials, plus framing; decoders bound chunks by this first."""
        return 2 * self.poly_modulus_degree * 8 * len(self.coeff_mod_bit_sizes) + _SEEDED_SLACK

    def scale_bits_for(self, bound: float) -> int:
        """The finest step 2^-s whose quantised cohort sum stays inside ``t/2``: ``bound * 2^s + K/2 < t/2``."""
        room = self.plain_modulus / 2 - self.max_hospitals / 2 - 1
        return math.floor(math.log2(room / bound))

    def to_dict(self) -> dict[str, Any]:
        return {
            "scheme": SCHEME_NAME,
            "poly_modulus_degree": self.poly_modulus_degree,
            "coeff_mod_bit_sizes": list(self.coeff_mod_bit_sizes),
            "plain_modulus_bits": self.plain_modulus_bits,
            "scale_bits": self.scale_bits,
            "max_abs_weight": self.max_abs_weight,
            "max_total_samples": self.max_total_samples,
            "max_hospitals": self.max_hospitals,
            "precision": self.precision,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BfvParameters:
        if data.get("scheme") != SCHEME_NAME:
            raise ParameterPlanningError(f"parameters of scheme {data.get('scheme')!r} are not {SCHEME_NAME!r}")
        params = cls(
            plain_modulus_bits=int(data["plain_modulus_bits"]),
            scale_bits=int(data["scale_bits"]),
            max_abs_weight=float(data["max_abs_weight"]),
            max_total_samples=int(data["max_total_samples"]),
            max_hospitals=int(data["max_hospitals"]),
            precision=float(data["precision"]),
            poly_modulus_degree=int(data["poly_modulus_degree"]),
            coeff_mod_bit_sizes=tuple(int(b) for b in data["coeff_mod_bit_sizes"]),
        )
        check_bfv_parameters(params)
        return params


def max_hospitals_for(plain_modulus_bits: int) -> int:
    """The noise bound's largest cohort: ``K * NOISE_PER_CIPHERTEXT + 1 < q / (2t)``."""
    return int((COEFF_MODULUS / 2 ** (plain_modulus_bits + 1) - 1) // NOISE_PER_CIPHERTEXT)


def check_bfv_parameters(params: BfvParameters) -> None:
    """Refuse a parameter set (e.g. an edited key file) that breaks one of the module docstring's bounds."""
    if params.poly_modulus_degree != POLY_MODULUS_DEGREE or params.coeff_mod_bit_sizes != COEFF_MOD_BIT_SIZES:
        raise ParameterPlanningError(
            f"bfv-masked uses N={POLY_MODULUS_DEGREE} and chain {list(COEFF_MOD_BIT_SIZES)}, not "
            f"N={params.poly_modulus_degree} and {list(params.coeff_mod_bit_sizes)}"
        )
    if not 2 <= params.plain_modulus_bits <= MAX_PLAIN_BITS:
        raise ParameterPlanningError(f"plain modulus 2^{params.plain_modulus_bits} is outside 2^2..2^{MAX_PLAIN_BITS}")
    if params.max_hospitals < 1 or params.max_hospitals > max_hospitals_for(params.plain_modulus_bits):
        raise ParameterPlanningError(
            f"max_hospitals={params.max_hospitals}: the noise of that many ciphertexts does not fit "
            f"q/(2t) with t = 2^{params.plain_modulus_bits}"
        )
    if params.max_total_samples < 1 or not math.isfinite(params.max_abs_weight) or params.max_abs_weight <= 0:
        raise ParameterPlanningError("max_total_samples must be >= 1 and max_abs_weight a positive number")
    if params.scale_bits > params.scale_bits_for(params.value_bound):
        raise ParameterPlanningError(
            f"scale 2^-{params.scale_bits} lets a sum up to {params.value_bound:.3g} wrap mod t = "
            f"2^{params.plain_modulus_bits}"
        )


def plan_bfv_parameters(
    *,
    max_abs_weight: float = 8.0,
    max_total_samples: int = 1_000_000,
    max_hospitals: int = 100,
    precision: float = 1e-6,
) -> BfvParameters:
    """The largest t the noise bound allows for ``max_hospitals``, then the finest step the wrap bound allows."""
    check_planning_bounds(max_abs_weight=max_abs_weight, max_total_samples=max_total_samples, precision=precision)
    if max_hospitals < 1:
        raise ParameterPlanningError(f"max_hospitals must be >= 1, got {max_hospitals}")
    bits = MAX_PLAIN_BITS
    while bits > 2 and max_hospitals_for(bits) < max_hospitals:
        bits -= 1
    if max_hospitals_for(bits) < max_hospitals:
        raise ParameterPlanningError(f"no plain modulus keeps the noise of {max_hospitals} ciphertexts decryptable")
    params = BfvParameters(
        plain_modulus_bits=bits,
        scale_bits=0,
        max_abs_weight=float(max_abs_weight),
        max_total_samples=int(max_total_samples),
        max_hospitals=int(max_hospitals),
        precision=float(precision),
    )
    scale = params.scale_bits_for(params.value_bound)
    planned = BfvParameters(**{**params.__dict__, "scale_bits": scale})
    if scale < 0 or planned.error_bound > precision:
        raise ParameterPlanningError(
            f"bfv-masked cannot hold sums up to {params.value_bound:.3g} (max_total_samples={max_total_samples} x "
            f"max_abs_weight={max_abs_weight}) over {max_hospitals} hospitals with precision {precision}: the finest "
            f"step is 2^-{scale}. Lower max_total_samples, max_abs_weight or max_hospitals, or accept a coarser "
            "precision"
        )
    check_bfv_parameters(planned)
    return planned

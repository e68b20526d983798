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

import numpy as np

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


# --- the statistics phase: counts, and sums and sums of squares split across two lanes ---------------------------
#
# What is summed: per encoded feature j, a hospital's count n_kj of present values, its sum S_kj and its sum of
# squares Q_kj; the standardiser derives mu_j = S_j / n_j and sigma_j^2 = Q_j / n_j - mu_j^2 from the cohort's sums
# (``data.encoding.Standardiser.from_stats``). Bounds, with M = max_total_samples, A = max(max_abs_feature, 1) and
# R = t/2 - K_max/2 - 1 (the room of one lane, as in ``scale_bits_for``): |S_j| <= M A, 0 <= Q_j <= M A^2.
#
# One lane per statistic at one fixed-point step 2^-s, as a weight is sent, needs M A^2 2^s < R: at the key
# ceremony's defaults (M = 10^6, A = 1000, t = 2^47) that is s <= 6, nowhere near what standardisation needs.
#
# Layout ``StatsLanes`` (version 2): counts are integers and go at scale 0, one lane each (sum <= M < R). A sum or a
# sum of squares v goes at step 2^-s as the integer x = rint(v 2^s), split into two limbs x = hi 2^L + lo with
# 0 <= lo < 2^L (hi = floor(x / 2^L), negative for a negative sum). Sums over the cohort, lane by lane:
#
# * low lane: 0 <= sum_k lo_k <= K (2^L - 1) < R, so L = floor(log2(R / K_max));
# * high lane: |sum_k hi_k| <= sum_k (|x_k| / 2^L + 1) <= (B 2^s + K/2) / 2^L + K < R, with B = M A^2 (the larger of
#   the two bounds), so s is the largest step with (B 2^s + K_max/2) / 2^L + K_max < R;
# * recombination: sum_k x_k = (sum_k hi_k) 2^L + sum_k lo_k exactly, in integers. Decoded lanes are signed integers
#   below 2^46 (exact in float64), so ``ldexp(H, L - s) + ldexp(Lo, -s)`` adds two exact float64 values: IEEE
#   rounds that sum once, correctly, so the result is the exact fixed-point total rounded to the nearest float64
#   (what float64 arithmetic on the plaintext totals would give; property-tested against integer arithmetic).
#   A hospital never forms x itself (x reaches 2^85 at the defaults): hi = floor(v 2^(s-L)) and
#   lo = rint(2^L frac(v 2^(s-L))) are exact float64 operations, with a carry when lo rounds up to 2^L; rounding lo
#   half-to-even rounds x half-to-even, as L >= 1.
#
# Precision, and what standardisation needs. Each present hospital errs by at most 1/2 unit of 2^-s per total, and
# a feature's n_j >= that many hospitals, so |d mu| <= 2^-(s+1) and |d(Q/n)| <= 2^-(s+1), hence
# |d sigma^2| <= 2^-(s+1) (1 + 2A) to first order and |d sigma| / sigma <= 2^-(s+2) (1 + 2A) / sigma^2. A
# standardised feature z = (x - mu) / sigma is a float32 (``Standardiser.apply``): the statistics' step must move it
# by less than float32's resolution, 2^-24 relative, for every feature with sigma >= 1 (in its units), which asks
# s >= 23 for the mean and s >= 22 + log2(1 + 2A) for the deviation: ``STATS_MIN_SCALE``. At the defaults (A = 1000)
# that is s >= 33; the two-lane plan gives s = 45 (L = 39), so features down to sigma = 2^-6 meet it as well.
# (Plain float64 on the totals loses A^2 2^-53 ~ 2^-33 to cancellation in Q/n - mu^2 at |mu| = A: the
# fixed-point step then costs less than the formula's own rounding.)

#: float32's relative resolution: the standardised features are float32
_STANDARDISED_BITS = 24


def stats_min_scale_bits(max_abs_feature: float) -> int:
    """The finest step the statistics need (module comment above): s >= 23 and s >= 22 + log2(1 + 2A)."""
    bound = max(max_abs_feature, 1.0)
    return max(_STANDARDISED_BITS - 1, math.ceil(_STANDARDISED_BITS - 2 + math.log2(1 + 2 * bound)))


@dataclass(frozen=True)
class StatsLanes:
    """The statistics phase's lanes (version 2): per feature, a count, then the sums' and the squares' two limbs.

    Vector order: counts (F lanes), sum high limbs, sum low limbs, square high limbs, square low limbs (F each).
    The lanes are integers sent at scale 0; ``scale_bits`` is the step of the sums inside them.
    """

    scale_bits: int
    limb_bits: int
    version: int = 2

    LANES_PER_FEATURE = 5

    def vector_length(self, n_features: int) -> int:
        return self.LANES_PER_FEATURE * n_features

    def to_lanes(self, stats: np.ndarray) -> np.ndarray:
        """``[counts, sums, squares]`` (3F float64, ``SufficientStats.to_vector``) -> the 5F integer lanes."""
        count, total, squares = np.split(np.asarray(stats, dtype=np.float64), 3)
        if not np.all(np.isfinite(stats)) or np.any(count != np.rint(count)) or np.any(count < 0):
            raise ParameterPlanningError("statistics must be finite with whole, non-negative counts")
        return np.concatenate([count, *self._split(total), *self._split(squares)])

    def from_lanes(self, lanes: np.ndarray) -> np.ndarray:
        """The decoded sum of 5F lanes (signed integers as float64) -> ``[counts, sums, squares]`` (3F float64)."""
        count, sum_hi, sum_lo, sq_hi, sq_lo = np.split(np.asarray(lanes, dtype=np.float64), self.LANES_PER_FEATURE)
        return np.concatenate([count, self._join(sum_hi, sum_lo), self._join(sq_hi, sq_lo)])

    def _split(self, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        scaled = np.ldexp(values, self.scale_bits - self.limb_bits)  # exact: a power of two
        high = np.floor(scaled)
        low = np.rint(np.ldexp(scaled - high, self.limb_bits))  # scaled - high is exact (both share an exponent)
        carry = low == 2.0**self.limb_bits
        return high + carry, np.where(carry, 0.0, low)

    def _join(self, high: np.ndarray, low: np.ndarray) -> np.ndarray:
        # two exact float64 values, one correctly rounded addition (module comment)
        joined: np.ndarray = np.ldexp(high, self.limb_bits - self.scale_bits) + np.ldexp(low, -self.scale_bits)
        return joined

    @property
    def error_bound(self) -> float:
        """Worst-case error of a decrypted mean or mean square: 2^-(s+1)."""
        return float(2.0 ** -(self.scale_bits + 1))

    def to_dict(self) -> dict[str, Any]:
        return {"version": self.version, "scale_bits": self.scale_bits, "limb_bits": self.limb_bits}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StatsLanes:
        if data.get("version") != 2:
            raise ParameterPlanningError(f"statistics lanes of version {data.get('version')!r}; this reads version 2")
        return cls(scale_bits=int(data["scale_bits"]), limb_bits=int(data["limb_bits"]))


def plan_stats_lanes(params: BfvParameters, *, max_abs_feature: float) -> StatsLanes:
    """The limb width and the finest step the bounds above allow; refuses a plan below ``stats_min_scale_bits``."""
    if not math.isfinite(max_abs_feature) or max_abs_feature <= 0:
        raise ParameterPlanningError(f"max_abs_feature must be a positive number, got {max_abs_feature}")
    lane_room = params.plain_modulus // 2 - (params.max_hospitals + 1) // 2 - 1  # R, rounded down
    limb_bits = math.floor(math.log2(lane_room / params.max_hospitals))
    room = lane_room - params.max_hospitals  # R - K
    bound = params.max_total_samples * max(max_abs_feature, 1.0) ** 2
    # largest s with (B 2^s + K/2) / 2^L + K < R, i.e. B 2^s < (R - K) 2^L - K/2: solved exactly in integers
    ceiling = room * 2**limb_bits - params.max_hospitals // 2 - 1
    scale = math.floor(math.log2(ceiling / bound)) if ceiling > bound else -1
    while scale >= 0 and math.ceil(bound) * 2**scale > ceiling:
        scale -= 1
    needed = stats_min_scale_bits(max_abs_feature)
    if params.max_total_samples >= lane_room or limb_bits < 1 or scale < needed:
        raise ParameterPlanningError(
            f"statistics up to {bound:.3g} (max_total_samples={params.max_total_samples} x max_abs_feature="
            f"{max_abs_feature:g} squared) keep a step of 2^-{max(scale, 0)} over {params.max_hospitals} hospitals at "
            f"t = 2^{params.plain_modulus_bits}; standardising to float32 needs 2^-{needed}: lower max_abs_feature "
            "or max_total_samples"
        )
    return StatsLanes(scale_bits=scale, limb_bits=limb_bits)

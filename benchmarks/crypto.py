"""Crypto cost of MedHeaven's schemes (bfv-masked, the default; ckks, the older one) against TenSEAL's and NVIDIA
FLARE's common CKKS defaults. The bfv-masked rows and the real fold path are measured by ``benchmarks.crypto_bfv``.

One run encrypts the same pre-scaled update vectors under each scheme and measures, per model parameter: bytes on
the wire, encryption time, fold time (deserialise a hospital's ciphertext and add it into the running sum: all the
aggregator does), decryption time, the size of the public context an aggregator needs, and the error of a
three-hospital FedAvg against the plaintext reference. It also re-measures the fresh-encryption noise that
``medheaven.crypto.planning.NOISE_BITS`` is derived from.

    python -m benchmarks.crypto [--json] [--parameters N] [--repeat R] [--all-cores]

The process pins itself to one CPU unless ``--all-cores`` is given, so "per core" throughput means one core
(TenSEAL otherwise spreads encryption over a thread pool). Times are the best of R repeats.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import tenseal as ts
from numpy.typing import NDArray
from rich.console import Console
from rich.table import Table

from benchmarks.crypto_bfv import measure_bfv_masked, measure_ckks_fold_path
from benchmarks.timing import best_time
from medheaven.crypto.context import PUBLIC_KEY, SYMMETRIC, create_key_material
from medheaven.crypto.packing import encrypt_chunks, pack_update, unpack_average
from medheaven.crypto.planning import NOISE_BITS, plan_ckks_parameters
from medheaven.federated.fedavg import fedavg
from medheaven.federated.fold import EncryptedAccumulator

Vector = NDArray[np.float64]

#: realistic hospital sizes; every update is pre-scaled by its hospital's n_k, as the protocol does
SAMPLE_COUNTS = (5000, 3000, 7000)
TARGETS = {
    "bfv_upload_bytes_per_param_max": 8.1,
    "bfv_global_bytes_per_param_max": 16.1,
    "bfv_encrypt_mask_us_per_param_k5_max": 0.25,
    "bfv_fold_path_mparams_per_s_per_core_min": 25.0,
    "wire_bytes_per_param_max": 32.0,
    "public_context_bytes_max": 1_000_000,
    "max_abs_error_max": 1e-6,
    "fold_mparams_per_s_per_core_min": 5.0,
}


@dataclass(frozen=True)
class Scheme:
    """A CKKS configuration: a secret context (hospitals) and the public context the aggregator folds with."""

    name: str
    poly_modulus_degree: int
    coeff_mod_bit_sizes: tuple[int, ...]
    scale_bits: int
    secret: Any  # ts.Context with its secret key
    public: Any  # ts.Context without it
    symmetric: bool = False  # secret-key encryption; the public context then holds no key at all

    @property
    def slots(self) -> int:
        return self.poly_modulus_degree // 2


@dataclass
class SchemeResult:
    name: str
    poly_modulus_degree: int
    coeff_mod_bit_sizes: list[int]
    scale_bits: int
    chunks: int
    wire_bytes_per_param: float
    encrypt_us_per_param: float
    fold_us_per_param: float
    fold_mparams_per_s: float
    decrypt_us_per_param: float
    public_context_bytes: int
    public_context_bytes_tenseal_default: int
    public_context_bytes_with_galois: int
    max_abs_error: float
    fresh_noise_log2_max: float
    fresh_noise_log2_std: float
    project_fold_us_per_param: float | None = None


def planned_scheme(encryption: str = SYMMETRIC) -> Scheme:
    params = plan_ckks_parameters()
    secret = create_key_material(params, encryption=encryption)
    return Scheme(
        name="medheaven (planned)" if encryption == SYMMETRIC else "medheaven (planned), public-key",
        poly_modulus_degree=params.poly_modulus_degree,
        coeff_mod_bit_sizes=params.coeff_mod_bit_sizes,
        scale_bits=params.scale_bits,
        secret=secret.tenseal,
        public=secret.public().tenseal,
        symmetric=encryption == SYMMETRIC,
    )


def reference_scheme(name: str, chain: tuple[int, ...], *, degree: int = 8192, scale_bits: int = 40) -> Scheme:
    """A context built the way TenSEAL's tutorials and NVIDIA FLARE build theirs (public-key encryption here)."""
    secret = ts.context(ts.SCHEME_TYPE.CKKS, poly_modulus_degree=degree, coeff_mod_bit_sizes=list(chain))
    secret.global_scale = 2.0**scale_bits
    public = secret.copy()
    public.make_context_public()
    return Scheme(name, degree, chain, scale_bits, secret, public)


def encrypt(scheme: Scheme, values: Vector) -> list[bytes]:
    scale = 2.0**scheme.scale_bits
    return [
        ts.ckks_vector(scheme.secret, values[start : start + scheme.slots], scale=scale).serialize()
        for start in range(0, values.size, scheme.slots)
    ]


def fold(scheme: Scheme, accumulator: list[Any], chunks: Sequence[bytes]) -> None:
    """The aggregator's work for one update: deserialise each ciphertext under the public context and add it."""
    for index, chunk in enumerate(chunks):
        vector = ts.ckks_vector_from(scheme.public, chunk)
        if index < len(accumulator):
            accumulator[index].add_(vector)
        else:
            accumulator.append(vector)


def decrypt(scheme: Scheme, chunks: Sequence[bytes], length: int) -> Vector:
    parts = [np.asarray(ts.ckks_vector_from(scheme.secret, chunk).decrypt(), dtype=np.float64) for chunk in chunks]
    return np.concatenate(parts)[:length]


def public_context_sizes(scheme: Scheme) -> tuple[int, int, int]:
    """Lean (public key only), TenSEAL's default serialisation, and with Galois keys as tutorials generate them."""
    if scheme.symmetric:
        # no public key exists; TenSEAL refuses make_context_public, so keys are left out when serialising
        keyless = dict(save_public_key=False, save_secret_key=False, save_relin_keys=False)
        lean = len(scheme.public.serialize(save_galois_keys=False, **keyless))
        galois = scheme.secret.copy()
        galois.generate_galois_keys()
        return lean, lean, len(galois.serialize(save_galois_keys=True, **keyless))
    lean = len(
        scheme.public.serialize(
            save_public_key=True, save_secret_key=False, save_galois_keys=False, save_relin_keys=False
        )
    )
    default = len(scheme.public.serialize())
    with_galois = scheme.secret.copy()
    with_galois.generate_galois_keys()
    with_galois.make_context_public()
    return lean, default, len(with_galois.serialize())


def fresh_noise(scheme: Scheme, slots: int) -> tuple[float, float]:
    """Largest and typical fresh-encryption error of encrypted zeros, in log2 of scaled units."""
    zeros = np.zeros(slots)
    errors = np.abs(decrypt(scheme, encrypt(scheme, zeros), slots)) * 2.0**scheme.scale_bits
    return math.log2(float(errors.max())), math.log2(float(np.std(errors)))


def measure(scheme: Scheme, updates: list[tuple[Vector, int]], packed: list[Vector], repeat: int) -> SchemeResult:
    parameters = packed[0].size - 1
    ciphertexts = [encrypt(scheme, values) for values in packed]
    length = packed[0].size

    encrypt_seconds = best_time(lambda: encrypt(scheme, packed[0]), repeat)

    fold_times = []
    for _ in range(repeat):
        accumulator: list[Any] = []
        fold(scheme, accumulator, ciphertexts[0])
        start = time.perf_counter()
        fold(scheme, accumulator, ciphertexts[1])
        fold_times.append(time.perf_counter() - start)
    fold_seconds = min(fold_times)

    total: list[Any] = []
    for chunks in ciphertexts:
        fold(scheme, total, chunks)
    summed = [vector.serialize() for vector in total]
    decrypt_seconds = best_time(lambda: decrypt(scheme, summed, length), repeat)
    average, _ = unpack_average(decrypt(scheme, summed, length))
    error = float(np.max(np.abs(average - fedavg(updates))))

    lean, default, with_galois = public_context_sizes(scheme)
    noise_max, noise_std = fresh_noise(scheme, max(parameters, 64 * scheme.slots))
    return SchemeResult(
        name=scheme.name,
        poly_modulus_degree=scheme.poly_modulus_degree,
        coeff_mod_bit_sizes=list(scheme.coeff_mod_bit_sizes),
        scale_bits=scheme.scale_bits,
        chunks=len(ciphertexts[0]),
        wire_bytes_per_param=sum(len(chunk) for chunk in ciphertexts[0]) / parameters,
        encrypt_us_per_param=encrypt_seconds / parameters * 1e6,
        fold_us_per_param=fold_seconds / parameters * 1e6,
        fold_mparams_per_s=parameters / fold_seconds / 1e6,
        decrypt_us_per_param=decrypt_seconds / parameters * 1e6,
        public_context_bytes=lean,
        public_context_bytes_tenseal_default=default,
        public_context_bytes_with_galois=with_galois,
        max_abs_error=error,
        fresh_noise_log2_max=noise_max,
        fresh_noise_log2_std=noise_std,
    )


def project_fold_us_per_param(packed: list[Vector], repeat: int) -> float:
    """The project's own fold (EncryptedAccumulator.add_chunks: validates every chunk, then adds)."""
    secret = create_key_material(plan_ckks_parameters())
    public = secret.public()
    chunks = [encrypt_chunks(secret, values) for values in packed[:2]]
    times = []
    for _ in range(repeat):
        accumulator = EncryptedAccumulator(public, length=packed[0].size)
        accumulator.add_chunks(chunks[0], source="hospital 0")
        start = time.perf_counter()
        accumulator.add_chunks(chunks[1], source="hospital 1")
        times.append(time.perf_counter() - start)
    return min(times) / (packed[0].size - 1) * 1e6


def make_updates(parameters: int, seed: int) -> tuple[list[tuple[Vector, int]], list[Vector]]:
    params = plan_ckks_parameters()
    rng = np.random.default_rng(seed)
    updates = [
        (np.clip(rng.normal(0.0, 0.3, size=parameters), -params.max_abs_weight, params.max_abs_weight), n)
        for n in SAMPLE_COUNTS
    ]
    return updates, [pack_update(weights, n, params=params) for weights, n in updates]


def pin_to_one_core() -> int:
    if hasattr(os, "sched_setaffinity") and hasattr(os, "sched_getaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def render(report: dict[str, Any], console: Console) -> None:
    table = Table(
        title=f"CKKS cost per model parameter ({report['parameters']:,} parameters, {report['cores']} core, "
        f"best of {report['repeat']})"
    )
    for column in (
        "scheme",
        "N",
        "chain",
        "scale",
        "wire B/param",
        "enc us/param",
        "fold us/param",
        "fold Mparam/s",
        "dec us/param",
        "public ctx",
        "ctx TenSEAL default",
        "ctx + Galois",
        "max |err| FedAvg",
        "noise log2 max/std",
    ):
        table.add_column(column, justify="left" if column in {"scheme", "chain"} else "right")
    for row in report["schemes"]:
        table.add_row(
            row["name"],
            str(row["poly_modulus_degree"]),
            str(row["coeff_mod_bit_sizes"]),
            f"2^{row['scale_bits']}",
            f"{row['wire_bytes_per_param']:.2f}",
            f"{row['encrypt_us_per_param']:.3f}",
            f"{row['fold_us_per_param']:.3f}",
            f"{row['fold_mparams_per_s']:.2f}",
            f"{row['decrypt_us_per_param']:.3f}",
            f"{row['public_context_bytes']:,}",
            f"{row['public_context_bytes_tenseal_default']:,}",
            f"{row['public_context_bytes_with_galois']:,}",
            f"{row['max_abs_error']:.2e}",
            f"{row['fresh_noise_log2_max']:.2f} / {row['fresh_noise_log2_std']:.2f}",
        )
    console.print(table)
    bfv = report["bfv_masked"]
    console.print(
        f"{bfv['name']}: upload {bfv['upload_bytes_per_param']:.3f} B/param, global {bfv['global_bytes_per_param']:.3f}"
        f" B/param; encode {bfv['encode_us_per_param']:.3f} us/param; encrypt+mask by K "
        + ", ".join(f"K={k}: {v:.3f}" for k, v in bfv["encrypt_mask_us_per_param_by_hospitals"].items())
        + f" us/param; fold path {bfv['fold_path_mparams_per_s']:.2f} Mparam/s (SEAL's own load+add "
        f"{bfv['seal_load_add_mparams_per_s']:.2f}); decrypt "
        f"{bfv['decrypt_us_per_param']:.3f} us/param; max |err| {bfv['max_abs_error']:.2e} (bound "
        f"{bfv['error_bound']:.2e}), exact sum {bfv['sum_exact']}, noise budget {bfv['noise_budget_bits_after_hospitals']}"
        f" bits after {bfv['hospitals']}"
    )
    ckks_path = report["ckks_fold_path"]
    console.print(
        f"ckks fold path: format 2 {ckks_path['format_2_mparams_per_s']:.2f}, format 1 "
        f"{ckks_path['format_1_mparams_per_s']:.2f} Mparam/s; load average {report['load_average']}"
    )
    planned = report["schemes"][0]
    console.print(
        f"project fold (EncryptedAccumulator.add_chunks, validates then adds): "
        f"{report['project_fold_us_per_param']:.3f} us/param = "
        f"{1 / report['project_fold_us_per_param']:.2f} Mparam/s per core"
    )
    console.print(
        f"fresh-encryption noise of the planned parameters: max 2^{planned['fresh_noise_log2_max']:.2f} scaled units "
        f"over {report['noise_slots']:,} slots (NOISE_BITS = {NOISE_BITS}); "
        f"error bound {report['planned_error_bound']:.2e}"
    )
    verdicts = report["targets_met"]
    console.print(
        "planned vs targets: "
        + ", ".join(f"{name} {value:.4g} {'ok' if ok else 'MISSED'}" for name, (value, ok) in verdicts.items())
    )
    console.print(
        "(a ciphertext of the planned chain is 32 B per slot; SEAL's per-chunk header and the unused slots of the "
        "last chunk add the rest)"
    )


def run(parameters: int, repeat: int, *, pin: bool, seed: int = 0) -> dict[str, Any]:
    cores = pin_to_one_core() if pin else (os.cpu_count() or 1)
    updates, packed = make_updates(parameters, seed)
    schemes = [
        planned_scheme(),
        planned_scheme(PUBLIC_KEY),
        reference_scheme("TenSEAL default", (60, 40, 40, 60)),
        reference_scheme("NVIDIA FLARE default", (60, 40, 40)),
    ]
    results = [measure(scheme, updates, packed, repeat) for scheme in schemes]
    planned = results[0]
    project_fold = project_fold_us_per_param(packed, repeat)
    bfv = measure_bfv_masked(updates, repeat)
    ckks_fold_path = measure_ckks_fold_path(updates, repeat)
    params = plan_ckks_parameters()
    return {
        "benchmark": "crypto",
        "tenseal": ts.__version__,
        "parameters": parameters,
        "sample_counts": list(SAMPLE_COUNTS),
        "repeat": repeat,
        "cores": cores,
        "noise_bits": NOISE_BITS,
        "noise_slots": max(parameters, 64 * params.slots),
        "planned_error_bound": params.error_bound,
        "project_fold_us_per_param": project_fold,
        "schemes": [asdict(result) for result in results],
        "bfv_masked": bfv,
        "ckks_fold_path": ckks_fold_path,
        "load_average": list(os.getloadavg()),
        "targets": TARGETS,
        "targets_met": {
            "bfv_upload_bytes_per_param": [
                bfv["upload_bytes_per_param"],
                bfv["upload_bytes_per_param"] <= TARGETS["bfv_upload_bytes_per_param_max"],
            ],
            "bfv_global_bytes_per_param": [
                bfv["global_bytes_per_param"],
                bfv["global_bytes_per_param"] <= TARGETS["bfv_global_bytes_per_param_max"],
            ],
            "bfv_encrypt_mask_us_per_param_k5": [
                bfv["encrypt_mask_us_per_param_by_hospitals"]["5"],
                bfv["encrypt_mask_us_per_param_by_hospitals"]["5"] <= TARGETS["bfv_encrypt_mask_us_per_param_k5_max"],
            ],
            "bfv_fold_path_mparams_per_s": [
                bfv["fold_path_mparams_per_s"],
                bfv["fold_path_mparams_per_s"] >= TARGETS["bfv_fold_path_mparams_per_s_per_core_min"],
            ],
            "bfv_max_abs_error": [bfv["max_abs_error"], bfv["max_abs_error"] <= bfv["error_bound"]],
            "wire_bytes_per_param": [
                planned.wire_bytes_per_param,
                planned.wire_bytes_per_param <= TARGETS["wire_bytes_per_param_max"],
            ],
            "public_context_bytes": [
                planned.public_context_bytes,
                planned.public_context_bytes < TARGETS["public_context_bytes_max"],
            ],
            "max_abs_error": [planned.max_abs_error, planned.max_abs_error <= TARGETS["max_abs_error_max"]],
            "fold_mparams_per_s": [
                planned.fold_mparams_per_s,
                planned.fold_mparams_per_s >= TARGETS["fold_mparams_per_s_per_core_min"],
            ],
            "project_fold_mparams_per_s": [
                1 / project_fold,
                1 / project_fold >= TARGETS["fold_mparams_per_s_per_core_min"],
            ],
            "fresh_noise_log2_max": [planned.fresh_noise_log2_max, planned.fresh_noise_log2_max < NOISE_BITS],
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    parser.add_argument("--parameters", type=int, default=200_000, help="model parameters per update")
    parser.add_argument("--repeat", type=int, default=3, help="repeats per timing; the best is reported")
    parser.add_argument("--all-cores", action="store_true", help="do not pin the process to one CPU")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.parameters < 1 or args.repeat < 1:
        parser.error("--parameters and --repeat must be at least 1")
    report = run(args.parameters, args.repeat, pin=not args.all_cores, seed=args.seed)
    render(report, Console(stderr=True, width=220))
    if args.json:
        print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())

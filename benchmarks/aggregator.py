"""The aggregator's memory and fold throughput on a model of about a million parameters.

Memory: for each K in ``--hospitals`` a *fresh* Python process plays the aggregator worker: it loads the public
context, ``model.json`` and the registry (idle RSS), then folds K receipts with ``AggregatorNode.fold`` and commits
with ``AggregatorNode.finalise``, exactly as the ``aggregate`` queue's tasks do, while a thread samples its RSS. The
envelopes are encrypted once with the secret context and re-signed by each hospital's own key; every process reads
them from a local-folder store, so the fold path (digest, msgpack decode, header and signature checks, ciphertext
deserialisation and addition, ledger write) is the production one.

Throughput: one process pinned to one core folds serialised envelopes repeatedly; the per-phase split shows where a
fold's time goes (store read, digest, msgpack decode, signature over the chunk digests, deserialise + add).

``--scheme bfv-masked`` (the default, as for new key sets): every hospital encodes the same update with its own
pairwise mask for a cohort of all the bench's hospitals, as ``HospitalNode`` does; a memory row for K hospitals folds
the first K of them (the aggregator cannot tell whether the masks of a subset cancel, so its work is the same).
``--scheme ckks``: the older scheme, one ciphertext re-signed by every hospital.

    python -m benchmarks.aggregator [--scheme bfv-masked|ckks] [--hidden 4096] [--hospitals 2,8,32] [--repeat 5]

Prints one JSON object on stdout and a table on stderr.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack
import numpy as np

from medheaven.crypto.bfv_planning import plan_bfv_parameters
from medheaven.crypto.codec import (
    Scheme,
    aggregator_codec,
    hospital_codec,
    load_secret_keys,
    public_keys_from_bytes,
)
from medheaven.crypto.envelope import Envelope, check_envelope, read_envelope
from medheaven.crypto.masks import MaskScope, load_agreement_key, pairwise_mask
from medheaven.crypto.packing import pack_update
from medheaven.crypto.planning import plan_ckks_parameters
from medheaven.crypto.signing import HospitalRegistry, load_signing_key
from medheaven.federated.aggregator import AggregatorNode
from medheaven.federated.paths import CONTEXT_KEY, REGISTRY_KEY, RunPaths
from medheaven.federated.phase import Phase
from medheaven.federated.protocol import envelope_limits, expectation, sha256_hex
from medheaven.federated.setup import set_up_federation
from medheaven.federated.wire import Receipt, RoundSpec, RunDescription
from medheaven.memory import map_large_buffers_separately
from medheaven.model import ModelSpec
from medheaven.store.local import LocalStore

RUN = "bench-aggregator"
ROUND = 1
ATTEMPT = 1
TARGETS = {
    "peak_minus_idle_over_model_max": 3.0,  # ckks (issue 7): the upload and the global model are the same size
    "peak_minus_idle_over_global_model_max": 1.8,  # bfv-masked (issue 13): the running sum plus one half-size upload
    "fold_mparams_per_s_per_core_min": 5.0,
}
#: the metrics and timings a real hospital's receipt carries, so that its measured size is representative
RECEIPT_METRICS = {"loss": 0.31, "roc_auc": 0.66, "pr_auc": 0.19, "examples": 16000.0, "positives": 1800.0}
RECEIPT_TIMINGS = {"fetch_decrypt": 0.5, "evaluate": 0.2, "train": 3.0, "encrypt_upload": 1.2}


@dataclass(frozen=True)
class Bench:
    """A store holding one run's context, registry, model.json and K signed update envelopes."""

    root: Path
    receipts: list[dict[str, Any]]
    parameters: int
    envelope_bytes: int

    @property
    def store_dir(self) -> Path:
        return self.root / "store"


def _layout(synthetic_rows: int) -> dict[str, Any]:
    """The feature layout of the synthetic diabetes data, as the federation benchmark's simulation fits it."""
    from medheaven.data import fit_layout, generate_synthetic, get_schema, load_frame

    schema = get_schema("diabetes130")
    frame = load_frame(generate_synthetic(synthetic_rows, seed=0), schema, source="synthetic")
    layout: dict[str, Any] = fit_layout(frame, schema).to_dict()
    return layout


def hospital_ids(count: int) -> list[str]:
    return [f"h{index:03d}" for index in range(count)]


def build_bench(
    root: Path, *, hidden: tuple[int, ...], hospitals: int, synthetic_rows: int, scheme: Scheme = Scheme.BFV_MASKED
) -> Bench:
    """Encode one update per hospital (masked for the whole cohort under bfv-masked; one shared ciphertext under
    ckks), sign it with the hospital's own key and put it where the round expects it."""
    from medheaven.data import FeatureLayout

    shutil.rmtree(root, ignore_errors=True)
    store = LocalStore(root / "store")
    ids = hospital_ids(hospitals)
    params = plan_bfv_parameters() if scheme is Scheme.BFV_MASKED else plan_ckks_parameters()
    keys, identities = set_up_federation(root / "keys", store, ids, params)
    layout = FeatureLayout.from_dict(_layout(synthetic_rows))
    spec = ModelSpec(n_features=layout.n_features, hidden=hidden)
    description = RunDescription(run=RUN, model=spec, params=params, fingerprint=keys.fingerprint, layout=layout)
    store.put_json(RunPaths(RUN).model, description.to_dict())
    codec = hospital_codec(description.scheme, load_secret_keys(keys.secret))
    weights = np.random.default_rng(0).uniform(-0.5, 0.5, size=spec.parameter_count())
    packed = pack_update(weights, 2000, params=params)
    registry = HospitalRegistry.from_dict(store.get_json(REGISTRY_KEY))
    scope = MaskScope(RUN, Phase.UPDATE.value, ROUND, ATTEMPT, tuple(sorted(ids)))
    shared = None if codec.mask_modulus is not None else codec.encode(packed, scale_bits=params.scale_bits, mask=None)
    base = sha256_hex(b"benchmark base model")
    receipts: list[dict[str, Any]] = []
    size = 0
    for hospital in ids:
        if shared is None:
            peers = registry.require_agreement_keys(h for h in ids if h != hospital)
            own = load_agreement_key(identities[hospital].agreement_key)
            mask = pairwise_mask(hospital, own, peers, scope, packed.size, int(codec.mask_modulus or 0))
            chunks = codec.encode(packed, scale_bits=params.scale_bits, mask=mask)
        else:
            chunks = shared
        envelope = Envelope(
            kind=Phase.UPDATE,
            run=RUN,
            round=ROUND,
            hospital=hospital,
            fingerprint=keys.fingerprint,
            scheme=description.scheme.value,
            base=base,
            length=description.vector_length,
            scale_bits=params.scale_bits,
            chunks=chunks,
        ).signed_by(load_signing_key(identities[hospital].signing_key, hospital_id=hospital))
        data = envelope.to_bytes()
        key = RunPaths(RUN).update(Phase.UPDATE, ROUND, ATTEMPT, hospital)
        store.put(key, data)
        size = len(data)
        receipt = Receipt(
            run=RUN,
            round=ROUND,
            attempt=ATTEMPT,
            kind=Phase.UPDATE,
            hospital=hospital,
            key=key,
            sha256=sha256_hex(data),
            size=size,
            metrics=RECEIPT_METRICS,
            timings=RECEIPT_TIMINGS,
            completed_at=time.time(),
        ).signed_by(load_signing_key(identities[hospital].signing_key, hospital_id=hospital))
        receipts.append(receipt.to_dict())
    (root / "receipts.json").write_text(json.dumps({"base": base, "receipts": receipts}))
    return Bench(root, receipts, spec.parameter_count(), size)


def open_round(store: LocalStore, hospitals: list[str], base: str) -> None:
    """Write the round spec as the coordinator's ``_open`` does, after clearing any earlier fold of this round."""
    paths = RunPaths(RUN)
    for key in (
        paths.ledger(Phase.UPDATE, ROUND, ATTEMPT),
        paths.manifest(Phase.UPDATE, ROUND),
        paths.result(Phase.UPDATE, ROUND),
        paths.failure(Phase.UPDATE, ROUND, ATTEMPT),
    ):
        store.delete(key)
    now = time.time()
    masked = RunDescription.from_dict(store.get_json(paths.model)).scheme is Scheme.BFV_MASKED
    spec = RoundSpec(
        run=RUN,
        round=ROUND,
        attempt=ATTEMPT,
        kind=Phase.UPDATE,
        hospitals=tuple(hospitals),
        quorum=len(hospitals),
        deadline=now + 10 * 365 * 86400.0,
        base_sha256=base,
        opened_at=now,
        cohort=tuple(hospitals) if masked else (),
    )
    store.put_json(paths.spec(Phase.UPDATE, ROUND), spec.to_dict())


# -- the aggregator process (memory) ---------------------------------------------------------------------------
def _rss() -> int:
    import psutil

    return int(psutil.Process().memory_info().rss)


class RssSampler:
    """Samples this process's RSS in a thread; ru_maxrss alone would include the state before folding began."""

    def __init__(self, interval: float = 0.002) -> None:
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        import psutil

        process = psutil.Process()
        while not self._stop.is_set():
            self.peak = max(self.peak, int(process.memory_info().rss))
            self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss())


def aggregator_process(store_dir: Path, count: int, *, tune_allocator: bool = True) -> dict[str, Any]:
    """What runs inside the fresh subprocess: load, measure idle, fold ``count`` receipts, finalise."""
    receipts = json.loads((store_dir.parent / "receipts.json").read_text())["receipts"][:count]
    if tune_allocator:
        map_large_buffers_separately()  # as aggregator_node_from_settings does in the worker
    node = AggregatorNode(LocalStore(store_dir, create=False))
    node.public_context()
    node.run(RUN)
    node.registry()
    gc.collect()
    idle = _rss()
    maxrss_idle = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    fold_seconds: list[float] = []
    rss_after_fold: list[int] = []
    with RssSampler() as sampler:
        for receipt in receipts:
            started = time.perf_counter()
            outcome = node.fold(receipt)
            fold_seconds.append(time.perf_counter() - started)
            if outcome["status"] != "folded":
                raise RuntimeError(f"fold of {receipt['hospital']} was {outcome}")
            rss_after_fold.append(_rss())
        fold_peak = sampler.peak
        started = time.perf_counter()
        committed = node.finalise(RUN, Phase.UPDATE, ROUND, ATTEMPT)
        finalise_seconds = time.perf_counter() - started
    if committed["status"] != "committed":
        raise RuntimeError(f"finalise returned {committed}")
    maxrss_end = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    # ru_maxrss counts start-up too: it is a valid peak of the fold only if the fold pushed it above idle
    peak = max(sampler.peak, maxrss_end) if maxrss_end > maxrss_idle else sampler.peak
    return {
        "hospitals": count,
        "idle_rss": idle,
        "peak_rss": peak,
        "peak_rss_during_folds": fold_peak,
        "peak_rss_sampled": sampler.peak,
        "ru_maxrss_idle": maxrss_idle,
        "ru_maxrss_end": maxrss_end,
        "rss_after_each_fold": rss_after_fold,
        "fold_seconds_median": statistics.median(fold_seconds),
        "finalise_seconds": finalise_seconds,
    }


def measure_memory(bench: Bench, counts: list[int], *, tune_allocator: bool = True) -> list[dict[str, Any]]:
    store = LocalStore(bench.store_dir)
    base = json.loads((bench.root / "receipts.json").read_text())["base"]
    rows = []
    for count in counts:
        open_round(store, hospital_ids(count), base)
        command = [sys.executable, "-m", "benchmarks.aggregator", "--child", str(bench.store_dir), str(count)]
        if not tune_allocator:
            command.append("--untuned-allocator")
        output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        row = json.loads(output)
        row["peak_minus_idle"] = row["peak_rss"] - row["idle_rss"]
        row["peak_minus_idle_over_model"] = row["peak_minus_idle"] / bench.envelope_bytes
        # the committed sum: full-size ciphertexts under bfv-masked (twice a seeded upload), the same size under ckks
        row["global_model_bytes"] = len(store.get(RunPaths(RUN).result(Phase.UPDATE, ROUND)))
        row["peak_minus_idle_over_global_model"] = row["peak_minus_idle"] / row["global_model_bytes"]
        # the two peaks the target is read against: while folding, and over the whole round including finalise
        row["peak_minus_idle_during_folds_over_global_model"] = (row["peak_rss_during_folds"] - row["idle_rss"]) / row[
            "global_model_bytes"
        ]
        row["peak_minus_idle_including_finalise_over_global_model"] = row["peak_minus_idle_over_global_model"]
        rows.append(row)
    return rows


# -- fold throughput ---------------------------------------------------------------------------------------------
def measure_throughput(bench: Bench, *, repeat: int) -> dict[str, Any]:
    """Steady-state folds (the accumulator already holds a sum) from serialised envelopes, on one core, through the
    production path: ``read_envelope`` (one digest pass: the receipt's file digest and, for format 2, the signed
    body digest), the receipt digest comparison, ``check_envelope`` (header and signature) and the codec's add."""
    store = LocalStore(bench.store_dir)
    description = RunDescription.from_dict(store.get_json(RunPaths(RUN).model))
    public = public_keys_from_bytes(store.get(CONTEXT_KEY))
    registry = HospitalRegistry.from_dict(store.get_json(REGISTRY_KEY))
    base = json.loads((bench.root / "receipts.json").read_text())["base"]
    limits = envelope_limits(description)
    expect = expectation(
        description, phase=Phase.UPDATE, round_number=ROUND, base=base, length=description.vector_length
    )
    accumulator = aggregator_codec(description.scheme, public).accumulator(description.vector_length)
    receipts = bench.receipts
    phases: dict[str, list[float]] = {k: [] for k in ("read", "digest_decode", "check", "add", "total")}
    for index in range(repeat + 1):
        receipt = receipts[index % len(receipts)]
        marks = [time.perf_counter()]
        data = store.get(receipt["key"])
        marks.append(time.perf_counter())
        envelope, digest = read_envelope(data, limits=limits)
        del data
        if digest != receipt["sha256"]:
            raise RuntimeError("digest mismatch")
        marks.append(time.perf_counter())
        check_envelope(envelope, expect=expect, registry=registry)
        marks.append(time.perf_counter())
        accumulator.add_chunks(envelope.chunks, source=envelope.hospital)
        marks.append(time.perf_counter())
        del envelope
        if index == 0:
            continue  # the first fold only fills the empty accumulator
        for name, start, end in zip(phases, marks, marks[1:], strict=False):
            phases[name].append(end - start)
        phases["total"].append(marks[-1] - marks[0])
    seconds = {name: statistics.median(values) for name, values in phases.items()}
    without_read = seconds["total"] - seconds["read"]
    return {
        "parameters": bench.parameters,
        "repeat": repeat,
        "seconds_median": seconds,
        "fold_mparams_per_s_per_core": bench.parameters / without_read / 1e6,
        "fold_mparams_per_s_per_core_with_store_read": bench.parameters / seconds["total"] / 1e6,
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--scheme", choices=[Scheme.BFV_MASKED.value, Scheme.CKKS.value], default=Scheme.BFV_MASKED.value,
        help="encryption scheme of the bench's key set (default: bfv-masked, as for new key sets)",
    )  # fmt: skip
    parser.add_argument("--hidden", default="4096", help="hidden layer widths (4096: ~1M parameters)")
    parser.add_argument("--hospitals", default="2,8,32", help="K values for the memory measurement")
    parser.add_argument("--repeat", type=int, default=5, help="steady-state folds timed for throughput")
    parser.add_argument("--synthetic-rows", type=int, default=16000)
    parser.add_argument("--out", type=Path, default=Path("benchmark-runs/aggregator"))
    parser.add_argument("--keep", action="store_true", help="keep the store of envelopes afterwards")
    parser.add_argument("--child", nargs=2, metavar=("STORE", "K"), help=argparse.SUPPRESS)
    parser.add_argument(
        "--untuned-allocator",
        action="store_true",
        help="leave glibc's dynamic mmap threshold on in the aggregator process (the comparison for medheaven/memory.py)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = _arguments(argv)
    if args.child:
        child = aggregator_process(Path(args.child[0]), int(args.child[1]), tune_allocator=not args.untuned_allocator)
        print(json.dumps(child))
        return
    counts = [int(k) for k in args.hospitals.split(",") if k]
    hidden = tuple(int(w) for w in args.hidden.split(",") if w)
    load_start = os.getloadavg()
    bench = build_bench(
        args.out, hidden=hidden, hospitals=max(counts), synthetic_rows=args.synthetic_rows, scheme=Scheme(args.scheme)
    )
    memory = measure_memory(bench, counts, tune_allocator=not args.untuned_allocator)
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    throughput = measure_throughput(bench, repeat=args.repeat)
    receipt_bytes = len(msgpack.packb(bench.receipts[0], use_bin_type=True))
    result = {
        "scheme": args.scheme,
        "parameters": bench.parameters,
        "envelope_bytes": bench.envelope_bytes,
        "bytes_per_parameter": bench.envelope_bytes / bench.parameters,
        "receipt_msgpack_bytes": receipt_bytes,
        "memory": memory,
        "allocator": "glibc default" if args.untuned_allocator else "mmap threshold fixed (medheaven/memory.py)",
        "throughput": throughput,
        "targets": TARGETS,
        "machine": {"nproc": os.cpu_count(), "cpu": _cpu_model()},
        "loadavg_start": load_start,
        "loadavg_end": os.getloadavg(),
    }
    print(json.dumps(result, indent=2))
    mb = 1024 * 1024
    print(f"{bench.parameters} parameters, one envelope {bench.envelope_bytes / mb:.1f} MiB", file=sys.stderr)
    for row in memory:
        print(
            f"K={row['hospitals']:3d} idle {row['idle_rss'] / mb:7.1f} MiB  peak {row['peak_rss'] / mb:7.1f} MiB  "
            f"peak-idle {row['peak_minus_idle_over_model']:.2f} x upload, "
            f"{row['peak_minus_idle_during_folds_over_global_model']:.2f} x global model during folds, "
            f"{row['peak_minus_idle_including_finalise_over_global_model']:.2f} x including finalise",
            file=sys.stderr,
        )
    print(f"fold {throughput['fold_mparams_per_s_per_core']:.2f} M params/s/core", file=sys.stderr)
    if not args.keep:
        shutil.rmtree(args.out, ignore_errors=True)


if __name__ == "__main__":
    main()

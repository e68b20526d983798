"""Helpers for the federation tests: small simulations and checks of what the store may hold."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import msgpack
import numpy as np
import tenseal as ts

from coordinator.simulation import Simulation, prepare_simulation
from medheaven.crypto.bfv import BfvSecretKeys
from medheaven.crypto.codec import Parameters, load_secret_keys
from medheaven.federated.wire import PLAINTEXT_FINGERPRINT


def small_simulation(
    root: Path, *, hospitals: int = 3, rows: int = 3000, seed: int = 0, params: Parameters | None = None
) -> Simulation:
    """A synthetic federation keyed with ``params`` (default: the bfv-masked simulation plan)."""
    return prepare_simulation(root, hospitals=hospitals, synthetic_rows=rows, seed=seed, params=params)


def secret_key_windows(secret_path: Path, *, count: int = 4, width: int = 48) -> list[bytes]:
    """Byte windows taken from the serialised secret key alone: they must never appear in the store."""
    secret = load_secret_keys(secret_path)
    if isinstance(secret, BfvSecretKeys):
        raw = secret.secret_raw  # SEAL's saved secret key (compressed): windows of it must not appear anywhere
        assert len(raw) > count * width
        step = (len(raw) - width) // count
        return [raw[i * step : i * step + width] for i in range(count)]
    context = secret.tenseal
    only_secret: bytes = context.serialize(
        save_public_key=False, save_secret_key=True, save_galois_keys=False, save_relin_keys=False
    )
    without: bytes = context.serialize(
        save_public_key=False, save_secret_key=False, save_galois_keys=False, save_relin_keys=False
    )
    assert len(only_secret) > len(without) + count * width
    start = len(without)
    step = (len(only_secret) - start - width) // count
    return [only_secret[start + i * step : start + i * step + width] for i in range(count)]


def assert_store_is_public_only(store_dir: Path, secret_path: Path, plain_weights: np.ndarray) -> int:
    """Every file under a local store folder is public material (see ``assert_files_are_public_only``)."""
    files = [(path.name, path.read_bytes()) for path in sorted(p for p in store_dir.rglob("*") if p.is_file())]
    return assert_files_are_public_only(files, secret_path, plain_weights)


def assert_files_are_public_only(
    files: Iterable[tuple[str, bytes]], secret_path: Path, plain_weights: np.ndarray
) -> int:
    """Every stored file is JSON, the public context, or an encrypted envelope; no secret key, no plaintext weights.

    Returns the number of files checked.
    """
    windows = secret_key_windows(secret_path)
    plain_probes = [plain_weights[:8].astype("<f8").tobytes(), plain_weights[:8].astype("<f4").tobytes()]
    checked = 0
    for name, data in files:
        for window in windows:
            assert window not in data, f"{name} contains secret-key material"
        for probe in plain_probes:
            assert probe not in data, f"{name} contains plaintext weights"
        if name.endswith(".json"):
            json.loads(data)
        elif name == "context.public":
            payload = msgpack.unpackb(data, raw=False)
            assert payload["kind"] == "public-context"
            if payload.get("scheme") == "bfv-masked":
                assert "seal" not in payload  # the public half of a symmetric BFV key set carries no key at all
            else:
                assert not ts.context_from(payload["tenseal"]).has_secret_key()
        else:
            assert name.endswith(".ckks"), f"unexpected file {name}"
            envelope = msgpack.unpackb(data, raw=False)
            assert envelope["fp"] != PLAINTEXT_FINGERPRINT, f"{name} is a plaintext envelope"
        checked += 1
    return checked

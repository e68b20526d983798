"""Pairwise masks: cancel exactly over a cohort, independent across scopes, uniform, and keys kept private."""

from __future__ import annotations

import stat
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from scipy import stats

from medheaven.crypto.masks import (
    MaskScope,
    agreement_public_hex,
    create_agreement_key,
    load_agreement_key,
    pairwise_mask,
    parse_agreement_key,
)
from medheaven.errors import ConfigurationError, CryptoError, KeyCustodyError

T = 1 << 47


def cohort_masks(ids: list[str], scope: MaskScope, length: int) -> dict[str, np.ndarray]:
    keys = {h: X25519PrivateKey.generate() for h in ids}
    return {
        h: pairwise_mask(h, keys[h], {p: keys[p].public_key() for p in ids if p != h}, scope, length, T) for h in ids
    }


def scope_for(ids: list[str], **changes: object) -> MaskScope:
    scope = MaskScope(run="run-1", phase="update", round=3, attempt=0, cohort=tuple(sorted(ids)))
    return replace(scope, **changes)  # type: ignore[arg-type]


@pytest.mark.parametrize("size", [1, 2, 3, 7])
def test_pairwise_mask_cohort_sums_to_zero(size: int) -> None:
    ids = [f"h{i:02d}" for i in range(size)]
    masks = cohort_masks(ids, scope_for(ids), 5000)
    total = np.zeros(5000, dtype=np.uint64)
    for mask in masks.values():
        assert mask.dtype == np.uint64 and int(mask.max()) < T
        total += mask
    assert not np.any(total & np.uint64(T - 1))
    if size == 1:
        assert not np.any(masks[ids[0]])  # a cohort of one has no peer to mask against


def test_pairwise_mask_missing_hospital_does_not_cancel() -> None:
    ids = ["a", "b", "c"]
    masks = cohort_masks(ids, scope_for(ids), 1000)
    partial = (masks["a"] + masks["b"]) & np.uint64(T - 1)
    assert np.count_nonzero(partial) > 990


def test_pairwise_mask_scopes_are_independent() -> None:
    ids = ["a", "b"]
    keys = {h: X25519PrivateKey.generate() for h in ids}
    peers = {"b": keys["b"].public_key()}
    base = scope_for(ids)
    seen = set()
    for scope in (
        base,
        replace(base, attempt=1),
        replace(base, round=4),
        replace(base, phase="stats"),
        replace(base, run="run-2"),
        replace(base, cohort=("a", "b", "c")),
    ):
        if "c" in scope.cohort:
            extra = X25519PrivateKey.generate().public_key()
            mask = pairwise_mask("a", keys["a"], {**peers, "c": extra}, scope, 64, T)
        else:
            mask = pairwise_mask("a", keys["a"], peers, scope, 64, T)
        seen.add(mask.tobytes())
    assert len(seen) == 6


def test_pairwise_mask_is_uniform_mod_t() -> None:
    ids = ["a", "b"]
    mask = cohort_masks(ids, scope_for(ids), 200_000)["a"]
    counts = np.bincount((mask >> np.uint64(47 - 8)).astype(np.int64), minlength=256)  # top 8 bits of 47
    assert stats.chisquare(counts).pvalue > 1e-4
    low = np.bincount((mask & np.uint64(255)).astype(np.int64), minlength=256)
    assert stats.chisquare(low).pvalue > 1e-4


def test_pairwise_mask_refuses_wrong_peers_and_scopes() -> None:
    ids = ["a", "b", "c"]
    keys = {h: X25519PrivateKey.generate() for h in ids}
    scope = scope_for(ids)
    with pytest.raises(CryptoError, match="cohort needs exactly"):
        pairwise_mask("a", keys["a"], {"b": keys["b"].public_key()}, scope, 10, T)
    with pytest.raises(CryptoError, match="not in the mask cohort"):
        pairwise_mask("z", keys["a"], {}, scope, 10, T)
    with pytest.raises(CryptoError, match="power of two"):
        pairwise_mask("a", keys["a"], {p: keys[p].public_key() for p in "bc"}, scope, 10, T - 1)
    with pytest.raises(CryptoError, match="sorted"):
        MaskScope(run="r", phase="update", round=1, attempt=0, cohort=("b", "a"))
    degenerate = parse_agreement_key("00" * 32, source="test")
    with pytest.raises(CryptoError, match="degenerate"):
        pairwise_mask("a", keys["a"], {"b": degenerate}, scope_for(["a", "b"]), 10, T)


def test_agreement_key_files_private_and_round_trip(tmp_path: Path) -> None:
    private_path, public_path = create_agreement_key("st-marys", tmp_path)
    assert stat.S_IMODE(private_path.stat().st_mode) == 0o600
    key = load_agreement_key(private_path)
    assert parse_agreement_key(public_path.read_text(), source=str(public_path)).public_bytes_raw() == bytes.fromhex(
        agreement_public_hex(key)
    )
    with pytest.raises(ConfigurationError, match="exists"):
        create_agreement_key("st-marys", tmp_path)
    private_path.chmod(0o644)
    with pytest.raises(KeyCustodyError, match="chmod 600"):
        load_agreement_key(private_path)
    with pytest.raises(ConfigurationError, match="X25519"):
        parse_agreement_key("abcd", source="hospitals.json")

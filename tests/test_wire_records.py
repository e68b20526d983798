"""Typed fields of the stored wire objects: a manifest's ledger entries and a run description's feature layout.

The JSON a committed run holds must read back into typed records and write out byte for byte as before."""

from __future__ import annotations

import json
from typing import Any

import pytest

from medheaven.crypto.planning import plan_ckks_parameters
from medheaven.errors import ConfigurationError, SchemaError
from medheaven.feature_layout import FeatureLayout
from medheaven.federated.ledger import EntryStatus, LedgerEntry
from medheaven.federated.phase import Phase
from medheaven.federated.wire import Manifest, RunDescription
from medheaven.model import ModelSpec

# a manifest as the aggregator has always written it (field order included)
COMMITTED_MANIFEST: dict[str, Any] = {
    "run": "r1",
    "round": 2,
    "attempt": 1,
    "kind": "update",
    "base_sha256": "ab" * 32,
    "result_key": "r1/rounds/2/global.ckks",
    "result_sha256": "cd" * 32,
    "result_size": 4096,
    "selected": ["h1", "h2", "h3"],
    "folded": [
        {
            "hospital": "h1",
            "status": "folded",
            "key": "r1/updates/2/a1/h1.ckks",
            "sha256": "ef" * 32,
            "size": 2048,
            "completed_at": 100.5,
            "metrics": {"auc": 0.71},
            "timings": {"train": 1.5, "fold": 0.25},
            "folded_at": 101.0,
            "privacy": {"epsilon": 1.25, "delta": 1e-05},
        },
        {
            "hospital": "h2",
            "status": "folded",
            "key": "r1/updates/2/a1/h2.ckks",
            "sha256": "12" * 32,
            "size": 2048,
            "completed_at": 100.75,
            "metrics": {},
            "timings": {},
            "folded_at": 102.0,
        },
    ],
    "rejected": [
        {
            "hospital": "h3",
            "status": "rejected",
            "reason": "late",
            "message": "completed after the deadline",
            "at": 103.0,
            "key": "r1/updates/2/a1/h3.ckks",
            "sha256": "34" * 32,
            "completed_at": 150.0,
        }
    ],
    "quorum": 2,
    "opened_at": 90.0,
    "deadline": 120.0,
    "finalised_at": 104.0,
    "timings": {"finalise": 0.5},
    "format": 1,
}


def test_manifest_entries_are_typed_and_bytes_unchanged() -> None:
    manifest = Manifest.from_dict(json.loads(json.dumps(COMMITTED_MANIFEST)))
    assert all(isinstance(e, LedgerEntry) and e.status is EntryStatus.FOLDED for e in manifest.folded)
    assert [e.status for e in manifest.rejected] == [EntryStatus.REJECTED]
    assert manifest.kind is Phase.UPDATE
    assert manifest.participants == ("h1", "h2")
    assert manifest.folded[0].privacy == {"epsilon": 1.25, "delta": 1e-05} and manifest.folded[1].at == 102.0
    assert json.dumps(manifest.to_dict()) == json.dumps(COMMITTED_MANIFEST)


def test_manifest_missing_field_names_it() -> None:
    damaged = {k: v for k, v in COMMITTED_MANIFEST.items() if k != "result_sha256"}
    with pytest.raises(ConfigurationError, match="manifest has no field 'result_sha256'"):
        Manifest.from_dict(damaged)


def test_run_description_layout_is_typed_and_bytes_unchanged() -> None:
    layout = FeatureLayout(numeric=("age", "bmi"), categorical=(("sex", ("f", "m", "other")),))
    description = RunDescription(
        run="r1",
        model=ModelSpec(n_features=layout.n_features, hidden=(4,)),
        params=plan_ckks_parameters(),
        fingerprint="ff" * 32,
        layout=layout,
    )
    stored = json.dumps(description.to_dict())
    # the layout's JSON form in model.json, as `medheaven data split` has always written it
    assert json.loads(stored)["layout"] == {
        "version": 1,
        "numeric": ["age", "bmi"],
        "categorical": [{"column": "sex", "levels": ["f", "m", "other"]}],
    }
    read = RunDescription.from_dict(json.loads(stored))
    assert read == description and isinstance(read.layout, FeatureLayout)
    assert json.dumps(read.to_dict()) == stored


def test_run_description_malformed_layout_refused() -> None:
    data = RunDescription(
        run="r1",
        model=ModelSpec(n_features=1),
        params=plan_ckks_parameters(),
        fingerprint="ff" * 32,
        layout=FeatureLayout(numeric=("age",), categorical=()),
    ).to_dict()
    data["layout"] = {"numeric": ["age"]}
    with pytest.raises(SchemaError, match="feature layout is malformed"):
        RunDescription.from_dict(data)

"""``Phase`` and ``HospitalState``: the enums keep the wire and the store byte-identical to the string-typed version."""

from __future__ import annotations

import json

import msgpack
import pytest

from coordinator.status import HospitalState
from medheaven.errors import EnvelopeFormatError
from medheaven.federated.ledger import Ledger
from medheaven.federated.paths import RunPaths
from medheaven.federated.phase import Phase
from medheaven.federated.wire import RECEIPT_DOMAIN, Manifest, Receipt, RoundSpec


def test_phase_values_and_envelope_kinds_are_the_wire_strings() -> None:
    assert [p.value for p in Phase] == ["stats", "update"]
    assert (Phase.STATS.upload_kind, Phase.STATS.result_kind) == ("stats", "stats")
    assert (Phase.UPDATE.upload_kind, Phase.UPDATE.result_kind) == ("update", "global")
    assert (Phase.STATS.hospital_task, Phase.UPDATE.hospital_task) == ("stats", "train")
    assert [p.trains for p in Phase] == [False, True]


def test_phase_store_layout_is_unchanged() -> None:
    paths = RunPaths("r")
    assert paths.manifest(Phase.STATS, 0) == "r/stats/manifest.json"
    assert paths.result(Phase.STATS, 0) == "r/stats/summed.ckks"
    assert paths.update(Phase.STATS, 0, 2, "h1") == "r/stats/updates/a2/h1.ckks"
    assert paths.result(Phase.UPDATE, 3) == paths.global_model(3) == "r/rounds/3/global.ckks"
    assert paths.ledger(Phase.UPDATE, 3, 1) == "r/updates/3/a1/ledger.json"


def test_receipt_signed_message_is_byte_identical_to_the_string_kind() -> None:
    receipt = Receipt("r", 2, 1, Phase.UPDATE, "h1", "r/updates/2/a1/h1.ckks", "ab" * 32, 10, {"loss": 0.5})
    body = ["r", 2, 1, "update", "h1", "r/updates/2/a1/h1.ckks", "ab" * 32, 10, [("loss", 0.5)], [], [], 0.0]
    assert receipt.signed_message() == RECEIPT_DOMAIN + msgpack.packb(body, use_bin_type=True)
    assert json.loads(json.dumps(receipt.to_dict()))["kind"] == "update"


def test_records_store_the_phase_name_and_decode_to_the_phase() -> None:
    spec = RoundSpec("r", 0, 1, Phase.STATS, ("h1",), 1, 10.0, "")
    ledger = Ledger.empty("r", Phase.STATS, 0, 1)
    manifest = Manifest("r", 0, 1, Phase.STATS, "", "k", "d", 1, ("h1",), (), (), 1, 0.0, 1.0, 1.0)
    for record, cls in ((spec, RoundSpec), (ledger, Ledger), (manifest, Manifest)):
        stored = json.dumps(record.to_dict())
        assert '"kind": "stats"' in stored
        assert cls.from_dict(json.loads(stored)).kind is Phase.STATS


def test_receipt_of_an_unknown_phase_is_refused_at_decode() -> None:
    raw = Receipt("r", 2, 1, Phase.UPDATE, "h1", "k", "ab" * 32, 10).to_dict()
    with pytest.raises(EnvelopeFormatError, match="'layout' is not a phase"):
        Receipt.from_dict({**raw, "kind": "layout"})


def test_hospital_states_unfinished_are_the_ones_still_expected_to_answer() -> None:
    assert {s for s in HospitalState if s.unfinished} == {"queued", "training", "uploaded"}
    assert HospitalState.BUDGET_SPENT.value == "budget spent"

"""``medheaven.records``: the one typed-record decoder, the strict field check and the JSON-file reader."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from medheaven.errors import ConfigurationError, DataFileError, EnvelopeFormatError
from medheaven.records import decode_record, encode_record, read_json_object, typed_field


class Colour(enum.Enum):
    RED = "red"


@dataclass(frozen=True)
class Inner:
    x: int


@dataclass(frozen=True)
class Sample:
    name: str
    count: int
    colour: Colour
    inner: Inner
    shape: Literal["a", "b"] = "a"
    ratio: float = 0.5
    tags: tuple[str, ...] = ()
    scores: dict[str, float] = field(default_factory=dict)
    note: str | None = None


FULL = {
    "name": "s",
    "count": 3,
    "colour": "red",
    "inner": {"x": 1},
    "shape": "b",
    "ratio": 2,
    "tags": ["t"],
    "scores": {"auc": 1},
    "note": None,
}


def test_records_round_trip_by_annotations() -> None:
    sample = decode_record(Sample, FULL, what="sample")
    assert sample == Sample("s", 3, Colour.RED, Inner(1), "b", 2.0, ("t",), {"auc": 1.0}, None)
    assert isinstance(sample.ratio, float) and isinstance(sample.scores["auc"], float)
    assert encode_record(sample) == {**FULL, "ratio": 2.0, "scores": {"auc": 1.0}}


def test_records_defaults_keys_and_given_fields() -> None:
    data = {"nom": "s", "count": 1, "colour": "red"}
    sample = decode_record(Sample, data, what="sample", keys={"name": "nom"}, inner=Inner(7))
    assert sample == Sample("s", 1, Colour.RED, Inner(7))
    with pytest.raises(ConfigurationError, match="sample has no field 'ratio'"):
        decode_record(Sample, {k: v for k, v in FULL.items() if k != "ratio"}, what="sample", required=("ratio",))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"count": "three"}, "sample field 'count' = 'three' is not a valid int"),
        ({"count": [1]}, "sample field 'count' = \\[1\\] is not a valid int"),
        ({"colour": "blue"}, "sample field 'colour' = 'blue' is not a valid Colour"),
        ({"shape": "c"}, "sample field 'shape' = 'c'"),
        ({"tags": "t"}, "sample field 'tags' = 't'"),
        ({"scores": {"auc": "high"}}, "sample field 'scores'"),
    ],
)
def test_records_bad_value_names_record_field_value_and_remedy(change: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message) as caught:
        decode_record(Sample, {**FULL, **change}, what="sample")
    assert "write it again" in str(caught.value)


def test_records_missing_field_and_non_map_refused_with_chosen_error() -> None:
    with pytest.raises(EnvelopeFormatError, match="sample has no field 'count'"):
        decode_record(Sample, {k: v for k, v in FULL.items() if k != "count"}, what="sample", error=EnvelopeFormatError)
    with pytest.raises(ConfigurationError, match="sample must be a map, got list"):
        decode_record(Sample, [1, 2], what="sample")  # type: ignore[arg-type]


def test_records_typed_field_is_strict_and_bool_is_no_int() -> None:
    assert typed_field({"round": 2}, "round", int, what="receipt", error=EnvelopeFormatError) == 2
    for bad in (True, "2", 2.0):
        with pytest.raises(EnvelopeFormatError, match="receipt field 'round' must be int"):
            typed_field({"round": bad}, "round", int, what="receipt", error=EnvelopeFormatError)


def test_records_json_file_errors_name_the_file_and_the_remedy(tmp_path: Path) -> None:
    path = tmp_path / "f.json"

    def read() -> dict[str, object]:
        return read_json_object(path, what="baseline file", remedy="write it again", error=DataFileError)

    with pytest.raises(DataFileError, match=f"baseline file {path} does not exist: write it again"):
        read()
    path.write_text("{nope", encoding="utf-8")
    with pytest.raises(DataFileError, match=r"is not valid JSON .*: write it again"):
        read()
    path.write_bytes(b"\xff\xfe")
    with pytest.raises(DataFileError, match="is not valid JSON"):
        read()
    path.write_text("[1]", encoding="utf-8")
    with pytest.raises(DataFileError, match="must hold a JSON object, not list: write it again"):
        read()
    path.write_text('{"a": 1}', encoding="utf-8")
    assert read() == {"a": 1}

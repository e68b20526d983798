"""The fixed feature layout every hospital of a run encodes to: the columns, in order, that FedAvg adds up.

Kept apart from ``encoding.py`` (which fits and applies it with pandas) because the layout is part of a run's
description (``model.json``), which processes without pandas, such as the aggregator, read too.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medheaven.errors import DataFileError, SchemaError
from medheaven.records import read_json_object

LAYOUT_VERSION = 1
_REGENERATE = "regenerate it with `medheaven data split`"


@dataclass(frozen=True)
class FeatureLayout:
    numeric: tuple[str, ...]
    categorical: tuple[tuple[str, tuple[str, ...]], ...]

    @property
    def feature_names(self) -> tuple[str, ...]:
        one_hot = (f"{column}={level}" for column, levels in self.categorical for level in levels)
        return (*self.numeric, *one_hot)

    @property
    def n_features(self) -> int:
        return len(self.numeric) + sum(len(levels) for _, levels in self.categorical)

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": LAYOUT_VERSION,
            "numeric": list(self.numeric),
            "categorical": [{"column": c, "levels": list(levels)} for c, levels in self.categorical],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FeatureLayout:
        try:
            numeric = tuple(str(c) for c in data["numeric"])
            categorical = tuple(
                (str(entry["column"]), tuple(str(level) for level in entry["levels"])) for entry in data["categorical"]
            )
        except (KeyError, TypeError) as exc:
            raise SchemaError(f"feature layout is malformed ({exc!r}): {_REGENERATE}") from exc
        return cls(numeric=numeric, categorical=categorical)

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: Path) -> FeatureLayout:
        return cls.from_dict(read_json_object(path, what="feature layout", remedy=_REGENERATE, error=DataFileError))

"""The layout phase: three separate hospital files, real Redis, real worker processes, `medheaven-coordinator run`
without --layout; the layout equals the pooled computation and no per-level count is ever in the clear."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest
import redis
from generic_support import tumour_frame

from medheaven.crypto.planning import plan_ckks_parameters
from medheaven.data import FeatureLayout, get_schema, load_dataset
from medheaven.data.federated_layout import (
    LevelProposal,
    candidate_columns,
    candidate_layout,
    pooled_layout,
    propose,
)
from medheaven.errors import SchemaError
from medheaven.federated.setup import set_up_federation
from medheaven.store.local import LocalStore
from workers.cluster import ProcessCluster

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = "target: diagnosis\npositive_values: [Malignant]\nnegative_values: [Benign]\ngroup_column: patient_id\n"
K, TOTAL = 10, 40


def _hospital_files(folder: Path) -> dict[str, Path]:
    """h1 alone has 'east' (many patients); h2 alone has 'west' (12 patients: proposed, but under TOTAL in all);
    'rare' has 4 patients at each hospital (below k everywhere, 12 in all); h3 has an extra column; each file has
    its columns in another order."""
    folder.mkdir(parents=True)
    files = {}
    for index, hospital in enumerate(("h1", "h2", "h3")):
        frame = tumour_frame(300, seed=index + 1, clinics=("north", "south", ""))
        if hospital == "h1":
            frame.loc[frame.index[:100], "clinic"] = "east"
        if hospital == "h2":
            frame.loc[frame.index[:12], "clinic"] = "west"
        frame.loc[frame.index[-4:], "clinic"] = "rare"
        if hospital == "h3":
            frame["referral"] = np.random.default_rng(9).choice(["gp", "er"], len(frame))
        columns = list(frame.columns)
        np.random.default_rng(index).shuffle(columns)
        files[hospital] = folder / f"{hospital}.csv"
        frame[columns].to_csv(files[hospital], index=False)
    return files


def test_candidate_layout_names_both_hospitals_when_kinds_disagree() -> None:
    numeric = LevelProposal(kinds={"dose": "numeric"}, levels={})
    text = LevelProposal(kinds={"dose": "categorical"}, levels={"dose": ("1", "2", "3")})
    with pytest.raises(SchemaError) as info:
        candidate_layout({"h1": numeric, "h2": text})
    message = str(info.value)
    assert "'dose' is numeric at h1 but categorical at h2" in message and "'1', '2', '3'" in message


def test_pooled_layout_thresholds(tmp_path: Path) -> None:
    schema_file = tmp_path / "schema.yaml"
    schema_file.write_text(SCHEMA, encoding="utf-8")
    schema = get_schema("generic", schema_file=schema_file)
    frames = {h: load_dataset(p, schema) for h, p in _hospital_files(tmp_path / "data").items()}
    layout = pooled_layout(frames, min_patients=K, threshold=TOTAL)
    assert "referral" not in layout.numeric and all(c != "referral" for c, _ in layout.categorical)
    levels = dict(layout.categorical)["clinic"]
    assert "east" in levels and "west" not in levels and "rare" not in levels and levels[-1] == "other"
    assert {"north", "south", "missing"} <= set(levels)
    assert propose(frames["h2"], min_patients=K).levels["clinic"].count("west") == 1  # proposed, then dropped


def _walk(value: Any) -> Any:
    if isinstance(value, dict):
        for key, item in value.items():
            yield key
            yield from _walk(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _walk(item)
    else:
        yield value


@pytest.mark.slow
def test_coordinator_run_without_layout_builds_the_pooled_layout(tmp_path: Path, redis_url: str) -> None:
    files = _hospital_files(tmp_path / "data")
    schema_file = tmp_path / "schema.yaml"
    schema_file.write_text(SCHEMA, encoding="utf-8")
    store_dir = tmp_path / "store"
    store = LocalStore(store_dir)
    keys, identities = set_up_federation(tmp_path / "keys", store, sorted(files), plan_ckks_parameters())
    store_url = f"file://{store_dir.resolve()}"
    common = {"MEDHEAVEN_BROKER_URL": redis_url, "MEDHEAVEN_STORE": store_url}

    schema = get_schema("generic", schema_file=schema_file)
    frames = {h: load_dataset(p, schema) for h, p in files.items()}
    expected = pooled_layout(frames, min_patients=K, threshold=TOTAL)

    with ProcessCluster(base_env={}, log_dir=tmp_path / "logs") as cluster:
        cluster.start_aggregator({**common, "MEDHEAVEN_CONTEXT_FINGERPRINT": keys.fingerprint})
        for hospital, path in files.items():
            cluster.start_hospital(hospital, {
                **common, "MEDHEAVEN_HOSPITAL_ID": hospital, "MEDHEAVEN_DATA_PATH": str(path),
                "MEDHEAVEN_SCHEMA_NAME": "generic", "MEDHEAVEN_SCHEMA_FILE": str(schema_file),
                "MEDHEAVEN_SECRET_CONTEXT": str(keys.secret),
                "MEDHEAVEN_SIGNING_KEY": str(identities[hospital].signing_key),
            })  # fmt: skip
        env = {**os.environ, **common, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"}
        done = subprocess.run(
            [sys.executable, "-m", "coordinator", "run", "--run-id", "fed", "--hospitals", "h1,h2,h3",
             "--rounds", "1", "--level-min-patients", str(K), "--level-min-total", str(TOTAL),
             "--max-abs-feature", "10000", "--round-timeout", "300", "--json"],
            capture_output=True, text=True, timeout=900, env=env, cwd=tmp_path, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
        result_values = []
        client = redis.Redis.from_url(redis_url)
        for key in client.scan_iter("celery-task-meta-*"):
            result_values.append(msgpack.unpackb(client.get(key), raw=False))
    output = json.loads(done.stdout)
    assert output["status"] == "completed" and [r["round"] for r in output["history"]] == [1]

    stored = FeatureLayout.from_dict(store.get_json("fed.layout/layout.json"))
    assert stored == expected
    assert FeatureLayout.from_dict(store.get_json("fed/model.json")["layout"]) == expected
    assert output["layout"] == expected.to_dict()  # the coordinator shows the layout it built

    # every per-level patient count (per hospital and in all) over the candidate levels
    candidates, _ = candidate_layout({h: propose(f, min_patients=K) for h, f in frames.items()})
    pairs = candidate_columns(candidates)
    vectors = [
        np.array([f.loc[f[c].astype(str) == lv, "group"].nunique() for c, lv in pairs], dtype=np.float64)
        for f in frames.values()
    ]
    vectors.append(np.sum(vectors, axis=0))
    probes = [v.astype("<f8").tobytes() for v in vectors] + [v.astype("<f4").tobytes() for v in vectors]
    number_lists = [[float(x) for x in v] for v in vectors]
    for path in (p for p in store_dir.rglob("*") if p.is_file()):
        data = path.read_bytes()
        assert not any(probe in data for probe in probes), f"{path} holds per-level counts in the clear"
        if path.suffix == ".json":
            for item in _walk(json.loads(data)):
                assert not (isinstance(item, list) and item in number_lists), path
            text = json.dumps(json.loads(data))
            assert not any(json.dumps(v) in text for v in number_lists), path
    # the broker's result backend: proposals hold level names only, and no count vector anywhere
    proposals = [m for m in result_values if isinstance(m.get("result"), dict) and "kinds" in m["result"]]
    assert len(proposals) == 3
    for meta in proposals:
        assert all(isinstance(x, str) for x in _walk(meta["result"]))
    for meta in result_values:
        flat = [x for x in _walk(meta.get("result")) if isinstance(x, int | float) and not isinstance(x, bool)]
        for vector in number_lists:
            assert not (len(flat) >= len(vector) and any(flat[i : i + len(vector)] == vector
                                                          for i in range(len(flat) - len(vector) + 1)))  # fmt: skip

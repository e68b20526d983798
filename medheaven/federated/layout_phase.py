"""Hospital side of the layout phase (see :mod:`medheaven.data.federated_layout` for the protocol).

The encrypted per-level patient counts travel exactly like the statistics phase's vectors: a ``stats`` envelope of
the layout run (``<run>.layout``), signed, folded by the aggregator as ciphertexts, committed with a manifest. The
vector is the sufficient statistics of the per-patient 0/1 level indicators (count, sum, sum of squares), so its
``sum`` part is the patient count of each candidate level. Only a key holder decrypts the committed sum, inside its
own process, and what it returns is the layout: level names that reached the threshold, never a count.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from medheaven.federated.hospital import HospitalNode
from medheaven.federated.results import committed_statistics
from medheaven.federated.wire import Receipt, RoundSpec

#: The layout phase's own run id: ``<run>.layout`` (RUN_ID allows '.'), so its records never mix with the run's.
LAYOUT_SUFFIX = ".layout"


def layout_run_id(run: str) -> str:
    return f"{run}{LAYOUT_SUFFIX}"


def _frame(node: HospitalNode) -> Any:
    # the node caches the cleaned frame it reads for training; the layout phase reads the same one
    if node._frame is None:
        node._frame = node.reader(node.data_path)
    return node._frame


def propose_levels(node: HospitalNode, min_patients: int) -> dict[str, Any]:
    """Column kinds and the levels this hospital holds for >= k patients: names only, no counts."""
    from medheaven.data.federated_layout import propose

    return {"hospital": node.hospital_id, **propose(_frame(node), min_patients=min_patients).to_dict()}


def encrypt_level_counts(node: HospitalNode, spec: RoundSpec) -> Receipt:
    """Encrypt the per-candidate-level patient counts (as sufficient statistics of 0/1 indicators) and upload."""
    from medheaven.data import SufficientStats
    from medheaven.data.federated_layout import patient_indicators

    started = time.perf_counter()
    cache = node._run(spec.run)
    indicators = patient_indicators(_frame(node), cache.description.layout)
    vector = cache.description.stats_upload(SufficientStats.of(indicators).to_vector())
    key, digest, size, _ = node._upload(cache.description, spec, vector)
    return node._receipt(spec, key, digest, size, {}, {"total": time.perf_counter() - started})


def decide_layout(node: HospitalNode, layout_run: str, threshold: int) -> dict[str, Any]:
    """Key holders only: decrypt the summed counts here and return the layout they decide (no counts)."""
    from medheaven.data.federated_layout import final_layout

    description = node._run(layout_run).description
    summed = committed_statistics(node.store, description, node.secret)
    totals = np.split(np.asarray(summed, dtype=np.float64), 3)[1]  # count | sum | sum of squares: sum = patients
    candidates = description.layout
    return final_layout(candidates, totals, threshold=threshold).to_dict()

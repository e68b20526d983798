"""What a hospital may say in the clear about a model scored on its own rows: the single place metric release
precision is decided.

Why round at all. Accuracy and base rate are ``k / n`` for the ``n`` validation rows; ROC-AUC is ``U / (P * N)``
for the positives and negatives among them. At double precision the smallest common denominator of a few such
values is ``n`` itself (continued fractions find it in microseconds), and validation is a fixed share of a
hospital's patients, so its sample count (which FedAvg keeps encrypted) would follow.

Why these steps. Released on a grid of step ``s``, a ratio ``k / n`` tells nothing about ``n`` once ``1 / n <= s``:
every interval of width ``s`` then holds some ``k / n`` for every such ``n``, so each ``n >= 1 / s`` is consistent
with every released value of every round, however many rounds are released.

* ``accuracy`` and ``base_rate`` (ratios of row counts): step 0.01, so every validation set of 100 rows or more is
  consistent with what is released (the demo's are ~500 rows, the real data's ~2,600). Neither selects a round: the
  base rate does not change between rounds and accuracy at an 11% base rate says little.
* ``roc_auc`` and ``pr_auc`` (ratios over positive/negative pairs and positives): step 0.001, consistent with every
  ``P * N >= 1000``; a validation set with fewer than ~10 positives is hopeless for model selection anyway. The
  Hanley-McNeil standard error of ROC-AUC on a few thousand rows at an 11% base rate is ~0.01, ten steps, so the
  rounding is far below the noise that model selection (best mean validation ROC-AUC) has to live with.
* ``brier`` and ``loss`` (means of continuous per-row terms): step 0.001, again below their sampling noise; they are
  not ratios of counts.

A metric not in the table is not released at all (``examples`` in particular), and non-finite values are dropped
(a one-class validation set has no ROC-AUC).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from types import MappingProxyType

RELEASE_DECIMALS: Mapping[str, int] = MappingProxyType(
    {"roc_auc": 3, "pr_auc": 3, "brier": 3, "loss": 3, "accuracy": 2, "base_rate": 2}
)


def released_metrics(metrics: Mapping[str, float]) -> dict[str, float]:
    """The metrics a hospital reports in the clear: the table's metrics, finite, rounded to the table's decimals."""
    return {
        name: round(float(metrics[name]), decimals)
        for name, decimals in RELEASE_DECIMALS.items()
        if name in metrics and math.isfinite(float(metrics[name]))
    }

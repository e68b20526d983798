"""Metrics a hospital reports about a model on its own validation rows (ROC-AUC and PR-AUC first: the base rate
of 30-day readmission is ~11%, so accuracy flatters a model that never predicts readmission)."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import average_precision_score, brier_score_loss, log_loss, roc_auc_score


def binary_metrics(labels: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    y = np.asarray(labels, dtype=np.int64)
    p = np.clip(np.asarray(scores, dtype=np.float64), 1e-7, 1 - 1e-7)
    both_classes = 0 < int(y.sum()) < y.size
    return {
        "loss": float(log_loss(y, p, labels=[0, 1])) if y.size else float("nan"),
        "roc_auc": float(roc_auc_score(y, p)) if both_classes else float("nan"),
        "pr_auc": float(average_precision_score(y, p)) if both_classes else float("nan"),
        "brier": float(brier_score_loss(y, p)) if y.size else float("nan"),
        "accuracy": float(np.mean((p >= 0.5) == y)) if y.size else float("nan"),
        "base_rate": float(y.mean()) if y.size else float("nan"),
        "examples": float(y.size),
    }

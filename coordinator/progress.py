"""Live progress for operators (rich, on stderr) and the final summary table (stdout)."""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table

from coordinator.status import HospitalState, RoundProgress
from medheaven.federated.phase import Phase
from medheaven.federated.wire import RoundSpec
from medheaven.privacy.config import DpConfig
from medheaven.privacy.spent import ModelPrivacy, model_privacy

_STYLE = {
    HospitalState.QUEUED: "dim",
    HospitalState.TRAINING: "cyan",
    HospitalState.UPLOADED: "blue",
    HospitalState.FOLDED: "green",
    HospitalState.REJECTED: "red",
    HospitalState.FAILED: "red",
    HospitalState.BUDGET_SPENT: "yellow",
    HospitalState.LATE: "yellow",
}


class ProgressObserver:
    def __init__(self, *, quiet: bool, rounds: int) -> None:
        self.quiet = quiet
        self.rounds = rounds
        self.console = Console(stderr=True)
        self.started = time.monotonic()
        self.round_seconds: list[float] = []
        self._live: Live | None = None

    def _table(self, progress: RoundProgress) -> Table:
        spec = progress.spec
        elapsed = time.monotonic() - self.started
        title = spec.kind.label(spec.round, self.rounds)
        eta = ""
        if self.round_seconds and spec.kind.trains:
            mean = sum(self.round_seconds) / len(self.round_seconds)
            eta = f", about {mean * (self.rounds - spec.round + 1):.0f}s to go"
        table = Table(title=f"{title} (attempt {spec.attempt}) {elapsed:.0f}s elapsed{eta}", title_justify="left")
        table.add_column("hospital")
        table.add_column("state")
        table.add_column("detail", overflow="fold")
        for status in progress.statuses.values():
            style = _STYLE.get(status.state, "")
            table.add_row(status.hospital, f"[{style}]{status.state}[/{style}]", status.detail[:400])
        return table

    def round_started(self, spec: RoundSpec) -> None:
        if self.quiet:
            return
        self._stop_live()
        self._live = Live(console=self.console, refresh_per_second=4, transient=True)
        self._live.start()

    def round_progress(self, progress: RoundProgress) -> None:
        if self._live is not None:
            self._live.update(self._table(progress))

    def round_finished(self, record: dict[str, Any]) -> None:
        self._stop_live()
        self.round_seconds.append(float(record["seconds"]))
        if not self.quiet:
            auc = record["weighted"].get("roc_auc", float("nan"))
            suffix = not_folded_text(record)
            self.console.print(
                f"round {record['round']} committed with {len(record['participants'])} hospitals in "
                f"{record['seconds']:.1f}s; validation ROC-AUC of its starting model {auc:.3f}{suffix}"
            )

    def message(self, text: str) -> None:
        if not self.quiet:
            self.console.print(text)

    def _stop_live(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None

    @staticmethod
    def print_summary(
        console: Console,
        history: list[dict[str, Any]],
        test: dict[str, Any] | None,
        failed: list[dict[str, Any]] | None = None,
        privacy: ModelPrivacy | None = None,
    ) -> None:
        table = rounds_table(history, title="rounds (validation metrics are of the model each round started from)")
        console.print(table)
        for line in privacy.lines() if privacy is not None else []:
            console.print(line, markup=False)
        for record in history:
            if suffix := not_folded_text(record):
                console.print(f"round {record['round']}{suffix}", markup=False)
        for attempt in failed or []:
            console.print(failed_attempt_text(attempt), markup=False)
        if test:
            metrics = test["metrics"]
            console.print(
                f"held-out test of round {test['round']}: ROC-AUC {metrics['roc_auc']:.3f}, "
                f"PR-AUC {metrics['pr_auc']:.3f}, Brier {metrics['brier']:.4f}, base rate {metrics['base_rate']:.3f}"
            )


def history_privacy(history: list[dict[str, Any]], dp: DpConfig | None) -> ModelPrivacy | None:
    """Each hospital's spent (ε, δ) behind the last committed model, from the history's signed receipts."""
    return model_privacy(dp, [(int(r["round"]), dict(r.get("privacy", {}))) for r in history])


def not_folded_text(record: dict[str, Any]) -> str:
    """``; not folded: h2 (SchemaError: ...)`` for the hospitals a committed round went without, with the reason."""
    reasons = dict(record.get("reasons", {}))
    late = [h for h, s in record.get("statuses", {}).items() if s != HospitalState.FOLDED]
    if not late:
        return ""
    return "; not folded: " + ", ".join(f"{h} ({reasons[h]})" if reasons.get(h) else h for h in late)


def failed_attempt_text(attempt: dict[str, Any]) -> str:
    what = Phase(attempt["kind"]).label(attempt["round"])
    reasons = "".join(f"\n  {h}: {why}" for h, why in dict(attempt.get("reasons", {})).items())
    return f"{what} attempt {attempt['attempt']} failed ({len(attempt['folded'])} folded, quorum {attempt['quorum']}):{reasons}"


def rounds_table(history: list[dict[str, Any]], *, title: str) -> Table:
    """One row per committed round: mean validation metrics of the model it started from, time and bytes."""
    table = Table(title=title)
    for column in ("round", "hospitals", "val ROC-AUC", "val PR-AUC", "val loss", "train s", "round s", "KB up"):
        table.add_column(column, justify="right")
    for record in history:
        mean = record["weighted"]
        table.add_row(
            str(record["round"]),
            str(len(record["participants"])),
            f"{mean['roc_auc']:.3f}",
            f"{mean['pr_auc']:.3f}",
            f"{mean['loss']:.4f}",
            f"{record['phases_max'].get('train', 0.0):.1f}",
            f"{record['seconds']:.1f}",
            f"{record['bytes_up'] / 1024:.0f}",
        )
    return table

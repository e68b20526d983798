"""Which hospitals cannot afford the next round of a DP-SGD run, judged from what their signed receipts reported.

A hospital at its budget refuses to train (``privacy.local``), and under pairwise masks one refusal closes the whole
attempt: its survivors would re-train in a fresh attempt that their ledgers charge again. So the coordinator leaves
such a hospital out *before* it opens an attempt. It cannot read a hospital's ledger (that stays with the hospital's
data), but every receipt a hospital signs under DP carries ``next_epsilon``, the ε its ledger would reach after one
more round like the one it planned (the statistics receipt: round 1; a training receipt: the round after it). The
latest such report per hospital decides, with the same slack as the hospital's own refusal
(``accountant.within_budget``). A hospital whose ledger was charged since its last report (a crash after the charge)
is not caught here; it still refuses, and the round policy abandons that attempt at once.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass

from medheaven.privacy.accountant import within_budget
from medheaven.privacy.config import DpConfig
from medheaven.privacy.local import NEXT_EPSILON


@dataclass(frozen=True)
class BudgetReport:
    """One hospital's latest signed report of its privacy spend."""

    hospital: str
    spent: float
    next_epsilon: float
    where: str  # which receipt said so, for the operator ("the statistics phase", "round 2 attempt 1")

    def affordable(self, dp: DpConfig) -> bool:
        return within_budget(self.next_epsilon, dp.target_epsilon)

    def describe(self, dp: DpConfig) -> str:
        return (
            f"left out: its privacy budget is spent (ε={self.spent:.3f} of {dp.target_epsilon:g} at δ={dp.delta:g}; "
            f"one more round would bring it to ε={self.next_epsilon:.3f}, as its receipt of {self.where} says)"
        )


def latest_reports(
    receipts: Iterable[tuple[str, Mapping[str, float], str]], *, wanted: Collection[str] = ()
) -> dict[str, BudgetReport]:
    """Each hospital's first report in ``receipts`` (hospital, receipt privacy fields, where), which the caller lists
    newest first; receipts without ``next_epsilon`` (no DP, or an older hospital) say nothing. Stops reading once
    every hospital in ``wanted`` has a report (the receipts may be read lazily from the store)."""
    found: dict[str, BudgetReport] = {}
    for hospital, privacy, where in receipts:
        if wanted and all(h in found for h in wanted):
            break
        if hospital in found or NEXT_EPSILON not in privacy:
            continue
        found[hospital] = BudgetReport(
            hospital, float(privacy.get("epsilon", 0.0)), float(privacy[NEXT_EPSILON]), where
        )
    return found


def unaffordable(reports: Mapping[str, BudgetReport], dp: DpConfig) -> dict[str, BudgetReport]:
    """The hospitals whose latest report says the next round would exceed the run's target ε."""
    return {h: report for h, report in reports.items() if not report.affordable(dp)}

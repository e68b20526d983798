"""Operator-facing results of a run: its records, plots and a one-page report (``medheaven report``).

Everything here reads public files of the store; only the optional HE-vs-plaintext check needs a secret context.
"""

from medheaven.report.records import Baseline, RoundRow, RunRecords, load_baseline, load_run_records
from medheaven.report.render import ReportFiles, write_report

__all__ = [
    "Baseline",
    "ReportFiles",
    "RoundRow",
    "RunRecords",
    "load_baseline",
    "load_run_records",
    "write_report",
]

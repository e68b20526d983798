"""The report's figures, drawn with matplotlib's object API on the Agg canvas.

No pyplot: figures are plain ``Figure`` objects rendered by ``FigureCanvasAgg``, so drawing needs no display,
touches no global backend state and is safe in worker threads.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medheaven.report.records import OTHER_PHASE, PHASES, STATES, Baseline, RunRecords

DPI = 120
PHASE_COLOURS = {
    "fetch_decrypt": "#4c72b0",
    "evaluate": "#55a868",
    "train": "#dd8452",
    "encrypt_upload": "#8172b3",
    "fold": "#c44e52",
    OTHER_PHASE: "#b0b0b0",
}
PHASE_LABELS = {
    "fetch_decrypt": "fetch + decrypt global model",
    "evaluate": "evaluate on validation split",
    "train": "local training",
    "encrypt_upload": "encrypt + upload update",
    "fold": "homomorphic fold (aggregator)",
    OTHER_PHASE: "broker / store / waiting / finalise",
}
STATE_COLOURS = {
    "folded": "#55a868",
    "rejected": "#c44e52",
    "late": "#dd8452",
    "worker lost": "#8172b3",
    "failed": "#8c1c13",
    "budget spent": "#937860",
    "not selected": "#e6e6e6",
}
STATE_MARKS = {
    "folded": "in",
    "rejected": "rej",
    "late": "late",
    "worker lost": "lost",
    "failed": "fail",
    "budget spent": "dp",
    "not selected": "-",
}
# legend entries whose values differ between the ROC and PR panels: each panel labels its own
PANEL_SPECIFIC = ("selected model", "centralised", "local-only mean", "chance")
X_LABEL = "global model after round k (0 = initial model)"


def _figure(width: float = 11.0, height: float = 4.6) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _integer_axis(axis: Any) -> None:
    from matplotlib.ticker import MaxNLocator

    axis.xaxis.set_major_locator(MaxNLocator(integer=True))


def _save(figure: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png", dpi=DPI)
    return path


def _no_rounds(axis: Any, records: RunRecords) -> bool:
    if records.rounds:
        return False
    axis.text(0.5, 0.5, "no committed training round yet", ha="center", va="center", transform=axis.transAxes)
    axis.set_xticks([])
    axis.set_yticks([])
    return True


def _series(records: RunRecords, hospital: str, metric: str) -> tuple[list[int], list[float]]:
    xs, ys = [], []
    for point in records.validation:
        value = point.metrics.get(hospital, {}).get(metric, math.nan)
        if math.isfinite(value):
            xs.append(point.model_round)
            ys.append(value)
    return xs, ys


def _metric_panel(
    axis: Any,
    records: RunRecords,
    metric: str,
    title: str,
    *,
    baseline: Baseline | None,
    chance: float | None,
    chance_label: str,
) -> None:
    colours = _hospital_colours(records.hospitals)
    for hospital in records.hospitals:
        xs, ys = _series(records, hospital, metric)
        if xs:
            axis.plot(xs, ys, marker="o", markersize=3, linewidth=1, alpha=0.8, color=colours[hospital], label=hospital)
    models = [point.model_round for point in records.validation]
    weighted = [point.weighted.get(metric, math.nan) for point in records.validation]
    if models:
        axis.plot(models, weighted, marker="s", linewidth=2.4, color="black", label="mean over hospitals (validation)")
    test_value = (records.test or {}).get("metrics", {}).get(metric)
    test_round = records.test_round
    if isinstance(test_value, int | float) and math.isfinite(test_value) and test_round is not None:
        axis.plot(
            [test_round],
            [test_value],
            marker="*",
            markersize=15,
            linestyle="none",
            color="#d62728",
            label=f"selected model (round {test_round}) on held-out test: {test_value:.3f}",
        )
    if baseline is not None:
        _baseline_lines(axis, baseline, metric, colours)
    if chance is not None and math.isfinite(chance):
        axis.axhline(chance, color="#bbbbbb", linewidth=1.0, linestyle="-", label=chance_label)
    axis.set_title(title)
    axis.set_xlabel(X_LABEL)
    axis.set_ylabel(metric.replace("_", "-").upper() if metric != "loss" else "log loss")
    axis.grid(alpha=0.3)
    _integer_axis(axis)


def _baseline_lines(axis: Any, baseline: Baseline, metric: str, colours: dict[str, Any]) -> None:
    central = baseline.centralised.get(metric)
    if central is not None and math.isfinite(central):
        axis.axhline(
            central,
            color="#1f77b4",
            linewidth=1.8,
            linestyle="--",
            label=f"centralised baseline on test: {central:.3f}",
        )
    local = {h: v[metric] for h, v in baseline.local.items() if metric in v and math.isfinite(v[metric])}
    for index, (hospital, value) in enumerate(local.items()):
        # a baseline hospital that is also a federation hospital keeps that hospital's colour
        axis.axhline(
            value,
            color=colours.get(hospital, "#7f7f7f"),
            linewidth=1.1,
            linestyle=":",
            label="local-only baselines, test (dotted, in the hospital colour)" if index == 0 else None,
        )
    local_values = list(local.values())
    if local_values:
        mean = float(np.mean(local_values))
        axis.axhline(mean, color="#7f7f7f", linewidth=1.6, linestyle="-.", label=f"local-only mean on test: {mean:.3f}")


def _hospital_colours(hospitals: Sequence[str]) -> dict[str, Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if len(hospitals) <= 10 else "tab20"]
    return {h: cmap(i % cmap.N) for i, h in enumerate(hospitals)}


def _base_rate(records: RunRecords) -> float:
    # unweighted over hospitals and rounds: hospitals release no row counts (medheaven.federated.release)
    values = [m.get("base_rate", math.nan) for point in records.validation for m in point.metrics.values()]
    usable = [v for v in values if math.isfinite(v)]
    return sum(usable) / len(usable) if usable else math.nan


def plot_discrimination(records: RunRecords, path: Path, *, baseline: Baseline | None = None) -> Path:
    """ROC-AUC and PR-AUC of each round's incoming global model, per hospital and their mean."""
    figure = _figure(13.0, 5.4)
    left, right = figure.subplots(1, 2)
    _metric_panel(
        left, records, "roc_auc", "ROC-AUC per round", baseline=baseline, chance=0.5, chance_label="chance (0.5)"
    )
    base_rate = _base_rate(records)
    _metric_panel(
        right,
        records,
        "pr_auc",
        "PR-AUC per round",
        baseline=baseline,
        chance=base_rate,
        chance_label=f"chance (validation base rate {base_rate:.3f})",
    )
    for axis in (left, right):
        _no_rounds(axis, records)
    handles, labels = _unique_legend([left, right])
    if handles:
        figure.legend(handles, labels, loc="outside right center", fontsize="small", title="hospital / reference")
    figure.suptitle(f"Run {records.run}: discrimination of the global model on each hospital's validation split")
    return _save(figure, path)


def plot_loss(records: RunRecords, path: Path) -> Path:
    figure = _figure(10.5, 4.8)
    axis = figure.subplots()
    _metric_panel(axis, records, "loss", "Validation log loss per round", baseline=None, chance=None, chance_label="")
    if not _no_rounds(axis, records):
        axis.legend(fontsize="small", loc="best")
    figure.suptitle(f"Run {records.run}: loss of the global model on each hospital's validation split")
    return _save(figure, path)


def _unique_legend(axes: Sequence[Any]) -> tuple[list[Any], list[str]]:
    seen: dict[str, Any] = {}
    for axis in axes:
        for handle, label in zip(*axis.get_legend_handles_labels(), strict=True):
            if not label.startswith(PANEL_SPECIFIC):
                seen.setdefault(label, handle)
    for axis in axes:
        specific = [
            (h, lab) for h, lab in zip(*axis.get_legend_handles_labels(), strict=True) if lab.startswith(PANEL_SPECIFIC)
        ]
        if specific:
            handles, labels = zip(*specific, strict=True)
            axis.legend(handles, labels, fontsize="small", loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=1)
    return list(seen.values()), list(seen)


def plot_round_time(records: RunRecords, path: Path) -> Path:
    """Each round's wall time as stacked phases of its critical path, with the rest as broker/store/wait."""
    figure = _figure(10.5, 4.8)
    axis = figure.subplots()
    rounds = [row.round for row in records.rounds]
    bottom = np.zeros(len(rounds))
    for phase in (*PHASES, OTHER_PHASE):
        values = np.array([row.phases.get(phase, 0.0) for row in records.rounds])
        axis.bar(rounds, values, bottom=bottom, color=PHASE_COLOURS[phase], label=PHASE_LABELS[phase], width=0.7)
        bottom += values
    for x, row in zip(rounds, records.rounds, strict=True):
        axis.annotate(f"{row.seconds:.1f}s", (x, row.seconds), ha="center", va="bottom", fontsize="small")
    _no_rounds(axis, records)
    axis.set_xlabel("round")
    axis.set_ylabel("seconds")
    sources = sorted({row.phase_source.split(" (")[0] for row in records.rounds})
    axis.set_title(f"Wall time per round by phase ({', '.join(sources) or 'no rounds'})", fontsize="medium")
    axis.set_ylim(0, max([row.seconds for row in records.rounds], default=1.0) * 1.15)
    axis.grid(axis="y", alpha=0.3)
    _integer_axis(axis)
    handles, labels = axis.get_legend_handles_labels()
    figure.legend(handles[::-1], labels[::-1], loc="outside right center", fontsize="small", title="phase")
    figure.suptitle(f"Run {records.run}: where each round's time went")
    return _save(figure, path)


def plot_participation(records: RunRecords, path: Path) -> Path:
    """Which hospitals were folded, rejected, late or failed in each round."""
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    hospitals = list(records.hospitals)
    rounds = [row.round for row in records.rounds]
    codes = np.array(
        [[STATES.index(row.states.get(h, "not selected")) for row in records.rounds] for h in hospitals],
        dtype=float,
    ).reshape(len(hospitals), len(rounds))
    figure = _figure(max(6.0, min(16.0, 3.0 + 0.45 * len(rounds))), max(2.6, 1.4 + 0.45 * len(hospitals)))
    axis = figure.subplots()
    figure.suptitle(f"Run {records.run}: participation per round")
    if _no_rounds(axis, records):
        return _save(figure, path)
    cmap = ListedColormap([STATE_COLOURS[s] for s in STATES])
    axis.imshow(codes, cmap=cmap, vmin=-0.5, vmax=len(STATES) - 0.5, aspect="auto", interpolation="nearest")
    axis.set_xticks(range(len(rounds)), [str(r) for r in rounds])
    axis.set_yticks(range(len(hospitals)), hospitals)
    axis.set_xticks(np.arange(-0.5, len(rounds)), minor=True)
    axis.set_yticks(np.arange(-0.5, len(hospitals)), minor=True)
    axis.grid(which="minor", color="white", linewidth=1.5)
    axis.tick_params(which="minor", length=0)
    if len(rounds) <= 30:
        # text as well as colour, so the figure survives greyscale printing and colour blindness
        for y, hospital in enumerate(hospitals):
            for x, row in enumerate(records.rounds):
                state = row.states.get(hospital, "not selected")
                text = STATE_MARKS[state]
                colour = "#333333" if state == "not selected" else "white"
                axis.text(x, y, text, ha="center", va="center", fontsize="small", color=colour)
    axis.set_xlabel("round")
    axis.set_ylabel("hospital")
    present = [s for s in STATES if any(s in row.states.values() for row in records.rounds)] or ["folded"]
    figure.legend(
        handles=[Patch(facecolor=STATE_COLOURS[s], edgecolor="#666666", label=s) for s in present],
        loc="outside right center",
        fontsize="small",
        title="update",
    )
    return _save(figure, path)

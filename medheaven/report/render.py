"""The one-page run report: what the run did, how well, at what cost, and who saw what, with the plots beside it."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from medheaven.crypto.codec import SecretKeys
from medheaven.errors import ConfigurationError, StoreKeyNotFoundError
from medheaven.federated.verify import verify_round
from medheaven.report.document import Block, Bullets, Heading, Image, Paragraph, Table, to_html, to_markdown
from medheaven.report.plots import plot_discrimination, plot_loss, plot_participation, plot_round_time
from medheaven.report.records import Baseline, RunRecords, load_run_records
from medheaven.report.threat_model import threat_model_outline
from medheaven.store.base import Store

ReportFormat = Literal["md", "html"]
PLOT_FILES = {
    "discrimination": "discrimination.png",
    "loss": "loss.png",
    "round_time": "round-time.png",
    "participation": "participation.png",
}


@dataclass(frozen=True)
class ReportFiles:
    report: Path
    plots: dict[str, Path]
    verification: dict[str, Any] | None


def write_report(
    store: Store,
    run: str,
    out_dir: Path,
    *,
    baseline: Baseline | None = None,
    secret: SecretKeys | None = None,
    fmt: ReportFormat = "md",
) -> ReportFiles:
    """Read the run's records, draw the plots into ``out_dir`` and write ``report.md`` (or ``report.html``)."""
    records = load_run_records(store, run)
    out_dir.mkdir(parents=True, exist_ok=True)
    plots = {
        "discrimination": plot_discrimination(records, out_dir / PLOT_FILES["discrimination"], baseline=baseline),
        "loss": plot_loss(records, out_dir / PLOT_FILES["loss"]),
        "round_time": plot_round_time(records, out_dir / PLOT_FILES["round_time"]),
        "participation": plot_participation(records, out_dir / PLOT_FILES["participation"]),
    }
    verification = _verification(store, records, secret)
    blocks = report_blocks(records, baseline=baseline, verification=verification)
    path = out_dir / f"report.{fmt}"
    text = to_html(blocks, title=f"MedHeaven run {run}") if fmt == "html" else to_markdown(blocks)
    path.write_text(text, encoding="utf-8")
    return ReportFiles(report=path, plots=plots, verification=verification)


def _verification(store: Store, records: RunRecords, secret: SecretKeys | None) -> dict[str, Any] | None:
    if records.last_round < 1 or (secret is None and not records.description.plaintext):
        return None
    if (
        secret is not None
        and not records.description.plaintext
        and secret.fingerprint != records.description.fingerprint
    ):
        raise ConfigurationError(
            f"run {records.run!r} was encrypted under key set {records.description.fingerprint[:12]}…, the secret "
            f"context given is {secret.fingerprint[:12]}…: pass the federation's own context.secret"
        )
    try:
        return verify_round(store, secret, records.run, records.last_round)
    except StoreKeyNotFoundError as exc:
        return {"error": f"the folded updates of round {records.last_round} are no longer in the store ({exc})"}


# -- content ----------------------------------------------------------------------------------------------
def report_blocks(
    records: RunRecords, *, baseline: Baseline | None, verification: dict[str, Any] | None
) -> list[Block]:
    blocks: list[Block] = [
        Heading(1, f"MedHeaven run report: {records.run}"),
        Paragraph(
            f"Generated {time.strftime('%Y-%m-%d %H:%M:%S %Z')} from store `{records.location}`. "
            f"{len(records.rounds)} training round(s) committed; the last global model is round "
            f"{records.last_round} (sha256 `{records.global_sha256.get(records.last_round, '')[:16]}…`)."
            + _selection_note(records)
        ),
    ]
    blocks += _configuration(records)
    blocks += _test_section(records, baseline)
    blocks += _curves(records, baseline)
    blocks += _time_section(records)
    blocks += _participation_section(records)
    blocks += _verification_section(records, verification)
    blocks += _bytes_section(records)
    blocks += _privacy_section(records)
    blocks += _dp_section(records)
    return blocks


def _selection_note(records: RunRecords) -> str:
    selected = records.test_round
    if selected is None:
        return ""
    digest = records.global_sha256.get(selected, "")[:16]
    how = (records.test or {}).get("selected_by", "")
    return f" The model scored on the held-out test set is round {selected} (sha256 `{digest}…`)" + (
        f", selected by {how}." if how else "."
    )


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _bytes(count: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(count) < 1024 or unit == "GB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} GB"


def _configuration(records: RunRecords) -> list[Block]:
    config, description = records.config, records.description
    training = config.get("training", {})
    model, params = description.model, description.params
    hidden = ", ".join(str(h) for h in model.hidden) or "none"
    encryption = (
        "**none: INSECURE plaintext comparison mode**"
        if description.plaintext
        else f"CKKS, N={params.poly_modulus_degree}, modulus chain {list(params.coeff_mod_bit_sizes)}, "
        f"scale 2^{params.scale_bits}, error bound {params.error_bound:.1e}"
    )
    rows = [
        ("hospitals", ", ".join(records.hospitals) or "n/a"),
        ("rounds", f"{len(records.rounds)} committed of {config.get('rounds', 'n/a')} configured"),
        ("quorum", f"{config.get('min_hospitals', 'n/a')} hospital(s) per round"),
        ("round timeout", f"{_fmt(config.get('round_timeout'), 0)} s"),
        (
            "local training",
            f"{training.get('epochs', '?')} epoch(s), batch {training.get('batch_size', '?')}, "
            f"{training.get('optimizer', '?')} at learning rate {training.get('learning_rate', '?')}",
        ),
        (
            "model",
            f"{model.kind}, {model.n_features} features, hidden layers [{hidden}], dropout {model.dropout}, "
            f"L2 {model.l2}, {model.parameter_count()} parameters, seed {model.seed}",
        ),
        ("encryption", encryption),
        ("key set fingerprint", f"`{description.fingerprint[:16]}…`"),
        ("held-out test file", f"`{config['test_path']}`" if config.get("test_path") else "none configured"),
    ]
    return [Heading(2, "Run configuration"), Table(("setting", "value"), tuple(rows))]


def _test_section(records: RunRecords, baseline: Baseline | None) -> list[Block]:
    blocks: list[Block] = [Heading(2, "Held-out test metrics")]
    test = records.test
    if test is None:
        blocks.append(
            Paragraph(
                "Not available: the run has no `final-test.json` (no test file was configured, or the run has not "
                "finished). A key holder writes it when the coordinator runs with a test file."
            )
        )
        return blocks
    metrics = test.get("metrics", {})
    names = ("roc_auc", "pr_auc", "brier", "accuracy", "loss", "base_rate")
    header = ("model", "ROC-AUC", "PR-AUC", "Brier", "accuracy", "log loss", "base rate")
    rows = [(f"federated, round {test.get('round')}", *(_fmt(metrics.get(n)) for n in names))]
    if baseline is not None:
        rows.append(("centralised baseline", *(_fmt(baseline.centralised.get(n)) for n in names[:-1]), "n/a"))
        for hospital, scores in baseline.local.items():
            rows.append((f"local-only {hospital}", *(_fmt(scores.get(n)) for n in names[:-1]), "n/a"))
    blocks.append(
        Paragraph(
            f"The global model of round {test.get('round')}, scored by key holder `{test.get('scored_by', '?')}` on "
            "the run's held-out test file (the federation's split keeps its patients out of every hospital's "
            "training data)."
            + (
                f" The round was selected by {test['selected_by']} (validation ROC-AUC "
                f"{_fmt(test.get('validation_roc_auc'))}); the test set played no part in choosing it."
                if test.get("selected_by")
                else ""
            )
        )
    )
    blocks.append(Table(header, tuple(tuple(r) for r in rows)))
    if baseline is not None:
        about = ", ".join(f"{k} {baseline.details[k]}" for k in ("data", "split") if k in baseline.details)
        blocks.append(
            Paragraph(
                f"Baselines from `{baseline.source}`" + (f" ({about})" if about else "") + ". "
                "They compare like for like only if they used the same data, split and test patients as this run."
            )
        )
    return blocks


def _curves(records: RunRecords, baseline: Baseline | None) -> list[Block]:
    reference = (
        " Horizontal lines are the centralised and local-only baselines on the held-out test set."
        if baseline is not None
        else " Pass `--baseline baseline.json` (from `medheaven baseline --json`) to add the baselines."
    )
    rows = tuple(
        (
            str(point.model_round),
            "final validation" if point.final else f"start of round {point.model_round + 1}",
            str(len(point.metrics)),
            _fmt(point.weighted.get("roc_auc")),
            _fmt(point.weighted.get("pr_auc")),
            _fmt(point.weighted.get("loss")),
            "yes" if point.model_round == records.test_round else "",
        )
        for point in records.validation
    )
    return [
        Heading(2, "Learning curves"),
        Paragraph(
            "Each round starts by evaluating the incoming global model on every hospital's own validation split, so "
            "round r reports the model after round r-1 (x axis: that model). Thick black: mean over "
            "hospitals (unweighted: hospitals do not disclose their validation sizes); red star: the selected model on the held-out test set. The last model's point, "
            "when present, is the coordinator's final validation (final-validation.json)." + reference
        ),
        Image(PLOT_FILES["discrimination"], "ROC-AUC and PR-AUC per round"),
        Image(PLOT_FILES["loss"], "Validation loss per round"),
        Table(
            ("model (round)", "evaluated at", "hospitals", "ROC-AUC", "PR-AUC", "log loss", "scored on test"),
            rows,
        ),
    ]


def _time_section(records: RunRecords) -> list[Block]:
    total = sum(row.seconds for row in records.rounds)
    return [
        Heading(2, "Time per round"),
        Paragraph(
            f"{total:.1f} s over {len(records.rounds)} round(s). Bars split each round's wall time along its "
            "critical path: the phases of the last hospital to be folded (fetch and decrypt, evaluate, train, "
            "encrypt and upload, the aggregator's fold); the grey rest is queueing, broker and store round trips, "
            "waiting for stragglers or the deadline, and finalising the round."
            + (
                " Rounds recorded without fold times use the per-phase maximum over hospitals instead."
                if any(not row.phase_source.startswith("critical") for row in records.rounds)
                else ""
            )
        ),
        Image(PLOT_FILES["round_time"], "Time per round by phase"),
    ]


def _participation_section(records: RunRecords) -> list[Block]:
    blocks: list[Block] = [
        Heading(2, "Participation"),
        Paragraph(
            "Folded: the update entered the encrypted sum. Rejected: the aggregator refused the envelope (reason "
            "below). Late: no folded update before the round closed. Failed: the hospital's task failed."
        ),
        Image(PLOT_FILES["participation"], "Participation per hospital and round"),
    ]
    incidents = [
        f"round {row.round}: {hospital} {state}" + (f" ({row.rejected[hospital]})" if hospital in row.rejected else "")
        for row in records.rounds
        for hospital, state in row.states.items()
        if state not in ("folded", "not selected")
    ]
    blocks.append(
        Bullets(tuple(incidents)) if incidents else Paragraph("Every selected hospital was folded in every round.")
    )
    return blocks


def _verification_section(records: RunRecords, verification: dict[str, Any] | None) -> list[Block]:
    blocks: list[Block] = [Heading(2, "Encrypted vs plaintext aggregation")]
    command = (
        f"`medheaven verify --run {records.run} --round {records.last_round} --secret-context keys/context.secret`"
    )
    if verification is None:
        blocks.append(
            Paragraph(
                "Not computed: it decrypts the individual updates, so it needs the federation's secret context. A key "
                f"holder computes it with `medheaven report {records.run} --secret-context keys/context.secret` "
                f"or {command}."
            )
        )
        return blocks
    if "error" in verification:
        blocks.append(
            Paragraph(f"Not computed: {verification['error']} (the aggregator was run without keeping updates).")
        )
        return blocks
    blocks.append(
        Paragraph(
            f"Round {verification['round']}: the homomorphically summed global model against plaintext FedAvg of the "
            f"same {len(verification['hospitals'])} decrypted updates, over {verification['parameters']} parameters."
        )
    )
    rows = (
        ("max absolute error", f"{verification['max_abs_error']:.3e}"),
        ("mean absolute error", f"{verification['mean_abs_error']:.3e}"),
        ("max relative error (|w| > 1e-6)", f"{verification['max_rel_error']:.3e}"),
        ("CKKS error bound of the key set", f"{verification['error_bound']:.3e}"),
        ("within bound", "yes" if verification["within_bound"] else "**NO**"),
        ("total sample count agrees", "yes" if verification["total_samples_match"] else "**NO**"),
    )
    blocks.append(Table(("check", "value"), rows))
    return blocks


def _bytes_section(records: RunRecords) -> list[Block]:
    rows: list[tuple[str, ...]] = []
    downloads = 0
    previous_global = None
    for row in records.rounds:
        fetched = (previous_global or row.global_bytes) * len(row.selected)
        downloads += fetched
        rows.append((f"round {row.round}", _bytes(row.bytes_up), _bytes(row.global_bytes), _bytes(fetched)))
        previous_global = row.global_bytes
    total_up = sum(row.bytes_up for row in records.rounds)
    total_global = sum(row.global_bytes for row in records.rounds)
    if records.stats is not None:
        rows.insert(
            0, ("standardisation statistics", _bytes(records.stats.bytes_up), _bytes(records.stats.result_bytes), "n/a")
        )
        total_up += records.stats.bytes_up
        total_global += records.stats.result_bytes
    rows.append(("**total**", _bytes(total_up), _bytes(total_global), _bytes(downloads)))
    plain = 4 * records.description.model.parameter_count()
    folded_last = sum(1 for s in records.rounds[-1].states.values() if s == "folded") if records.rounds else 0
    per_update = records.rounds[-1].bytes_up / folded_last if folded_last else 0.0
    return [
        Heading(2, "Bytes moved"),
        Paragraph(
            "Uploads are the hospitals' encrypted envelopes; the aggregator writes one encrypted result per round; "
            "downloads estimate each selected hospital fetching the previous global model once. The broker carries "
            "only task messages with references and digests (a few hundred bytes each), never ciphertexts. "
            f"The public context is {_bytes(records.context_bytes)}."
        ),
        Table(("phase", "uploaded (encrypted updates)", "global model written", "global model fetched"), tuple(rows)),
        Paragraph(
            f"One encrypted update is {_bytes(per_update)} against {_bytes(plain)} for the same "
            f"{records.description.model.parameter_count()} weights as float32 plaintext"
            + (f" ({per_update / plain:.1f}x)." if plain and per_update else ".")
        ),
    ]


def _privacy_section(records: RunRecords) -> list[Block]:
    """The threat model, from its one source (``threat_model.md``, also README.md's "Threat model")."""
    blocks: list[Block] = [
        Heading(2, "What each party saw"),
        Paragraph(
            f"This run used scheme `{records.description.scheme.value}`. What each party holds, sees and never "
            "sees, under each scheme (the README's threat model):"
        ),
        threat_model_outline(),
    ]
    if records.description.plaintext:
        blocks.append(
            Paragraph(
                "**This run used the INSECURE plaintext comparison mode: the statements above do not hold; every "
                "party with store access saw every update and every global model in the clear.**"
            )
        )
    return blocks


def _dp_section(records: RunRecords) -> list[Block]:
    """Patient-level DP-SGD: the run's setting and each hospital's spent (ε, δ) behind the reported models."""
    blocks: list[Block] = [Heading(2, "Differential privacy")]
    last = records.privacy()
    if last is None:
        blocks.append(
            Paragraph(
                "This run trained without DP-SGD: the released models carry **no** (ε, δ) bound, and a membership-"
                "inference attack on them is not ruled out (start a run with `--dp-epsilon` for one)."
            )
        )
        return blocks
    selected = records.test_round
    chosen = records.privacy(selected) if selected is not None and selected != records.last_round else None
    header: tuple[str, ...] = ("hospital", f"ε, last model (round {records.last_round})", "δ", "noise multiplier z")
    header += (f"ε, tested model (round {selected})",) if chosen is not None else ()
    rows = []
    for hospital in records.hospitals:
        spend = last.per_hospital.get(hospital)
        row: tuple[str, ...] = (
            hospital,
            _fmt(spend.epsilon, 3) if spend else "0 (never folded)",
            f"{spend.delta:g}" if spend else "n/a",
            _fmt(spend.noise_multiplier, 3) if spend else "n/a",
        )
        if chosen is not None:
            earlier = chosen.per_hospital.get(hospital)
            row += (_fmt(earlier.epsilon, 3) if earlier else "0 (never folded)",)
        rows.append(row)
    metrics = (
        "Their per-round validation metrics were released in the clear and are **not** covered by this bound "
        '(see the README, "Differential privacy").'
        if last.release_metrics
        else "Hospitals withheld their per-round validation metrics (`--no-dp-metrics`)."
    )
    blocks += [
        Paragraph(
            f"Every hospital trained with patient-level DP-SGD: target ε = {last.target_epsilon:g} per patient at "
            f"δ = {last.delta:g}, each patient's gradient clipped to L2 norm C = {last.clip:g}. Each hospital's ε is "
            "the cumulative spend it signed in its last receipt folded into the model (RDP accountant, "
            f"`dp-accounting`); the model's guarantee towards a hospital's patients is that hospital's row. {metrics}"
        ),
        Table(header, tuple(rows)),
    ]
    return blocks

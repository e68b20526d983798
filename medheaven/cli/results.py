"""``medheaven report``, ``medheaven export`` and ``medheaven predict``: what an operator gets out of a run.

Command functions only; ``medheaven.cli`` registers them. Results go to stdout, notes to stderr; MedHeaven
errors print one line and exit 2 (``medheaven --debug ...`` keeps the traceback).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape

from medheaven.cli.support import StoreOption, command, open_store_option, print_json, stderr, stdout
from medheaven.errors import ConfigurationError

if TYPE_CHECKING:
    from medheaven.privacy.spent import ModelPrivacy

JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON object with the paths written.")]
REPORT_FORMATS = ("md", "html")


@command
def report_command(
    run: Annotated[str, typer.Argument(help="Run id.")],
    store: StoreOption = None,
    out: Annotated[
        Path | None, typer.Option("--out", help="Folder for report and plots; default ./<RUN>-report.")
    ] = None,
    baseline: Annotated[
        Path | None,
        typer.Option("--baseline", help="Output of `medheaven baseline --json`: adds reference lines and rows."),
    ] = None,
    secret_context: Annotated[
        Path | None,
        typer.Option("--secret-context", help="Key holders only: adds the HE-vs-plaintext check of the last round."),
    ] = None,
    report_format: Annotated[str, typer.Option("--format", help="md (Markdown) or html.")] = "md",
    json_output: JsonOption = False,
) -> None:
    """Plots (ROC/PR-AUC, loss, time per phase, participation) and a one-page report of a run.

    Reads only the store's public records: history, manifests, final test metrics, model.json.

    With --secret-context (key holders) it also re-aggregates the last round's updates in the clear and compares.

    Example: medheaven report demo --store file://./medheaven-demo/store --baseline baseline.json --out report/
    """
    from medheaven.report import load_baseline, write_report

    if report_format not in REPORT_FORMATS:
        raise ConfigurationError(f"--format must be one of {', '.join(REPORT_FORMATS)}, got {report_format!r}")
    secret = None
    if secret_context is not None:
        from medheaven.export import load_key_holder_context

        secret = load_key_holder_context(secret_context)
    files = write_report(
        open_store_option(store),
        run,
        out or Path(f"{run}-report"),
        baseline=load_baseline(baseline) if baseline is not None else None,
        secret=secret,
        fmt="html" if report_format == "html" else "md",
    )
    if json_output:
        print_json(
            {
                "report": str(files.report),
                "plots": {name: str(path) for name, path in files.plots.items()},
                "verification": files.verification,
            }
        )
        return
    stdout.print(f"report  {escape(str(files.report))}")
    for name, path in files.plots.items():
        stdout.print(f"plot    {escape(str(path))}  ({name})")


@command
def export_command(
    run: Annotated[str, typer.Argument(help="Run id.")],
    secret_context: Annotated[
        Path, typer.Option("--secret-context", help="The federation's context.secret (key holders only).")
    ],
    out: Annotated[Path, typer.Option("--out", help="Model file to write, ending in .keras.")],
    round_number: Annotated[
        int | None,
        typer.Option(
            "--round", min=0, help="Committed round to export; default the round scored on the test set, else the last."
        ),
    ] = None,
    store: StoreOption = None,
    split_schema: Annotated[
        Path | None,
        typer.Option(
            "--split-schema",
            help="schema.json of the run's split (records the target); default: beside the run's test file.",
        ),
    ] = None,
    json_output: JsonOption = False,
) -> None:
    """Decrypt a committed global model into a Keras file plus its preprocessing (key holders only).

    Writes OUT (.keras) and, beside it, OUT's name with .preprocessing.json (layout, standardiser, schema, digests).

    Both files are written owner-only (0600): together they are the plaintext model.

    Example: medheaven export demo --secret-context keys/context.secret --out model.keras
    """
    from medheaven.export import export_model, load_key_holder_context

    secret = load_key_holder_context(secret_context)
    result = export_model(
        open_store_option(store), secret, run, out, round_number=round_number, split_schema=split_schema
    )
    summary = {
        "model": str(result.model_path),
        "preprocessing": str(result.preprocessing_path),
        "run": run,
        "round": result.preprocessing.round,
        "global_sha256": result.preprocessing.global_sha256,
        "model_sha256": result.preprocessing.model_sha256,
        "why_this_round": result.reason,
        "target": result.preprocessing.target,
        "privacy": result.preprocessing.privacy.to_dict() if result.preprocessing.privacy is not None else None,
    }
    if json_output:
        print_json(summary)
        return
    stdout.print(f"model          {escape(str(result.model_path))}  (run {run}, round {result.preprocessing.round})")
    stdout.print(f"round          {escape(result.reason)}")
    stdout.print(f"preprocessing  {escape(str(result.preprocessing_path))}")
    stdout.print(f"score          {escape(result.preprocessing.target)}")
    stdout.print(f"privacy        {escape(_privacy_text(result.preprocessing.privacy))}")
    stderr.print("[yellow]note:[/yellow] both files are the plaintext model; keep them where patient data may be kept")


def _privacy_text(privacy: ModelPrivacy | None) -> str:
    """One line: the (ε, δ) per hospital behind an exported model, or that it has none."""
    if privacy is None:
        return "no differential-privacy bound (the run trained without DP-SGD)"
    spent = ", ".join(f"{h} ε={s.epsilon:.3f}" for h, s in sorted(privacy.per_hospital.items())) or "none trained"
    return f"patient-level DP-SGD, δ={privacy.delta:g}, target ε={privacy.target_epsilon:g}: {spent}"


@command
def predict_command(
    model: Annotated[Path, typer.Option("--model", help="A .keras file from `medheaven export`.")],
    data: Annotated[Path, typer.Option("--data", help="CSV of admissions to score; a label column is optional.")],
    schema: Annotated[
        str,
        typer.Option("--schema", help="prepared (files of `medheaven data split`), diabetes130, johns or generic."),
    ] = "prepared",
    schema_file: Annotated[Path | None, typer.Option("--schema-file", help="Schema file for --schema generic.")] = None,
    out: Annotated[Path | None, typer.Option("--out", help="CSV to write; default stdout.")] = None,
) -> None:
    """Score every row of a CSV with an exported model and the preprocessing the federation trained with.

    Output columns: row (0-based data row of the input), group (patient id, when the file has one), risk: the
    probability of the model's positive class, i.e. that the target column recorded at export (for example
    readmitted, or diagnosis) takes one of its positive values; the meaning is printed to stderr.

    The .preprocessing.json written by `medheaven export` must sit beside the model.

    A label column is optional; when the file has one, ROC-AUC and PR-AUC are printed to stderr.

    Example: medheaven predict --model model.keras --data admissions.csv --schema diabetes130 --out scores.csv
    """
    from medheaven.predict import predict_file

    result = predict_file(model, data, schema_name=schema, schema_file=schema_file)
    if out is None:
        result.scores.to_csv(sys.stdout, index=False)
    else:
        result.scores.to_csv(out, index=False)
    pre = result.preprocessing
    note = f"scored {len(result.scores)} row(s) with run {pre.run} round {pre.round}; risk = {pre.score_meaning}"
    if out is not None:
        note += f" into {out}"
    if result.excluded:
        note += f"; {result.excluded} row(s) removed by the {schema} schema's cleaning (not scored)"
    stderr.print(escape(note), soft_wrap=True)
    stderr.print(escape(f"privacy: {_privacy_text(pre.privacy)}"), soft_wrap=True)
    if result.metrics is not None:
        metrics = result.metrics
        stderr.print(
            f"labels present: ROC-AUC {metrics['roc_auc']:.4f}, PR-AUC {metrics['pr_auc']:.4f}, "
            f"base rate {metrics['base_rate']:.4f}"
        )

"""``medheaven data ...`` and ``medheaven baseline``: thin typer commands over the data library.

Every command catches :class:`MedHeavenError` at its boundary and prints ``error: <message>`` to stderr with
exit status 2: the messages say what to fix, and a traceback would only bury them.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import pandas as pd
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from medheaven.data.encoding import fit_layout
from medheaven.data.loading import get_schema, load_dataset, load_frame, read_raw_csv
from medheaven.data.partition import SCHEME_HELP, describe_partition, parse_scheme, split_dataset, write_split
from medheaven.data.schemas import SCHEMA_NAMES, Schema
from medheaven.data.synthetic import generate_synthetic
from medheaven.errors import ConfigurationError, MedHeavenError

data_app = typer.Typer(
    help="Prepare data sets: clean, fix the shared feature layout and split into simulated hospitals.",
    no_args_is_help=True,
)

_stdout = Console()
_stderr = Console(stderr=True)

DataOption = Annotated[
    Path | None,
    typer.Option("--data", help="CSV or CSV.GZ file; without it, synthetic diabetes130-like data is generated."),
]
SchemaOption = Annotated[str, typer.Option("--schema", help=f"One of {', '.join(SCHEMA_NAMES)}.")]
SchemaFileOption = Annotated[
    Path | None, typer.Option("--schema-file", help="JSON or YAML schema (needed by --schema generic).")
]
TargetOption = Annotated[
    str, typer.Option("--target", help="diabetes130 only: 30d (<30 vs rest) or any (<30 or >30 vs NO).")
]
HospitalsOption = Annotated[int, typer.Option("--hospitals", min=1, help="Number of simulated hospitals.")]
TestFractionOption = Annotated[float, typer.Option("--test-fraction", help="Share of patients held out for test.")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON object instead of a table.")]


@contextmanager
def reported_errors() -> Iterator[None]:
    try:
        yield
    except MedHeavenError as exc:
        _stderr.print(f"[red]error: {escape(str(exc))}[/red]", soft_wrap=True)
        raise typer.Exit(2) from None


def load_input(
    data: Path | None, schema: Schema, *, seed: int, scheme: str
) -> tuple[pd.DataFrame, pd.DataFrame | None, str]:
    """The cleaned frame, the raw frame when a column:NAME scheme needs a dropped column, and a source label."""
    if data is None:
        if schema.name != "diabetes130":
            raise ConfigurationError(f"schema {schema.name!r} needs --data: synthetic data is diabetes130-shaped")
        raw = generate_synthetic(seed=seed)
        source = f"synthetic(seed={seed})"
        return load_frame(raw, schema, source=source), raw, source
    frame = load_dataset(data, schema)
    kind, column = parse_scheme(scheme)
    needs_raw = kind == "column" and column not in frame.columns
    return frame, read_raw_csv(data) if needs_raw else None, str(data)


@data_app.command("split")
def split_command(
    out: Annotated[Path, typer.Option("--out", help="Directory for h1.csv..hK.csv, test.csv and the JSON files.")],
    data: DataOption = None,
    schema_name: SchemaOption = "diabetes130",
    schema_file: SchemaFileOption = None,
    target: TargetOption = "30d",
    hospitals: HospitalsOption = 5,
    scheme: Annotated[str, typer.Option("--scheme", help=SCHEME_HELP)] = "iid",
    test_fraction: TestFractionOption = 0.2,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the test split and the partition.")] = 0,
    min_level_count: Annotated[int, typer.Option("--min-level-count", min=1)] = 10,
    as_json: JsonOption = False,
) -> None:
    """Split a data set into a patient-level test set and K hospitals, with the shared feature layout."""
    with reported_errors():
        schema = get_schema(schema_name, schema_file=schema_file, target=target)
        frame, raw, source = load_input(data, schema, seed=seed, scheme=scheme)
        parts, test = split_dataset(
            frame, hospitals=hospitals, scheme=scheme, test_fraction=test_fraction, seed=seed, raw_frame=raw
        )
        layout = fit_layout(frame, schema, min_level_count=min_level_count)
        meta = {
            "data": source,
            "schema": schema.name,
            "target": target if schema.name == "diabetes130" else schema.target,
            "scheme": scheme,
            "seed": seed,
            "test_fraction": test_fraction,
            "n_hospitals": hospitals,
            "min_level_count": min_level_count,
        }
        split_path = write_split(out, parts, test, layout, schema, meta=meta)
        summary = {name: describe_partition(part) for name, part in [*parts.items(), ("test", test)]}
        if as_json:
            typer.echo(json.dumps({"out": str(out), "split": str(split_path), "n_features": layout.n_features,
                                   "partitions": summary}))  # fmt: skip
            return
        _stdout.print(_partition_table(summary, title=f"{source} -> {out} ({layout.n_features} features)"))


@data_app.command("schema")
def schema_command(
    source: Annotated[Path, typer.Option("--from", help="A CSV (or CSV.GZ) of the data set to describe.")],
    out: Annotated[Path, typer.Option("--out", help="Schema file to write (YAML).")],
    target: Annotated[str | None, typer.Option("--target", help="The target column; default: guessed.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing --out file.")] = False,
) -> None:
    """Write a starter schema from a CSV's header and values, for a person to check and edit (docs/schema.md).

    Example: medheaven data schema --from riverside.csv --out schema.yaml --target diagnosis
    """
    from medheaven.data.starter import write_starter_schema

    with reported_errors():
        write_starter_schema(source, out, target=target, force=force)
        _stderr.print(f"wrote {escape(str(out))}: check the guessed target, positive values and column kinds")


def _partition_table(summary: dict[str, dict[str, Any]], *, title: str) -> Table:
    table = Table(title=escape(title), title_justify="left")
    for heading in ("partition", "rows", "patients", "positives", "positive rate"):
        table.add_column(heading, justify="left" if heading == "partition" else "right")
    for name, row in summary.items():
        table.add_row(
            name, str(row["rows"]), str(row["patients"]), str(row["positives"]), f"{row['positive_rate']:.3f}"
        )
    return table


def baseline_command(
    data: DataOption = None,
    schema_name: SchemaOption = "diabetes130",
    schema_file: SchemaFileOption = None,
    target: TargetOption = "30d",
    hospitals: HospitalsOption = 5,
    scheme: Annotated[
        str | None, typer.Option("--scheme", help=f"{SCHEME_HELP}; default column:admission_source_id or iid.")
    ] = None,
    split_seed: Annotated[int, typer.Option("--split-seed", help="Seed of the test split and partition.")] = 42,
    test_fraction: TestFractionOption = 0.2,
    epochs: Annotated[int, typer.Option("--epochs", min=1, help="Maximum epochs (early stopping).")] = 40,
    seed: Annotated[int, typer.Option("--seed", help="Seed of model initialisation and training.")] = 0,
    as_json: JsonOption = False,
) -> None:
    """Centralised (pooled) and local-only Keras MLPs on one held-out test set: the federation's bounds."""
    from medheaven.baseline import run_baseline

    with reported_errors():
        schema = get_schema(schema_name, schema_file=schema_file, target=target)
        chosen = scheme or ("column:admission_source_id" if schema.name == "diabetes130" else "iid")
        frame, raw, source = load_input(data, schema, seed=split_seed, scheme=chosen)
        result = run_baseline(
            frame,
            schema,
            split_seed=split_seed,
            test_fraction=test_fraction,
            hospitals=hospitals,
            scheme=chosen,
            epochs=epochs,
            seed=seed,
            raw_frame=raw,
        )
        result["data"] = source
        if as_json:
            typer.echo(json.dumps(result))
            return
        _stdout.print(_baseline_table(result))
        for note in result["notes"]:
            _stdout.print(f"[yellow]note:[/yellow] {escape(note)}")


def _baseline_table(result: dict[str, Any]) -> Table:
    test = result["test"]
    table = Table(
        title=escape(
            f"{result['data']}: {test['rows']} test rows ({test['patients']} patients), base rate "
            f"{test['base_rate']:.3f}, accuracy of always-no {1 - test['base_rate']:.3f}"
        ),
        title_justify="left",
    )
    for heading in ("model", "train rows", "ROC-AUC", "PR-AUC", "Brier", "accuracy"):
        table.add_column(heading, justify="left" if heading == "model" else "right")
    rows = [("centralised", result["centralised"])] + [(f"local {h}", s) for h, s in result["local"].items()]
    for name, scores in rows:
        table.add_row(
            name,
            str(scores["train_rows"]),
            _fmt(scores["roc_auc"]),
            _fmt(scores["pr_auc"]),
            _fmt(scores["brier"]),
            _fmt(scores["accuracy"]),
        )
    table.add_row("mean of local", "", _fmt(result["local_mean_roc_auc"]), "", "", "")
    return table


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"

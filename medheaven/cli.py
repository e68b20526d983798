"""The ``medheaven`` command: key ceremony, data preparation, the embedded demo, verification and the store.

Every command has ``--help`` with an example. Errors print one line (``error: ...``) and exit 2; ``--debug``
shows tracebacks and debug logs. Results go to stdout, logs and progress to stderr.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from medheaven.cli_doctor import doctor_command
from medheaven.cli_results import export_command, predict_command, report_command
from medheaven.cli_support import command, print_json, set_debug, stdout
from medheaven.data.cli import baseline_command, data_app

app = typer.Typer(
    help="MedHeaven: federated readmission models trained across hospitals with CKKS-encrypted FedAvg.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
keys_app = typer.Typer(help="Create and inspect the federation's CKKS key material.", no_args_is_help=True)
hospital_app = typer.Typer(help="Hospital identities (Ed25519) and the registry.", no_args_is_help=True)
federation_app = typer.Typer(help="Publish federation-wide public material to the store.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
app.add_typer(hospital_app, name="hospital")
app.add_typer(federation_app, name="federation")
app.add_typer(data_app, name="data")
app.command("baseline", help="Centralised and local-only baselines on a held-out test set.")(baseline_command)
app.command("report")(report_command)
app.command("doctor", help="Check this node's configuration before it joins the federation.")(doctor_command)
app.command("export")(export_command)
app.command("predict")(predict_command)


@app.callback()
def main_options(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks and debug logs.")] = False,
) -> None:
    set_debug(debug)


def _store(store_url: str | None):  # type: ignore[no-untyped-def]
    from medheaven.settings import Settings
    from medheaven.store import open_store

    settings = Settings() if store_url is None else Settings(store=store_url)
    return open_store(settings.store, settings=settings)


StoreOption = Annotated[
    str | None, typer.Option("--store", help="file:///path or drive://<folder-id>; default MEDHEAVEN_STORE.")
]


# -- keys -------------------------------------------------------------------------------------------------
@keys_app.command("init")
@command
def keys_init(
    out: Annotated[Path, typer.Option("--out", help="Folder for context.secret (0600) and context.public.")],
    max_abs_weight: Annotated[float, typer.Option(help="Bound on |weight| every hospital enforces.")] = 8.0,
    max_total_samples: Annotated[int, typer.Option(help="Bound on the summed sample count of a round.")] = 1_000_000,
    precision: Annotated[float, typer.Option(help="Max absolute error of an averaged weight.")] = 1e-6,
    encryption: Annotated[
        str,
        typer.Option(
            help="symmetric: hospitals encrypt with the shared secret key (about 2x faster, and the aggregator's "
            "context holds no key at all); public-key: with a public key that the public context carries."
        ),
    ] = "symmetric",
    force: Annotated[bool, typer.Option("--force", help="Replace existing key files.")] = False,
    json_output: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Create the federation's CKKS key set (run once, by one key holder).

    Example: medheaven keys init --out keys/
    """
    from medheaven.crypto.planning import plan_ckks_parameters
    from medheaven.federated.setup import init_keys

    params = plan_ckks_parameters(
        max_abs_weight=max_abs_weight, max_total_samples=max_total_samples, precision=precision
    )
    files = init_keys(out, params, force=force, encryption=encryption)
    result = {
        "secret_context": str(files.secret),
        "public_context": str(files.public),
        "encryption": encryption,
        "fingerprint": files.fingerprint,
        "ckks": params.to_dict(),
    }
    if json_output:
        print_json(result)
        return
    stdout.print(f"secret context  {files.secret}  (mode 0600: hand it to hospitals out of band, never to the store)")
    stdout.print(f"public context  {files.public}  (publish with `medheaven federation publish`)")
    stdout.print(f"fingerprint     {files.fingerprint}")
    stdout.print(f"encryption      {encryption}")
    stdout.print(
        f"CKKS            N={params.poly_modulus_degree} chain={list(params.coeff_mod_bit_sizes)} "
        f"scale=2^{params.scale_bits} error bound {params.error_bound:.2e}"
    )


@keys_app.command("show")
@command
def keys_show(
    path: Annotated[Path, typer.Argument(help="A context.secret or context.public file.")],
    json_output: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Print parameters, fingerprint, sizes and whether a file holds a secret key.

    Example: medheaven keys show keys/context.public --json
    """
    from medheaven.crypto.context import describe_context_file
    from medheaven.errors import ConfigurationError

    if not path.is_file():
        raise ConfigurationError(f"{path} does not exist")
    info = describe_context_file(path)
    if json_output:
        print_json(info)
        return
    for key, value in info.items():
        stdout.print(f"{key:20} {value}")


# -- hospitals --------------------------------------------------------------------------------------------
@hospital_app.command("init")
@command
def hospital_init(
    hospital_id: Annotated[str, typer.Option("--id", help="Hospital id (becomes queue hospital.<id>).")],
    out: Annotated[Path, typer.Option("--out", help="Folder for <id>.signing.pem (0600) and <id>.verify.hex.")],
    force: Annotated[bool, typer.Option("--force")] = False,
) -> None:
    """Create a hospital's Ed25519 signing key and its public verification key.

    Example: medheaven hospital init --id stmarys --out keys/
    """
    from medheaven.crypto.signing import create_hospital_identity

    signing, verify = create_hospital_identity(hospital_id, out, force=force)
    stdout.print(f"signing key       {signing}  (mode 0600, stays on this hospital's machines)")
    stdout.print(f"verification key  {verify}  (send it to the operator for `medheaven hospital register`)")


@hospital_app.command("register")
@command
def hospital_register(
    hospital_id: Annotated[str, typer.Option("--id")],
    verify_key: Annotated[Path, typer.Option("--verify-key", help="The hospital's <id>.verify.hex file.")],
    store: StoreOption = None,
) -> None:
    """Add (or replace) a hospital's verification key in the store's hospitals.json.

    Example: medheaven hospital register --id stmarys --verify-key stmarys.verify.hex --store file:///srv/fed
    """
    from medheaven.federated.setup import register_hospital

    registry = register_hospital(_store(store), hospital_id, verify_key.read_text())
    stdout.print(f"registered {hospital_id}; registry now holds {', '.join(sorted(registry.keys))}")


@hospital_app.command("remove")
@command
def hospital_remove(hospital_id: Annotated[str, typer.Option("--id")], store: StoreOption = None) -> None:
    """Remove a hospital from the registry (between runs); its future updates are rejected.

    Example: medheaven hospital remove --id stmarys
    """
    from medheaven.federated.setup import unregister_hospital

    registry = unregister_hospital(_store(store), hospital_id)
    stdout.print(f"removed {hospital_id}; registry now holds {', '.join(sorted(registry.keys)) or 'nobody'}")


@federation_app.command("publish")
@command
def federation_publish(
    public_context: Annotated[Path, typer.Option("--public-context", help="keys/context.public")],
    store: StoreOption = None,
) -> None:
    """Put the public CKKS context in the store (refuses a secret context, and a different existing key set).

    Example: medheaven federation publish --public-context keys/context.public --store drive://1AbC...
    """
    from medheaven.crypto.context import load_public_context
    from medheaven.federated.setup import publish_public_context

    context = load_public_context(public_context)
    publish_public_context(_store(store), context)
    stdout.print(f"published public context {context.fingerprint}")


# -- demo and verification --------------------------------------------------------------------------------
@app.command("demo")
@command
def demo(
    data: Annotated[Path | None, typer.Option("--data", help="Data file; default: synthetic diabetes130.")] = None,
    schema: Annotated[str, typer.Option("--schema")] = "diabetes130",
    schema_file: Annotated[Path | None, typer.Option("--schema-file")] = None,
    hospitals: Annotated[int, typer.Option("--hospitals", min=1)] = 3,
    rounds: Annotated[int, typer.Option("--rounds", min=1)] = 5,
    scheme: Annotated[str, typer.Option("--scheme", help="iid | dirichlet:ALPHA | column:NAME")] = "iid",
    epochs: Annotated[int, typer.Option("--local-epochs", min=1)] = 1,
    # batch 256 with FedAvgM (momentum 0.5): the best mean validation ROC-AUC of the grid in BENCHMARKS.md ("Recipe")
    batch_size: Annotated[int, typer.Option("--batch-size", min=1)] = 256,
    learning_rate: Annotated[float, typer.Option("--learning-rate")] = 1e-3,
    lr_decay: Annotated[float, typer.Option("--lr-decay", help="Round r trains at rate * decay^(r-1).")] = 1.0,
    server_optimiser: Annotated[
        str, typer.Option("--server-optimiser", help="Server step the hospitals apply: fedavg | fedavgm | fedadam.")
    ] = "fedavgm",
    server_lr: Annotated[
        float | None, typer.Option("--server-lr", help="Server learning rate (default: 1 fedavgm, 0.01 fedadam).")
    ] = None,
    server_momentum: Annotated[
        float | None, typer.Option("--server-momentum", help="FedAvgM momentum (default 0.5) / FedAdam beta_1 (0.9).")
    ] = None,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    rows: Annotated[int, typer.Option("--synthetic-rows", help="Size of the synthetic data set.")] = 20000,
    out: Annotated[Path, typer.Option("--out", help="Working folder (data, keys, store).")] = Path("medheaven-demo"),
    plaintext: Annotated[
        bool, typer.Option("--plaintext-insecure", help="INSECURE comparison mode: no encryption.")
    ] = False,
    json_output: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Run a whole encrypted federation on this machine: split data, key ceremony, rounds, test, verification.

    With no services configured it runs in one process (Celery memory:// transport, worker threads). With
    MEDHEAVEN_BROKER_URL=redis://... it starts real worker processes over Redis instead.

    Example: medheaven demo --hospitals 3 --rounds 5
    """
    from coordinator.demo import run_demo
    from medheaven.federated.server_optimiser import ServerOptimiser

    report = run_demo(
        out=out,
        data=data,
        schema=schema,
        schema_file=schema_file,
        hospitals=hospitals,
        rounds=rounds,
        scheme=scheme,
        epochs=epochs,
        batch_size=batch_size,
        learning_rate=learning_rate,
        lr_decay=lr_decay,
        server=ServerOptimiser.parse(server_optimiser, learning_rate=server_lr, momentum=server_momentum),
        seed=seed,
        synthetic_rows=rows,
        plaintext=plaintext,
        quiet=json_output,
    )
    if json_output:
        print_json(report)


@app.command("verify")
@command
def verify(
    run: Annotated[str, typer.Option("--run")],
    round_number: Annotated[int, typer.Option("--round")],
    secret_context: Annotated[Path, typer.Option("--secret-context", help="Key holders only.")],
    store: StoreOption = None,
) -> None:
    """Aggregate a committed round's updates in the clear and compare with the encrypted result.

    Example: medheaven verify --run demo --round 3 --secret-context keys/context.secret
    """
    from medheaven.crypto.context import load_secret_context
    from medheaven.federated.verify import verify_round

    print_json(verify_round(_store(store), load_secret_context(secret_context), run, round_number))


def main() -> None:
    app()


# -- store ------------------------------------------------------------------------------------------------
store_app = typer.Typer(help="Inspect the global server (store): runs, rounds, files, integrity.", no_args_is_help=True)
app.add_typer(store_app, name="store")


@store_app.command("ls")
@command
def store_ls(
    run: Annotated[str | None, typer.Argument(help="A run id; without it, list the runs.")] = None,
    store: StoreOption = None,
    json_output: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """List the runs in the store, or one run's committed rounds and files.

    Example: medheaven store ls demo --store file://./medheaven-demo/store
    """
    from medheaven.store.audit import committed_rounds, list_runs

    target = _store(store)
    if run is None:
        runs = list_runs(target)
        if json_output:
            print_json({"runs": runs})
        else:
            for name in runs:
                stdout.print(name)
        return
    files = [(key, len(target.get(key))) for key in target.list(run)]
    rounds = committed_rounds(target, run)
    if json_output:
        print_json({"run": run, "committed_rounds": rounds, "files": [{"key": k, "bytes": n} for k, n in files]})
        return
    stdout.print(f"run {run}: committed rounds {rounds}")
    for key, size in files:
        stdout.print(f"{size:>12}  {key}")


@store_app.command("get")
@command
def store_get(
    key: Annotated[str, typer.Argument(help="Store key, e.g. demo/rounds/3/manifest.json")],
    out: Annotated[Path, typer.Option("--out", help="Where to write the bytes.")],
    store: StoreOption = None,
) -> None:
    """Download one file from the store.

    Example: medheaven store get demo/rounds/3/global.ckks --out global.ckks
    """
    data = _store(store).get(key)
    out.write_bytes(data)
    stdout.print(f"wrote {len(data)} bytes to {out}")


@store_app.command("check")
@command
def store_check(
    run: Annotated[str, typer.Argument(help="Run id to check.")],
    store: StoreOption = None,
    json_output: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Check that every committed round's files exist and match the manifest digests (exit 1 on any failure).

    Example: medheaven store check demo
    """
    from medheaven.store.audit import check_run

    checks = check_run(_store(store), run)
    if json_output:
        print_json({"run": run, "ok": all(c.ok for c in checks), "checks": [c.to_dict() for c in checks]})
    else:
        for check in checks:
            mark = "[green]ok[/green]  " if check.ok else "[red]FAIL[/red]"
            stdout.print(f"{mark} {check.name}: {check.detail}")
    if not all(c.ok for c in checks):
        raise typer.Exit(1)

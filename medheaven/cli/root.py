"""The ``medheaven`` command: key ceremony, data preparation, verification and the store.

Commands that need the application side (``demo``, from ``coordinator/``) are plugins declared in the
``medheaven.commands`` entry-point group and loaded on demand (``medheaven.cli.plugins``).

Every command has ``--help`` with an example. Errors print one line (``error: ...``) and exit 2; ``--debug``
shows tracebacks and debug logs. Results go to stdout, logs and progress to stderr.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from medheaven.cli.data import baseline_command, data_app
from medheaven.cli.doctor import doctor_command
from medheaven.cli.plugins import PluginGroup
from medheaven.cli.results import export_command, predict_command, report_command
from medheaven.cli.support import StoreOption, command, open_store_option, print_json, set_debug, stdout

app = typer.Typer(
    help="MedHeaven: federated readmission models trained across hospitals with CKKS-encrypted FedAvg.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    cls=PluginGroup,
)
keys_app = typer.Typer(
    help="Create and inspect the federation's key material (bfv-masked default, or ckks).", no_args_is_help=True
)
hospital_app = typer.Typer(
    help="Hospital identities (Ed25519 signing and X25519 agreement keys) and the registry.", no_args_is_help=True
)
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


_store = open_store_option


# -- keys -------------------------------------------------------------------------------------------------
@keys_app.command("init")
@command
def keys_init(
    out: Annotated[Path, typer.Option("--out", help="Folder for context.secret (0600) and context.public.")],
    max_abs_weight: Annotated[float, typer.Option(help="Bound on |weight| every hospital enforces.")] = 8.0,
    max_total_samples: Annotated[int, typer.Option(help="Bound on the summed sample count of a round.")] = 1_000_000,
    precision: Annotated[float, typer.Option(help="Max absolute error of an averaged weight.")] = 1e-6,
    scheme: Annotated[
        str,
        typer.Option(
            help="bfv-masked (default): exact, pairwise-masked seeded BFV, 8.05 B/parameter uploads, other key "
            "holders cannot read one hospital's update; ckks: the older approximate, unmasked scheme (32.2 B/param)."
        ),
    ] = "bfv-masked",
    max_hospitals: Annotated[int, typer.Option(help="bfv-masked: most hospitals one round can sum.")] = 100,
    encryption: Annotated[
        str | None,
        typer.Option(
            help="ckks only. symmetric (default): hospitals encrypt with the shared secret key (about 2x faster, "
            "and the aggregator's context holds no key at all); public-key: with a public key that the public "
            "context carries."
        ),
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace existing key files.")] = False,
    json_output: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Create the federation's key set (run once, by one key holder).

    Example: medheaven keys init --out keys/
    """
    from medheaven.crypto.bfv_planning import BfvParameters, plan_bfv_parameters
    from medheaven.crypto.codec import Scheme
    from medheaven.crypto.planning import CkksParameters, plan_ckks_parameters
    from medheaven.errors import ConfigurationError
    from medheaven.federated.setup import init_keys

    if scheme not in (Scheme.BFV_MASKED, Scheme.CKKS):
        raise ConfigurationError(f"--scheme {scheme!r} is unknown; use bfv-masked (the default) or ckks")
    params: CkksParameters | BfvParameters
    if scheme == Scheme.BFV_MASKED:
        if encryption not in (None, "symmetric"):
            raise ConfigurationError("--encryption applies to --scheme ckks only; bfv-masked is always symmetric")
        params = plan_bfv_parameters(
            max_abs_weight=max_abs_weight,
            max_total_samples=max_total_samples,
            max_hospitals=max_hospitals,
            precision=precision,
        )
    else:
        params = plan_ckks_parameters(
            max_abs_weight=max_abs_weight, max_total_samples=max_total_samples, precision=precision
        )
    files = init_keys(out, params, force=force, encryption=encryption)
    result = {
        "secret_context": str(files.secret),
        "public_context": str(files.public),
        "scheme": scheme,
        "encryption": encryption or "symmetric",
        "fingerprint": files.fingerprint,
        scheme: params.to_dict(),
    }
    if json_output:
        print_json(result)
        return
    stdout.print(f"secret context  {files.secret}  (mode 0600: hand it to hospitals out of band, never to the store)")
    stdout.print(f"public context  {files.public}  (publish with `medheaven federation publish`)")
    stdout.print(f"fingerprint     {files.fingerprint}")
    stdout.print(f"scheme          {scheme}")
    if isinstance(params, BfvParameters):
        stdout.print(
            f"BFV             N={params.poly_modulus_degree} q={list(params.coeff_mod_bit_sizes)} bits "
            f"t=2^{params.plain_modulus_bits} step=2^-{params.scale_bits} up to {params.max_hospitals} hospitals, "
            f"error bound {params.error_bound:.2e}"
        )
        return
    stdout.print(f"encryption      {encryption or 'symmetric'}")
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
    from medheaven.crypto.codec import describe_key_file
    from medheaven.errors import ConfigurationError

    if not path.is_file():
        raise ConfigurationError(f"{path} does not exist")
    info = describe_key_file(path)
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
    out: Annotated[
        Path,
        typer.Option(
            "--out", help="Folder for <id>.signing.pem and <id>.agreement.pem (0600) and their public halves."
        ),
    ],
    force: Annotated[bool, typer.Option("--force", help="Replace both keys of an existing identity.")] = False,
) -> None:
    """Create a hospital's Ed25519 signing key and X25519 agreement key, with their public halves.

    A hospital that already has a signing key (made before pairwise masking) keeps it: only the missing agreement
    key is created; register both public halves again.

    Example: medheaven hospital init --id stmarys --out keys/
    """
    from medheaven.crypto.masks import agreement_key_paths, create_agreement_key
    from medheaven.crypto.signing import create_hospital_identity, validate_hospital_id
    from medheaven.errors import ConfigurationError

    signing = out / f"{validate_hospital_id(hospital_id)}.signing.pem"
    if force or not signing.exists():
        signing, verify = create_hospital_identity(hospital_id, out, force=force)
        stdout.print(f"signing key       {signing}  (mode 0600, stays on this hospital's machines)")
    else:
        verify = out / f"{hospital_id}.verify.hex"
        stdout.print(f"signing key       {signing}  (exists, kept)")
    agreement, agreement_public = agreement_key_paths(hospital_id, out)
    if force or not agreement.exists():
        agreement, agreement_public = create_agreement_key(hospital_id, out, force=force)
        stdout.print(f"agreement key     {agreement}  (mode 0600, stays on this hospital's machines)")
    else:
        raise ConfigurationError(f"{signing} and {agreement} exist; pass --force to replace this hospital's identity")
    stdout.print(
        f"public halves     {verify} {agreement_public}  (send both to the operator for `medheaven hospital register`)"
    )


@hospital_app.command("register")
@command
def hospital_register(
    hospital_id: Annotated[str, typer.Option("--id")],
    verify_key: Annotated[Path, typer.Option("--verify-key", help="The hospital's <id>.verify.hex file.")],
    agreement_key: Annotated[
        Path | None,
        typer.Option(
            "--agreement-key",
            help="The hospital's <id>.agreement.hex file (default: beside --verify-key, if it exists).",
        ),
    ] = None,
    store: StoreOption = None,
) -> None:
    """Add (or replace) a hospital's verification and agreement keys in the store's hospitals.json.

    Without an agreement key the hospital can take part in runs of the older `ckks` scheme only.

    Example: medheaven hospital register --id stmarys --verify-key stmarys.verify.hex --store file:///srv/fed
    """
    from medheaven.federated.setup import register_hospital

    if agreement_key is None:
        beside = verify_key.with_name(f"{hospital_id}.agreement.hex")
        agreement_key = beside if beside.is_file() else None
    agreement_hex = agreement_key.read_text() if agreement_key is not None else None
    registry = register_hospital(_store(store), hospital_id, verify_key.read_text(), agreement_hex)
    masked = "with its agreement key" if agreement_hex else "WITHOUT an agreement key (ckks runs only)"
    stdout.print(f"registered {hospital_id} {masked}; registry now holds {', '.join(sorted(registry.keys))}")


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
    from medheaven.crypto.codec import load_public_keys
    from medheaven.federated.setup import publish_public_context

    context = load_public_keys(public_context)
    publish_public_context(_store(store), context)
    stdout.print(f"published public context {context.fingerprint}")


# -- verification -------------------------------------------------------------------------------------------
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
    from medheaven.crypto.codec import load_secret_keys
    from medheaven.federated.verify import verify_round

    print_json(verify_round(_store(store), load_secret_keys(secret_context), run, round_number))


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

"""``medheaven-coordinator``: submit a run, watch it, resume it.

    medheaven-coordinator run --run-id r1 --rounds 10 --hospitals a,b,c --layout data/layout.json
    medheaven-coordinator status --run-id r1
    medheaven-coordinator resume --run-id r1

Configuration (broker, store) comes from MEDHEAVEN_* settings; the run's own choices are stored in the run's
``run.json`` so that ``resume`` needs nothing but the run id.
"""

from __future__ import annotations

import dataclasses
import logging
import signal
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from coordinator import options
from coordinator.loop import Coordinator, require_run_config
from coordinator.progress import ProgressObserver, history_privacy
from coordinator.run import RunConfig, create_run
from coordinator.transport import CeleryTransport
from medheaven.cli.support import command, print_json, set_debug, stderr, stdout
from medheaven.errors import BrokerUnreachableError, QuorumNotReachedError
from medheaven.federated.server_optimiser import ServerOptimiser
from medheaven.model import ModelSpec
from medheaven.privacy.config import DpConfig
from medheaven.settings import Settings
from medheaven.store.base import Store

if TYPE_CHECKING:
    from coordinator.queues import QueueDepth

#: ``--run-id`` of every command: the run's name in the store, all ``resume`` and ``status`` need to find it
RunIdOption = Annotated[str, typer.Option("--run-id")]

app = typer.Typer(
    help="Coordinate MedHeaven federated rounds over Celery/Redis.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


@app.callback()
def main_options(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks and debug logs.")] = False,
) -> None:
    set_debug(debug)
    if not debug:
        logging.getLogger("coordinator").setLevel(logging.INFO)


def _open_store(settings: Settings) -> Store:
    from medheaven.store import open_store

    return open_store(settings.store, settings=settings)


def _drive(store: Store, config: RunConfig, settings: Settings, *, quiet: bool, json_output: bool) -> None:
    """Drive a run to its end with live progress; the broker is reached only here."""
    from workers.app import create_app

    transport = CeleryTransport(create_app(settings, hospitals=list(config.hospitals)))
    observer = ProgressObserver(quiet=quiet or json_output, rounds=config.rounds)
    coordinator = Coordinator(store, transport, config, poll_interval=settings.poll_interval, observer=observer)
    # SIGTERM behaves like Ctrl-C: stop waiting, leave the last committed round intact
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        history = coordinator.run()
    except QuorumNotReachedError as exc:
        if json_output:  # the JSON consumer gets the reasons too, not only the red line on stderr
            print_json({"run": coordinator.config.run, "status": "failed", "error": str(exc),
                        "history": coordinator.history(), "failed_attempts": coordinator.failed_attempts()})  # fmt: skip
        raise
    except KeyboardInterrupt:
        last = coordinator.last_committed_round()
        stderr.print(
            f"[yellow]stopped; round {last} is the last committed round. Continue with "
            f"`medheaven-coordinator resume --run-id {coordinator.config.run}`[/yellow]"
        )
        raise typer.Exit(130) from None
    except BrokerUnreachableError as exc:
        stderr.print(f"[red]{exc} with `medheaven-coordinator resume --run-id {coordinator.config.run}`[/red]")
        raise typer.Exit(1) from None
    failed = coordinator.failed_attempts()
    if json_output:
        print_json({"run": coordinator.config.run, "status": "completed", "history": history,
                    "layout": store.get_json(coordinator.paths.model)["layout"],
                    "failed_attempts": failed, "test": _test(coordinator)})  # fmt: skip
    else:
        privacy = history_privacy(history, coordinator.config.training.dp)
        ProgressObserver.print_summary(stdout, history, _test(coordinator), failed, privacy=privacy)


def _layout_phase(store: Store, config: RunConfig, settings: Settings, k: int, total: int | None, quiet: bool) -> Any:
    from coordinator.layout import build_layout
    from workers.app import create_app

    transport = CeleryTransport(create_app(settings, hospitals=list(config.hospitals)))
    observer = ProgressObserver(quiet=quiet, rounds=1)
    return build_layout(
        store, transport, config, min_patients=k, threshold=total, observer=observer,
        poll_interval=settings.poll_interval,
    )  # fmt: skip


def _test(coordinator: Coordinator) -> dict[str, Any] | None:
    key = coordinator.paths.test_scores()
    return dict(coordinator.store.get_json(key)) if coordinator.store.exists(key) else None


@app.command("run")
@command
@options.DP_OPTIONS
@options.SERVER_OPTIONS
@options.RECIPE_OPTIONS
def run(
    run_id: RunIdOption,
    hospitals: Annotated[str, typer.Option("--hospitals", help="Comma-separated hospital ids.")],
    layout: Annotated[
        Path | None,
        typer.Option("--layout", help="Shared feature layout (layout.json); default: built by the layout phase."),
    ] = None,
    rounds: Annotated[int, typer.Option("--rounds", min=1)] = 10,
    min_hospitals: Annotated[int | None, typer.Option("--min-hospitals", help="Quorum; default: all.")] = None,
    round_timeout: Annotated[float | None, typer.Option("--round-timeout", help="Seconds per round.")] = None,
    hidden: Annotated[str, typer.Option("--hidden", help="MLP widths, e.g. 64,32; empty for logistic.")] = "64,32",
    dropout: Annotated[float, typer.Option("--dropout")] = ModelSpec.dropout,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    evaluator: Annotated[str | None, typer.Option("--evaluator", help="Key holder for round 0 and test.")] = None,
    test_data: Annotated[str | None, typer.Option("--test-data", help="Held-out file (simulations).")] = None,
    plaintext: Annotated[bool, typer.Option("--plaintext-insecure", help="INSECURE: no encryption.")] = False,
    max_abs_feature: Annotated[
        float | None,
        typer.Option(
            "--max-abs-feature",
            help="Largest feature magnitude any hospital may hold (sizes the encrypted statistics); "
            "default MEDHEAVEN_MAX_ABS_FEATURE (1000).",
        ),
    ] = None,
    level_min_patients: Annotated[
        int,
        typer.Option(
            "--level-min-patients", min=1, help="Layout phase: k, patients a hospital needs to propose a level."
        ),
    ] = 10,
    level_min_total: Annotated[
        int | None,
        typer.Option("--level-min-total", min=1, help="Layout phase: patients in all a level needs; default k."),
    ] = None,
    json_output: Annotated[bool, typer.Option("--json", help="One JSON object on stdout at the end.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", help="No live progress.")] = False,
    *,
    recipe: options.LocalRecipe,  # the options of the three groups above
    server: ServerOptimiser,
    dp: DpConfig | None,
) -> None:
    """Start a new run and drive it to the end.

    Without --layout, the layout phase builds the shared feature layout first: each hospital proposes the levels it
    holds for >= k patients, their patient counts are summed under encryption, and the layout is stored as
    <run>.layout/layout.json (reusable with --layout after `medheaven store get`).

    Example: medheaven-coordinator run --run-id r1 --rounds 10 --hospitals a,b,c --layout data/layout.json
    """
    from medheaven.data import FeatureLayout

    settings = Settings()
    hospital_ids = tuple(h.strip() for h in hospitals.split(",") if h.strip())
    config = RunConfig(
        run=run_id,
        hospitals=hospital_ids,
        rounds=rounds,
        min_hospitals=min_hospitals or len(hospital_ids),
        round_timeout=round_timeout or settings.round_timeout,
        training=recipe.training(rounds=rounds, dp=dp),
        evaluator=evaluator,
        test_path=test_data,
        plaintext=plaintext,
        server=server,
    )
    store = _open_store(settings)
    if layout is not None:
        feature_layout = FeatureLayout.load(layout)
    else:
        feature_layout = _layout_phase(
            store, config, settings, level_min_patients, level_min_total, quiet or json_output
        )
    widths = tuple(int(w) for w in hidden.split(",") if w.strip())
    model = ModelSpec(
        n_features=feature_layout.n_features,
        kind="mlp" if widths else "logreg",
        hidden=widths,
        dropout=dropout if widths else 0.0,
        seed=seed,
    )
    create_run(
        store,
        config,
        model=model,
        layout=feature_layout,
        max_abs_feature=max_abs_feature or settings.max_abs_feature,
    )
    _drive(store, config, settings, quiet=quiet, json_output=json_output)


@app.command("resume")
@command
def resume(
    run_id: RunIdOption,
    json_output: Annotated[bool, typer.Option("--json")] = False,
    quiet: Annotated[bool, typer.Option("--quiet")] = False,
) -> None:
    """Continue a run from its last committed round (after Ctrl-C, a crash or a failed round).

    Example: medheaven-coordinator resume --run-id r1
    """
    settings = Settings()
    store = _open_store(settings)
    _drive(store, require_run_config(store, run_id), settings, quiet=quiet, json_output=json_output)


@app.command("status")
@command
def status(
    run_id: RunIdOption,
    json_output: Annotated[bool, typer.Option("--json")] = False,
    queues: Annotated[
        bool, typer.Option("--queues", help="also read each queue's depth, stranded messages and consumers (broker)")
    ] = False,
) -> None:
    """Show a run's committed rounds and metrics from the store (no broker needed unless --queues).

    Example: medheaven-coordinator status --run-id r1 --queues --json
    """
    from medheaven.federated.paths import RunPaths

    settings = Settings()
    store = _open_store(settings)
    config = require_run_config(store, run_id)
    history_key = RunPaths(run_id).history
    history = list(store.get_json(history_key)) if store.exists(history_key) else []
    committed = max((int(r["round"]) for r in history), default=0)
    failed_key = RunPaths(run_id).failed_attempts
    failed = list(store.get_json(failed_key)) if store.exists(failed_key) else []
    summary = {
        "run": run_id,
        "rounds": config.rounds,
        "committed": committed,
        "config": config.to_dict(),
        "history": history,
        "failed_attempts": failed,
    }
    privacy = history_privacy(history, config.training.dp)
    if privacy is not None:
        summary["privacy"] = privacy.to_dict()
    depths = _queue_depths(settings, list(config.hospitals)) if queues else []
    if queues:
        summary["queues"] = [dataclasses.asdict(d) for d in depths]
    if json_output:
        print_json(summary)
        return
    stdout.print(f"run {run_id}: {committed} of {config.rounds} rounds committed")
    ProgressObserver.print_summary(stdout, history, None, failed, privacy=privacy)
    for depth in depths:
        stdout.print(depth.describe())


def _queue_depths(settings: Settings, hospitals: list[str]) -> list[QueueDepth]:
    from coordinator.queues import queue_depths
    from workers.app import create_app

    return queue_depths(create_app(settings, hospitals=hospitals), hospitals)


def main() -> None:
    app()

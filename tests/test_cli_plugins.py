"""``medheaven`` plugin commands (``medheaven.commands`` entry points): how ``demo`` reaches the library's CLI."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from importlib.metadata import EntryPoint
from pathlib import Path
from typing import Annotated

import pytest
import typer
from typer.testing import CliRunner

from coordinator.cli import app as coordinator_app
from coordinator.options import DP_CLIP, DP_OPTIONS, RECIPE_OPTIONS, LocalRecipe
from medheaven.cli import plugins
from medheaven.cli.root import app
from medheaven.privacy.config import DpConfig

ROOT = Path(__file__).resolve().parent.parent


def hello(name: Annotated[str, typer.Option("--name")] = "world") -> None:
    """Say hello (a plugin command of this test)."""
    print(f"hello {name}")


def _installed(monkeypatch: pytest.MonkeyPatch, *entries: tuple[str, str]) -> None:
    """Stand in for installed metadata, and hide the checkout's pyproject so only these entries are declared."""
    points = [EntryPoint(name, value, plugins.GROUP) for name, value in entries]
    monkeypatch.setattr(plugins, "entry_points", lambda *, group: [p for p in points if p.group == group])
    monkeypatch.setattr(plugins, "_CHECKOUT_PYPROJECT", ROOT / "no-such-pyproject.toml")


def test_cli_plugins_pyproject_declares_demo_on_the_application_side() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert project["entry-points"][plugins.GROUP] == {"demo": "coordinator.demo_cli:demo"}
    assert plugins.declared_commands()["demo"] == "coordinator.demo_cli:demo"


def test_cli_plugins_demo_is_listed_and_parses_the_dp_options() -> None:
    listed = CliRunner().invoke(app, ["--help"])
    assert listed.exit_code == 0 and "demo" in listed.output
    shown = CliRunner().invoke(app, ["demo", "--help"], env={"COLUMNS": "200"})  # long names uncut
    assert shown.exit_code == 0, shown.output
    for option in (
        *("--dp-epsilon", "--dp-delta", "--dp-clip", "--dp-noise", "--dp-metrics", "--hospitals"),
        *("--dp-batch-patients", "--dp-epochs", "--dp-learning-rate", "--dp-optimizer"),
    ):
        assert option in shown.output


def test_cli_plugins_loaded_from_installed_entry_points(monkeypatch: pytest.MonkeyPatch) -> None:
    _installed(monkeypatch, ("hello", f"{__name__}:hello"))
    assert "demo" not in plugins.declared_commands()  # nothing but the stand-in metadata
    result = CliRunner().invoke(app, ["hello", "--name", "plugin"])
    assert result.exit_code == 0 and "hello plugin" in result.output


def test_cli_plugins_unloadable_plugin_is_one_line_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    _installed(monkeypatch, ("broken", "no_such_module_17:command"))
    result = CliRunner().invoke(app, ["broken"])
    assert result.exit_code == 2
    assert "`medheaven broken` command is declared as 'no_such_module_17:command'" in result.output
    assert "pip install -e ." in result.output and "Traceback" not in result.output


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--dp-epsilon", "0", "target epsilon must be > 0"),
        ("--dp-delta", "1.5", "delta must be in (0, 1)"),
        ("--dp-clip", "-1", "clipping norm C must be > 0"),
        ("--dp-noise", "-0.5", "noise multiplier z must be >= 0"),
        ("--dp-epochs", "0", "epochs must be > 0"),
        ("--dp-learning-rate", "-1", "learning_rate must be > 0"),
        ("--dp-optimizer", "rmsprop", "optimizer must be one of adam, sgd"),
    ],
)
def test_cli_plugins_demo_and_coordinator_run_validate_dp_options_alike(
    tmp_path: Path, option: str, value: str, message: str
) -> None:
    dp = ["--dp-epsilon", "1", option, value] if option != "--dp-epsilon" else [option, value]
    demo = CliRunner().invoke(app, ["demo", "--out", str(tmp_path / "demo"), *dp])
    run = CliRunner().invoke(
        coordinator_app, ["run", "--run-id", "r", "--hospitals", "a", "--layout", str(tmp_path / "none.json"), *dp]
    )
    for result in (demo, run):
        assert result.exit_code == 2 and message in result.output, result.output
    assert not (tmp_path / "demo").exists()  # refused before any work


def test_cli_plugins_library_commands_do_not_load_the_coordinator() -> None:
    code = (
        "import sys\nfrom typer.testing import CliRunner\nfrom medheaven.cli.root import app\n"
        "assert CliRunner().invoke(app, ['keys', '--help']).exit_code == 0\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in {'coordinator', 'workers', 'celery'}))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout.strip() == "[]"


def test_cli_plugins_option_groups_reach_the_command_as_one_value_each() -> None:
    received: list[tuple[int, LocalRecipe, DpConfig | None]] = []

    @DP_OPTIONS
    @RECIPE_OPTIONS
    def train(
        rounds: Annotated[int, typer.Option("--rounds")] = 3, *, recipe: LocalRecipe, dp: DpConfig | None
    ) -> None:
        received.append((rounds, recipe, dp))

    cli = typer.Typer()
    cli.command()(train)
    assert CliRunner().invoke(cli, ["--rounds", "4", "--batch-size", "32"]).exit_code == 0
    options = ["--dp-epsilon", "2.5", "--dp-delta", "1e-6", "--dp-batch-patients", "64", "--no-dp-metrics"]
    assert CliRunner().invoke(cli, [*options, "--lr-decay", "0.5"]).exit_code == 0
    assert CliRunner().invoke(cli, ["--batch-size", "0"]).exit_code == 2  # the option's own check still holds
    (rounds, recipe, dp), (_, other, private) = received
    assert (rounds, recipe, dp) == (4, LocalRecipe(batch_size=32), None)
    assert other == LocalRecipe(lr_decay=0.5) and private is not None
    assert (private.target_epsilon, private.delta, private.batch_patients, private.release_metrics) == (
        2.5, 1e-6, 64, False,
    )  # fmt: skip
    assert private.clip == DP_CLIP
    with pytest.raises(TypeError, match="no parameter dp"):
        DP_OPTIONS(hello)
    with pytest.raises(TypeError, match="already has parameters batch_size"):
        RECIPE_OPTIONS(lambda batch_size=1, recipe=None: None)

"""docs/deployment.md is true to the code, and scripts/runbook_smoke.sh runs its plain-commands path for real.

The doc checks parse every command of the runbook with the real CLIs; the smoke test starts a password-protected
redis-server of its own, the aggregator, two hospitals and the coordinator as separate processes, exactly as the
runbook says, and requires the run to commit and `medheaven store check` to pass.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml
from deploy_support import (
    ROOT,
    CommandError,
    ShellCommand,
    code_blocks,
    exported_names,
    find_commands,
    find_compose_calls,
    resolve,
)

from medheaven.settings import Settings

DOC = ROOT / "docs" / "deployment.md"
SCRIPT = ROOT / "scripts" / "runbook_smoke.sh"
COMPOSE = ROOT / "docker-compose.yml"
SETTINGS = {f"MEDHEAVEN_{name.upper()}" for name in Settings.model_fields}
# the smoke script's own shell variables, replaced by a representative value before parsing its commands
SCRIPT_VALUES = {"$rounds": "2"}


def _doc_blocks() -> list[str]:
    return code_blocks(DOC.read_text())


def _doc_commands() -> list[ShellCommand]:
    commands = [command for block in _doc_blocks() for command in find_commands(block)]
    commands += [
        call.inner
        for block in _doc_blocks()
        for call in find_compose_calls(block)
        if call.inner is not None and call.inner.program in {"medheaven", "medheaven-coordinator", "celery"}
    ]
    return commands


def _script_commands() -> list[ShellCommand]:
    commands = []
    for command in find_commands(SCRIPT.read_text()):
        args = tuple(SCRIPT_VALUES.get(arg, arg) for arg in command.args)
        commands.append(ShellCommand(command.program, args, command.text))
    return commands


def test_runbook_commands_exist_with_their_options() -> None:
    commands = _doc_commands()
    assert len(commands) > 30
    problems = []
    for command in commands:
        try:
            resolve(command)
        except CommandError as exc:
            problems.append(str(exc))
    assert problems == []


def test_runbook_covers_every_command_the_brief_names() -> None:
    paths = {(c.program, resolve(c).path) for c in _doc_commands()}
    for expected in [
        ("medheaven", ("keys", "init")),
        ("medheaven", ("hospital", "init")),
        ("medheaven", ("hospital", "register")),
        ("medheaven", ("hospital", "remove")),
        ("medheaven", ("federation", "publish")),
        ("medheaven", ("doctor",)),
        ("medheaven", ("store", "check")),
        ("medheaven-coordinator", ("run",)),
        ("medheaven-coordinator", ("status",)),
        ("medheaven-coordinator", ("resume",)),
        ("celery", ("workers.hospital", "worker")),
        ("celery", ("workers.aggregator", "worker")),
        ("celery", ("workers.dashboard", "flower")),
    ]:
        assert expected in paths, expected


def test_runbook_names_only_real_settings() -> None:
    named = set(re.findall(r"MEDHEAVEN_[A-Z0-9_]+", DOC.read_text()))
    assert named - SETTINGS == set()
    for needed in ("MEDHEAVEN_REDIS_TLS_CA", "MEDHEAVEN_DRIVE_SERVICE_ACCOUNT", "MEDHEAVEN_DRIVE_OAUTH_SETTINGS"):
        assert needed in named


def test_runbook_compose_calls_name_real_services_and_profiles() -> None:
    compose = yaml.safe_load(COMPOSE.read_text())
    services = set(compose["services"])
    profiles = {p for s in compose["services"].values() for p in s.get("profiles", [])}
    calls = [call for block in _doc_blocks() for call in find_compose_calls(block)]
    assert {c.subcommand for c in calls} >= {"build", "run", "up", "exec"}
    for call in calls:
        assert set(call.services) <= services, call.text
        for scaled in call.options.get("--scale", ()):
            assert scaled.split("=", 1)[0] in services, call.text
        assert set(call.options.get("--profile", ())) <= profiles, call.text
        for file in call.options.get("-f", ()):
            assert (ROOT / file).is_file(), call.text


def test_smoke_script_runs_only_documented_commands() -> None:
    documented: dict[tuple[str, tuple[str, ...]], list[frozenset[str]]] = {}
    for command in _doc_commands():
        documented.setdefault((command.program, resolve(command).path), []).append(command.options)
    script = _script_commands()
    assert len(script) >= 15
    for command in script:
        resolved = resolve(command)
        variants = documented.get((command.program, resolved.path), [])
        assert any(command.options <= options for options in variants), (
            f"`{command.text}` is not in docs/deployment.md with these options (documented: {variants})"
        )


def _doc_block_with(text: str) -> str:
    blocks = [block for block in _doc_blocks() if text in block]
    assert len(blocks) == 1, f"expected one runbook block with {text!r}, found {len(blocks)}"
    return blocks[0]


def _script_function(name: str) -> str:
    match = re.search(rf"^{name}\(\) \{{\n(.*?)^\}}", SCRIPT.read_text(), flags=re.DOTALL | re.MULTILINE)
    assert match, name
    return match.group(1)


def test_smoke_script_sets_the_environment_the_runbook_gives_each_role() -> None:
    script = SCRIPT.read_text()
    operator = script[script.index("# -- 6. operator") : script.index("medheaven doctor --role coordinator")]
    pairs = {
        "hospital": (_script_function("hospital_env"), _doc_block_with("celery -A workers.hospital worker -Q hospital.h1 --hostname h1-0")),
        "aggregator": (_script_function("aggregator_env"), _doc_block_with("celery -A workers.aggregator worker")),
        "coordinator": (operator, _doc_block_with("medheaven doctor --role coordinator\ncelery -A workers inspect")),
    }  # fmt: skip
    for role, (script_part, doc_block) in pairs.items():
        script_names = {n for n in exported_names(script_part) if n.startswith("MEDHEAVEN_")}
        doc_names = {n for n in exported_names(doc_block) if n.startswith("MEDHEAVEN_")}
        assert script_names == doc_names, role
        assert doc_names <= SETTINGS


@pytest.mark.slow
def test_smoke_script_runs_the_runbook_end_to_end(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEDHEAVEN_")}
    env["COLUMNS"] = "200"  # rich wraps at 80 columns without a terminal
    result = subprocess.run(
        [str(SCRIPT), str(tmp_path)], env=env, capture_output=True, text=True, timeout=600, check=False
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    assert "runbook smoke: OK" in result.stdout
    assert "run smoke: 2 of 2 rounds committed" in result.stdout
    checks = [line for line in result.stdout.splitlines() if re.match(r"^(ok|FAIL)\s+(context|stats|round)", line)]
    assert checks and all(line.startswith("ok") for line in checks), checks
    # keys only reached the parties the runbook hands them to
    assert not list((tmp_path / "aggregator").rglob("*.secret")) and not list((tmp_path / "aggregator").rglob("*.pem"))
    assert not list((tmp_path / "operator").rglob("*.secret")) and not list((tmp_path / "operator").rglob("*.pem"))
    assert not list((tmp_path / "store").rglob("*.secret")) and not list((tmp_path / "store").rglob("*.pem"))
    assert not (tmp_path / "h2" / "keys" / "h1.signing.pem").exists()
    assert (tmp_path / "h2" / "keys" / "context.secret").stat().st_mode & 0o077 == 0

"""docker-compose.yml (and deploy/compose.drive.yml) run real entry points with real settings and keep custody.

No Docker engine is needed: the files are parsed with PyYAML (after Compose's `${VAR:-default}` interpolation with
the defaults) and every property is checked by a plain function that returns the problems it finds. Each property
has its own test on the real file, and the mutation tests at the end prove that each checker reports a violation
when one is introduced. scripts/compose_smoke.sh builds and runs the stack for real; the tests here check that the
documented commands it runs exist.
"""

from __future__ import annotations

import copy
import re
import shlex
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml
from deploy_support import ROLE_TASKS, ROOT, CommandError, ShellCommand, app_tasks, resolve

from medheaven.settings import Settings

COMPOSE_FILE = ROOT / "docker-compose.yml"
OVERRIDE_FILES = [ROOT / "deploy" / "compose.drive.yml"]
SETTINGS = {f"MEDHEAVEN_{name.upper()}" for name in Settings.model_fields}
#: the only variables outside MEDHEAVEN_* a service may receive, each read by a named program
ALLOWED_VARIABLES = {
    "REDIS_PASSWORD": "the redis service's requirepass and healthcheck",
    "FLOWER_BASIC_AUTH": "Flower's --basic-auth option",
    "TF_CPP_MIN_LOG_LEVEL": "TensorFlow's log level",
}
SECRET_VARIABLES = {"REDIS_PASSWORD", "FLOWER_BASIC_AUTH", "MEDHEAVEN_BROKER_URL", "MEDHEAVEN_RESULT_BACKEND"}
LONG_RUNNING = {"redis", "flower", "aggregator", "hospital"}
#: the variables Compose interpolates into the file (never passed to a container), with today's defaults
COMPOSE_VARIABLES = {"REDIS_IMAGE": "redis:7.2-alpine", "FLOWER_PORT": "5555", "COMPOSE_PROJECT_NAME": "medheaven"}
#: top-level keys both Compose v2 and Debian's docker-compose 1.29 accept (1.29 refuses `name:`)
TOP_LEVEL_KEYS = {"services", "volumes", "secrets", "networks", "configs"}
DOC = ROOT / "docs" / "deployment.md"
SMOKE = ROOT / "scripts" / "compose_smoke.sh"
IMAGE = "medheaven:0.1.0"
# `${NAME}`, `${NAME:-default}` or `${NAME-default}`, not the `$${...}` escape
_INTERPOLATION = re.compile(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?-)([^}]*))?\}")

Compose = dict[str, Any]
Checker = Callable[[Compose], list[str]]


def interpolate(text: str) -> str:
    """The file as Compose reads it when none of its variables is set: each ``${NAME:-default}`` is its default."""
    return _INTERPOLATION.sub(lambda match: match.group(3) or "", text)


def load(path: Path = COMPOSE_FILE) -> Compose:
    data = yaml.safe_load(interpolate(path.read_text()))
    assert isinstance(data, dict)
    return data


@pytest.fixture
def compose() -> Compose:
    return load()


# -- reading services -------------------------------------------------------------------------------------
def command_tokens(value: Any) -> list[str]:
    """A compose command as argv; ``$$`` is compose's escape for a literal ``$``."""
    if value is None:
        return []
    if isinstance(value, str):
        return shlex.split(value.replace("$$", "$"))
    return [str(token).replace("$$", "$") for token in value]


def healthcheck_tokens(service: dict[str, Any]) -> list[str]:
    test = (service.get("healthcheck") or {}).get("test")
    if isinstance(test, list) and test and test[0] == "CMD-SHELL":
        return shlex.split(" ".join(test[1:]).replace("$$", "$"))
    if isinstance(test, list) and test and test[0] == "CMD":
        return [t.replace("$$", "$") for t in test[1:]]
    return command_tokens(test)


def role(name: str, service: dict[str, Any]) -> str:
    tokens = command_tokens(service.get("command"))
    if "workers.hospital" in tokens and "worker" in tokens:
        return "hospital"
    if "workers.aggregator" in tokens and "worker" in tokens:
        return "aggregator"
    if "flower" in tokens:
        return "flower"
    if tokens[:1] == ["medheaven-coordinator"]:
        return "coordinator"
    if str(service.get("image", "")).startswith("redis"):
        return "redis"
    return name


def services_by_role(compose: Compose, wanted: str) -> dict[str, dict[str, Any]]:
    return {n: s for n, s in compose["services"].items() if role(n, s) == wanted}


def env_files(service: dict[str, Any]) -> list[str]:
    value = service.get("env_file") or []
    items = [value] if isinstance(value, str | dict) else list(value)
    return [item["path"] if isinstance(item, dict) else str(item) for item in items]


def example_of(env_file: str) -> Path:
    """deploy/broker.env is the operator's copy of the committed deploy/broker.env.example."""
    return ROOT / f"{env_file}.example"


def parse_env_file(path: Path) -> dict[str, str]:
    """Variables an env file sets or invites the operator to set (commented ``# NAME=value`` lines count)."""
    names = {}
    for line in path.read_text().splitlines():
        match = re.match(r"^#?\s*([A-Za-z_][A-Za-z0-9_]*)=(.*)$", line.strip())
        if match:
            names[match.group(1)] = match.group(2)
    return names


def environment(service: dict[str, Any]) -> dict[str, str]:
    value = service.get("environment") or {}
    if isinstance(value, list):
        return dict(item.split("=", 1) if "=" in item else (item, "") for item in value)
    return {str(k): "" if v is None else str(v) for k, v in value.items()}


def service_env(service: dict[str, Any]) -> dict[str, str]:
    """What the container's process sees: env files (their examples), then ``environment:`` on top."""
    merged: dict[str, str] = {}
    for file in env_files(service):
        if example_of(file).is_file():
            merged.update(parse_env_file(example_of(file)))
    merged.update(environment(service))
    return merged


def mounts(service: dict[str, Any]) -> list[dict[str, Any]]:
    result = []
    for volume in service.get("volumes") or []:
        if isinstance(volume, dict):
            result.append(
                {"source": str(volume.get("source", "")), "target": str(volume["target"]),
                 "read_only": bool(volume.get("read_only", False))}
            )  # fmt: skip
            continue
        parts = str(volume).split(":")
        source, target = (parts[0], parts[1]) if len(parts) > 1 else ("", parts[0])
        result.append({"source": source, "target": target, "read_only": len(parts) > 2 and "ro" in parts[2]})
    return result


def store_target(compose: Compose) -> str | None:
    for file in ("deploy/federation.env",):
        url = parse_env_file(example_of(file)).get("MEDHEAVEN_STORE", "")
        if url.startswith("file://"):
            return url.removeprefix("file://")
    return None


def secret_files(compose: Compose) -> dict[str, str]:
    return {name: str((spec or {}).get("file", "")) for name, spec in (compose.get("secrets") or {}).items()}


def service_secrets(service: dict[str, Any]) -> list[str]:
    return [s["source"] if isinstance(s, dict) else str(s) for s in service.get("secrets") or []]


def key_material(name: str, path: str) -> str | None:
    """What key a secret or a mount exposes: 'keys folder', 'secret context', 'signing key:<hospital>',
    'agreement key:<hospital>' or None."""
    base = PurePosixPath(path).name
    if base == "keys":
        return "keys folder"
    if base.endswith(".secret") or "context_secret" in name:
        return "secret context"
    for kind, suffix, marker in (
        ("signing key", ".signing.pem", "_signing"),
        ("agreement key", ".agreement.pem", "_agreement"),
    ):
        if base.endswith(suffix):
            return f"{kind}:{base.removesuffix(suffix)}"
        if marker.lstrip("_") in name:
            return f"{kind}:{name.split(marker, maxsplit=1)[0]}"
    return None


# -- checkers: each returns the problems it finds ----------------------------------------------------------
def check_commands_resolve(compose: Compose) -> list[str]:
    """Every command and healthcheck that runs MedHeaven or Celery exists, with these options, for this role."""
    problems = []
    for name, service in compose["services"].items():
        for what, tokens in (
            ("command", command_tokens(service.get("command"))),
            ("healthcheck", healthcheck_tokens(service)),
        ):
            if not tokens or tokens[0] not in {"celery", "medheaven", "medheaven-coordinator"}:
                continue
            command = ShellCommand(tokens[0], tuple(tokens[1:]), " ".join(tokens))
            try:
                resolved = resolve(command)
            except CommandError as exc:
                problems.append(f"{name} {what}: {exc}")
                continue
            if what == "command":
                problems += _role_problems(name, service, resolved.path, resolved.params)
    return problems


def _role_problems(name: str, service: dict[str, Any], path: tuple[str, ...], params: dict[str, Any]) -> list[str]:
    if len(path) < 2 or path[1] != "worker":
        return []
    module = path[0]
    if module not in ROLE_TASKS:
        return [
            f"{name}: `celery -A {module} worker` is not a MedHeaven worker (workers.hospital or workers.aggregator)"
        ]
    missing = ROLE_TASKS[module] - app_tasks(module)
    if missing:
        return [f"{name}: celery -A {module} does not register {sorted(missing)}"]
    queues = list(params.get("queues") or [])
    if module == "workers.aggregator":
        return [] if queues == ["aggregate"] else [f"{name}: the aggregator must consume exactly -Q aggregate"]
    hospital = environment(service).get("MEDHEAVEN_HOSPITAL_ID")
    if queues != [f"hospital.{hospital}"]:
        return [f"{name}: consumes {queues}, but MEDHEAVEN_HOSPITAL_ID={hospital} serves hospital.{hospital}"]
    return []


def check_environment_names(compose: Compose) -> list[str]:
    """Every variable a service receives is a real setting or an allow-listed program's own variable."""
    problems = []
    for name, service in compose["services"].items():
        for file in env_files(service):
            if not example_of(file).is_file():
                problems.append(f"{name}: env_file {file} has no committed {file}.example")
        for variable in service_env(service):
            if variable.startswith("MEDHEAVEN_"):
                if variable not in SETTINGS:
                    problems.append(f"{name}: {variable} is not a field of medheaven.settings.Settings")
            elif variable not in ALLOWED_VARIABLES:
                problems.append(f"{name}: {variable} is neither a MEDHEAVEN_* setting nor allow-listed")
    return problems


def check_hospital_data_isolation(compose: Compose) -> list[str]:
    """A hospital's data mount is read-only and mounted into no other service."""
    problems = []
    store = store_target(compose)
    hospitals = services_by_role(compose, "hospital")
    for name, service in hospitals.items():
        data = [m for m in mounts(service) if m["target"] != store]
        if not data:
            problems.append(f"{name}: no data volume")
        for mount in data:
            if not mount["read_only"]:
                problems.append(f"{name}: data volume {mount['source']} is not read-only")
            for other, other_service in compose["services"].items():
                if other != name and any(m["source"] == mount["source"] for m in mounts(other_service)):
                    problems.append(f"{other} can see {name}'s data volume {mount['source']}")
    return problems


def check_key_custody(compose: Compose) -> list[str]:
    """Only hospitals hold the secret context, each only its own signing and agreement keys; nobody else holds any."""
    problems = []
    files = secret_files(compose)
    for name, service in compose["services"].items():
        is_hospital = role(name, service) == "hospital"
        hospital_id = environment(service).get("MEDHEAVEN_HOSPITAL_ID")
        held = [(source, key_material(source, files.get(source, ""))) for source in service_secrets(service)]
        held += [(m["source"], key_material(m["source"], m["source"])) for m in mounts(service)]
        for source, kind in held:
            if kind is None:
                continue
            if not is_hospital:
                problems.append(f"{name} can read {kind} ({source})")
            elif kind.startswith(("signing key:", "agreement key:")) and kind.split(":", 1)[1] != hospital_id:
                problems.append(f"{name} (hospital {hospital_id}) can read another hospital's {kind} ({source})")
            elif kind == "keys folder":
                problems.append(f"{name} mounts a whole keys folder ({source}); mount only its own key files")
        env = environment(service)
        for variable in ("MEDHEAVEN_SECRET_CONTEXT", "MEDHEAVEN_SIGNING_KEY"):
            if not is_hospital and variable in env:
                problems.append(f"{name} sets {variable}")
        if is_hospital:
            kinds = {kind for _, kind in held}
            if not {"secret context", f"signing key:{hospital_id}", f"agreement key:{hospital_id}"} <= kinds:
                problems.append(f"{name} lacks its secret context or its own signing or agreement key")
    return problems


def check_no_literal_secrets(compose: Compose) -> list[str]:
    """No password, URL credential or key in the compose files: they come from env files and secrets."""
    problems = []
    for path in [COMPOSE_FILE, *OVERRIDE_FILES]:
        text = yaml.safe_dump(compose) if path == COMPOSE_FILE else path.read_text()
        for pattern, what in (
            (r"[a-z]+://[^/\s:@]*:[^/\s@$]+@", "a URL with a password"),
            (r"requirepass\s+(?!%s)[^\s\"'$]", "a literal requirepass"),
            (r"--basic-auth", "Flower credentials on the command line"),
            (r"-----BEGIN", "a PEM key"),
            (r"(?i)(password|passwd|secret)[ \t]*[:=][ \t]*[A-Za-z0-9]", "a password value"),
        ):
            if re.search(pattern, text):
                problems.append(f"{path.name} contains {what}")
    for name, service in compose["services"].items():
        for variable in SECRET_VARIABLES & set(environment(service)):
            problems.append(f"{name} sets {variable} in the compose file; put it in an env file")
    return problems


def check_redis(compose: Compose) -> list[str]:
    problems = []
    for name, service in services_by_role(compose, "redis").items():
        command = " ".join(command_tokens(service.get("command")))
        for needed in ("--appendonly yes", "--maxmemory-policy noeviction"):
            if needed not in command:
                problems.append(f"{name}: command lacks {needed}")
        if "requirepass" not in command or not re.search(r"\$\{?REDIS_PASSWORD", command):
            problems.append(f"{name}: requirepass is not taken from $REDIS_PASSWORD")
        if "REDIS_PASSWORD" not in service_env(service):
            problems.append(f"{name}: REDIS_PASSWORD comes from no env file")
        health = " ".join(healthcheck_tokens(service))
        if "redis-cli" not in health or "ping" not in health or "REDIS_PASSWORD" not in health:
            problems.append(f"{name}: healthcheck is not an authenticated redis-cli ping")
    if not services_by_role(compose, "redis"):
        problems.append("no redis service")
    return problems


def check_flower(compose: Compose) -> list[str]:
    problems = []
    for name, service in services_by_role(compose, "flower").items():
        if "FLOWER_BASIC_AUTH" not in service_env(service):
            problems.append(f"{name}: no FLOWER_BASIC_AUTH from an env file: Flower would serve without auth")
        for port in service.get("ports") or []:
            if not str(port).startswith("127.0.0.1:"):
                problems.append(f"{name}: port {port} is published beyond the loopback interface")
        if not service.get("ports"):
            problems.append(f"{name}: no published port")
    return problems


def check_hospitals_scalable(compose: Compose) -> list[str]:
    problems = []
    hospitals = services_by_role(compose, "hospital")
    if sorted(hospitals) != ["hospital-a", "hospital-b", "hospital-c"]:
        problems.append(f"hospital services are {sorted(hospitals)}")
    for name, service in hospitals.items():
        for key in ("container_name", "ports"):
            if key in service:
                problems.append(f"{name} sets {key}: `docker compose up --scale {name}=3` would fail")
        if "%h" not in " ".join(command_tokens(service.get("command"))):
            problems.append(f"{name}: node name without %h would collide between replicas")
    return problems


def check_coordinator(compose: Compose) -> list[str]:
    coordinators = services_by_role(compose, "coordinator")
    if len(coordinators) != 1:
        return [f"expected one coordinator service, found {sorted(coordinators)}"]
    (name, service), problems = next(iter(coordinators.items())), []
    if not service.get("profiles"):
        problems.append(f"{name} is not in a profile: `docker compose up` would submit a run")
    if str(service.get("restart", "no")) != "no":
        problems.append(f"{name} restarts: a one-shot run must not be resubmitted")
    if command_tokens(service.get("command"))[1:2] != ["run"]:
        problems.append(f"{name} does not submit a run")
    return problems


def check_health_and_restart(compose: Compose) -> list[str]:
    problems = []
    for name, service in compose["services"].items():
        if role(name, service) not in LONG_RUNNING:
            continue
        if not healthcheck_tokens(service):
            problems.append(f"{name} has no healthcheck")
        if service.get("restart") not in {"always", "unless-stopped", "on-failure"}:
            problems.append(f"{name} has no restart policy")
    return problems


def check_interpolation(text: str) -> list[str]:
    """Every variable the file interpolates is a known one, with a default that is today's value."""
    problems = []
    for match in _INTERPOLATION.finditer(text):
        name, operator, default = match.groups()
        if name not in COMPOSE_VARIABLES:
            problems.append(f"${{{name}}} is not one of the compose file's variables {sorted(COMPOSE_VARIABLES)}")
        elif operator != ":-" or default != COMPOSE_VARIABLES[name]:
            problems.append(f"${{{name}}} must default to {COMPOSE_VARIABLES[name]!r} (`${{{name}:-...}}`)")
    return problems


def check_compose_versions(compose: Compose) -> list[str]:
    """Top-level keys that Compose v2 and docker-compose 1.29 both accept (no `name:`, no `version:`)."""
    return [
        f"top-level `{key}:` is refused by docker-compose 1.29 or obsolete in v2; pass the project name with -p"
        for key in compose
        if key not in TOP_LEVEL_KEYS and not str(key).startswith("x-")
    ]


def dockerfile_stages(text: str) -> list[str]:
    """The Dockerfile's text per stage; element 0 is what precedes the first FROM (global ARGs)."""
    return re.split(r"^FROM\s", text, flags=re.MULTILINE)


def check_dockerfile_build_args(text: str) -> list[str]:
    """BASE_IMAGE defaults to the official slim image and is every stage's base; the proxy arguments (CA
    certificates, pip settings) are declared in the build stage only, so the final image never holds them."""
    problems = []
    stages = dockerfile_stages(text)
    if not re.search(r"^ARG BASE_IMAGE=python:3\.11-slim$", stages[0], flags=re.MULTILINE):
        problems.append("no global `ARG BASE_IMAGE=python:3.11-slim` before the first FROM")
    for number, stage in enumerate(stages[1:], start=1):
        if not stage.startswith("${BASE_IMAGE}"):
            problems.append(f"stage {number} is not FROM ${{BASE_IMAGE}}: {stage.splitlines()[0]}")
    for name in ("EXTRA_CA_CERTS", "PIP_CONFIG"):
        declared = [n for n, stage in enumerate(stages) if re.search(rf"^ARG {name}\b", stage, flags=re.MULTILINE)]
        if declared != [1]:
            problems.append(f"ARG {name} must be declared in the build stage only (found in stages {declared})")
    return problems


def doc_blocks_by_marker(markdown: str) -> dict[str, list[str]]:
    """The ``<!-- compose-smoke: NAME -->`` blocks of the runbook, as scripts/compose_smoke.sh extracts them."""
    blocks: dict[str, list[str]] = {}
    pattern = r"<!-- compose-smoke: ([a-z-]+) -->\n\s*```bash\n(.*?)^\s*```"
    for name, body in re.findall(pattern, markdown, flags=re.DOTALL | re.MULTILINE):
        blocks.setdefault(name, []).append(re.sub(r"^ {3}", "", body, flags=re.MULTILINE))
    return blocks


def check_smoke_blocks(markdown: str, script: str) -> list[str]:
    """Every block the smoke script runs is in the runbook exactly once."""
    blocks = doc_blocks_by_marker(markdown)
    wanted = re.findall(r"^run_block ([a-z-]+)$", script, flags=re.MULTILINE)
    problems = [] if wanted else ["the smoke script runs no documented block"]
    for name in wanted:
        if len(blocks.get(name, [])) != 1:
            problems.append(f"docs/deployment.md has {len(blocks.get(name, []))} blocks marked compose-smoke: {name}")
    return problems


def image_commands(markdown: str) -> list[ShellCommand]:
    """The commands the runbook runs in the image with ``docker run ... medheaven:0.1.0 <command>``."""
    commands = []
    for block in [b for bs in doc_blocks_by_marker(markdown).values() for b in bs]:
        for line in block.replace("\\\n", " ").splitlines():
            if "docker run" not in line or f" {IMAGE} " not in line:
                continue
            rest = re.split(r"\||;|&&|\)", line.split(f" {IMAGE} ", 1)[1])[0]
            tokens = shlex.split(rest)
            commands.append(ShellCommand(tokens[0], tuple(tokens[1:]), rest.strip()))
    return commands


def check_image_commands(markdown: str) -> list[str]:
    problems = []
    for command in image_commands(markdown):
        try:
            resolve(command)
        except CommandError as exc:
            problems.append(str(exc))
    return problems


# -- the real files ---------------------------------------------------------------------------------------
def test_compose_variables_default_to_todays_values() -> None:
    text = COMPOSE_FILE.read_text()
    assert check_interpolation(text) == []
    assert {m.group(1) for m in _INTERPOLATION.finditer(text)} >= {"REDIS_IMAGE", "FLOWER_PORT"}
    assert interpolate('image: "${REDIS_IMAGE:-redis:7.2-alpine}" $${KEEP}') == 'image: "redis:7.2-alpine" $${KEEP}'


def test_compose_file_works_with_compose_v2_and_docker_compose_1_29(compose: Compose) -> None:
    assert check_compose_versions(compose) == []


def test_dockerfile_base_image_and_proxy_arguments() -> None:
    assert check_dockerfile_build_args((ROOT / "Dockerfile").read_text()) == []


def test_compose_smoke_runs_documented_blocks() -> None:
    assert check_smoke_blocks(DOC.read_text(), SMOKE.read_text()) == []


def test_compose_docs_image_commands_exist_with_their_options() -> None:
    commands = image_commands(DOC.read_text())
    assert {(c.program, resolve(c).path) for c in commands} >= {
        ("medheaven", ("keys", "init")),
        ("medheaven", ("hospital", "init")),
        ("medheaven", ("data", "split")),
        ("medheaven", ("keys", "show")),
    }
    assert check_image_commands(DOC.read_text()) == []


def test_test_command_runs_the_compose_smoke() -> None:
    test_sh = (ROOT / "scripts" / "test.sh").read_text()
    assert re.search(r"^\s*scripts/compose_smoke\.sh\b", test_sh, flags=re.MULTILINE)
    assert "77" in test_sh  # the smoke's "Docker cannot be run here" status is reported, not failed


def test_compose_commands_are_real_entry_points(compose: Compose) -> None:
    assert check_commands_resolve(compose) == []


def test_compose_sets_only_real_settings(compose: Compose) -> None:
    assert check_environment_names(compose) == []


def test_compose_override_sets_only_real_settings() -> None:
    for path in OVERRIDE_FILES:
        assert check_environment_names(load(path)) == [], path
        assert set(load(path)["services"]) <= set(load()["services"])


def test_compose_hospitals_cannot_see_each_others_data(compose: Compose) -> None:
    assert check_hospital_data_isolation(compose) == []


def test_compose_keys_reach_only_their_hospitals(compose: Compose) -> None:
    assert check_key_custody(compose) == []


def test_compose_drive_override_keeps_key_custody(compose: Compose) -> None:
    merged = copy.deepcopy(compose)
    for path in OVERRIDE_FILES:
        override = load(path)
        merged["secrets"] = {**merged.get("secrets", {}), **override.get("secrets", {})}
        for name, extra in override["services"].items():
            merged["services"][name]["secrets"] = merged["services"][name].get("secrets", []) + extra.get("secrets", [])
    assert check_key_custody(merged) == []


def test_compose_holds_no_literal_secret(compose: Compose) -> None:
    assert check_no_literal_secrets(compose) == []


def test_env_examples_hold_placeholders_only() -> None:
    for example in sorted((ROOT / "deploy").glob("*.env.example")):
        for variable, value in parse_env_file(example).items():
            if (variable in SECRET_VARIABLES and "@" in value) or variable in {"REDIS_PASSWORD", "FLOWER_BASIC_AUTH"}:
                assert "CHANGE-ME" in value, f"{example.name}: {variable} must be a CHANGE-ME placeholder"


def test_compose_redis_is_durable_and_password_protected(compose: Compose) -> None:
    assert check_redis(compose) == []


def test_compose_flower_requires_basic_auth(compose: Compose) -> None:
    assert check_flower(compose) == []


def test_compose_hospitals_scale(compose: Compose) -> None:
    assert check_hospitals_scalable(compose) == []


def test_compose_coordinator_is_a_one_shot_in_a_profile(compose: Compose) -> None:
    assert check_coordinator(compose) == []


def test_compose_long_running_services_have_health_and_restart(compose: Compose) -> None:
    assert check_health_and_restart(compose) == []


def test_dockerfile_is_one_non_root_image_without_secrets() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^ARG BASE_IMAGE=python:3\.11-slim$", dockerfile, flags=re.MULTILINE)
    users = re.findall(r"^USER\s+(\S+)", dockerfile, flags=re.MULTILINE)
    assert users and users[-1] not in {"root", "0"}
    assert re.search(r"^HEALTHCHECK\s", dockerfile, flags=re.MULTILINE)
    copied = " ".join(re.findall(r"^COPY\s+(.*)$", dockerfile, flags=re.MULTILINE))
    assert not re.search(r"\b(deploy|keys|data|\.env|\.secret|\.pem|tests)\b", copied), copied
    assert not re.search(r"(?i)^(ENV|ARG)\s+\S*(PASSWORD|SECRET|BROKER_URL|BASIC_AUTH)", dockerfile, flags=re.MULTILINE)
    ignored = (ROOT / ".dockerignore").read_text().split()
    for pattern in ("**/*.secret", "**/*.pem", "**/*.env", "deploy/", ".git/", ".venv/"):
        assert pattern in ignored, pattern


# -- the checkers catch violations ------------------------------------------------------------------------
def _parent(compose: Compose, path: str, *, create: bool = False) -> tuple[dict[str, Any], str]:
    """The mapping that holds the last key of a dotted ``path``, and that key; ``create`` adds missing mappings."""
    *parents, last = path.split(".")
    node = compose
    for part in parents:
        node = node.setdefault(part, {}) if create else node[part]
    return node, last


def _set(path: str, value: Any) -> Callable[[Compose], None]:
    def mutate(compose: Compose) -> None:
        node, last = _parent(compose, path, create=True)
        node[last] = value

    return mutate


def _append(path: str, value: Any) -> Callable[[Compose], None]:
    def mutate(compose: Compose) -> None:
        node, last = _parent(compose, path)
        node.setdefault(last, []).append(value)

    return mutate


def _pop(path: str) -> Callable[[Compose], None]:
    def mutate(compose: Compose) -> None:
        node, last = _parent(compose, path)
        node.pop(last)

    return mutate


MUTATIONS: list[tuple[str, Callable[[Compose], None], Checker, str]] = [
    ("unknown celery app", _set("services.aggregator.command", "celery -A workers.nowhere worker -Q aggregate"),
     check_commands_resolve, "does not load a Celery app"),
    ("flower app as a worker", _set("services.aggregator.command", "celery -A workers worker -Q aggregate"),
     check_commands_resolve, "is not a MedHeaven worker"),
    ("unknown worker option", _set("services.hospital-b.command", "celery -A workers.hospital worker -Q hospital.b --bogus"),
     check_commands_resolve, "No such option"),
    ("wrong queue", _set("services.hospital-b.command", "celery -A workers.hospital worker -Q hospital.a"),
     check_commands_resolve, "MEDHEAVEN_HOSPITAL_ID=b serves hospital.b"),
    ("unknown coordinator option", _set("services.coordinator.command", "medheaven-coordinator run --run-id x --hospitals a --layout l.json --epochs 3"),
     check_commands_resolve, "No such option"),
    ("missing required option", _set("services.coordinator.command", "medheaven-coordinator run --run-id x --layout l.json"),
     check_commands_resolve, "--hospitals"),
    ("unknown subcommand", _set("services.coordinator.command", "medheaven-coordinator start --run-id x"),
     check_commands_resolve, "start"),
    ("bad healthcheck", _set("services.hospital-a.healthcheck.test", ["CMD-SHELL", "celery -A workers inspect pong"]),
     check_commands_resolve, "healthcheck"),
    ("made-up setting", _set("services.hospital-a.environment.MEDHEAVEN_DATA_FILE", "/data/x.csv"),
     check_environment_names, "MEDHEAVEN_DATA_FILE is not a field"),
    ("foreign variable", _set("services.aggregator.environment", {"CELERY_BROKER_URL": "redis://redis"}),
     check_environment_names, "CELERY_BROKER_URL is neither"),
    ("env file without example", _set("services.aggregator.env_file", ["deploy/broker.env", "deploy/extra.env"]),
     check_environment_names, "deploy/extra.env has no committed"),
    ("shared data volume", _append("services.hospital-a.volumes", "./deploy/data/b:/other:ro"),
     check_hospital_data_isolation, "hospital-a can see hospital-b's data volume"),
    ("aggregator sees data", _append("services.aggregator.volumes", "./deploy/data/c:/data:ro"),
     check_hospital_data_isolation, "aggregator can see hospital-c's data volume"),
    ("writable data", _set("services.hospital-c.volumes", ["store:/srv/medheaven-store", "./deploy/data/c:/data"]),
     check_hospital_data_isolation, "is not read-only"),
    ("aggregator gets the secret context", _append("services.aggregator.secrets", "context_secret"),
     check_key_custody, "aggregator can read secret context"),
    ("flower gets a signing key", _append("services.flower.secrets", {"source": "a_signing_key", "target": "k"}),
     check_key_custody, "flower can read signing key:a"),
    ("coordinator mounts the keys folder", _append("services.coordinator.volumes", "./deploy/keys:/keys:ro"),
     check_key_custody, "coordinator can read keys folder"),
    ("redis mounts a secret file", _append("services.redis.volumes", "./deploy/keys/context.secret:/k:ro"),
     check_key_custody, "redis can read secret context"),
    ("aggregator told where a key is", _set("services.aggregator.environment", {"MEDHEAVEN_SECRET_CONTEXT": "/k"}),
     check_key_custody, "aggregator sets MEDHEAVEN_SECRET_CONTEXT"),
    ("hospital gets another's key", _append("services.hospital-a.secrets", "b_signing_key"),
     check_key_custody, "another hospital's signing key:b"),
    ("hospital gets another's agreement key", _append("services.hospital-a.secrets", "b_agreement_key"),
     check_key_custody, "another hospital's agreement key:b"),
    ("hospital without its key", _set("services.hospital-c.secrets", ["context_secret"]),
     check_key_custody, "hospital-c lacks"),
    ("literal broker password", _set("services.aggregator.environment", {"MEDHEAVEN_BROKER_URL": "redis://:hunter2@redis:6379/0"}),
     check_no_literal_secrets, "a URL with a password"),
    ("literal requirepass", _set("services.redis.command", "redis-server --requirepass hunter2 --appendonly yes"),
     check_no_literal_secrets, "a literal requirepass"),
    ("flower auth on the command line", _set("services.flower.command", "celery -A workers flower --basic-auth=a:b"),
     check_no_literal_secrets, "Flower credentials"),
    ("evicting redis", _set("services.redis.command", "sh -c 'exec redis-server --requirepass \"$$REDIS_PASSWORD\" --appendonly yes'"),
     check_redis, "--maxmemory-policy noeviction"),
    ("redis without persistence", _set("services.redis.command", "sh -c 'exec redis-server --requirepass \"$$REDIS_PASSWORD\" --maxmemory-policy noeviction'"),
     check_redis, "--appendonly yes"),
    ("redis without password", _set("services.redis.command", "redis-server --appendonly yes --maxmemory-policy noeviction"),
     check_redis, "requirepass"),
    ("unauthenticated healthcheck", _set("services.redis.healthcheck.test", ["CMD", "redis-cli", "ping"]),
     check_redis, "healthcheck"),
    ("flower without auth", _set("services.flower.env_file", ["deploy/broker.env"]),
     check_flower, "FLOWER_BASIC_AUTH"),
    ("flower on every interface", _set("services.flower.ports", ["5555:5555"]),
     check_flower, "beyond the loopback"),
    ("named hospital", _set("services.hospital-b.container_name", "hospital-b"),
     check_hospitals_scalable, "hospital-b sets container_name"),
    ("hospital with a port", _set("services.hospital-a.ports", ["8000:8000"]),
     check_hospitals_scalable, "hospital-a sets ports"),
    ("fixed node name", _set("services.hospital-a.command", "celery -A workers.hospital worker -Q hospital.a --hostname a@box"),
     check_hospitals_scalable, "without %h"),
    ("coordinator outside a profile", _pop("services.coordinator.profiles"),
     check_coordinator, "not in a profile"),
    ("restarting coordinator", _set("services.coordinator.restart", "always"),
     check_coordinator, "restarts"),
    ("aggregator without healthcheck", _pop("services.aggregator.healthcheck"),
     check_health_and_restart, "aggregator has no healthcheck"),
    ("hospital without restart", _pop("services.hospital-c.restart"),
     check_health_and_restart, "hospital-c has no restart policy"),
    ("top-level name", _set("name", "medheaven"), check_compose_versions, "top-level `name:`"),
]  # fmt: skip

TEXT_MUTATIONS: list[tuple[str, Callable[[str], list[str]], str, str, str]] = [
    ("unknown variable", check_interpolation, "image: medheaven:0.1.0", "image: ${MEDHEAVEN_TAG:-medheaven:0.1.0}", "is not one of"),
    ("variable without default", check_interpolation, "${FLOWER_PORT:-5555}", "${FLOWER_PORT}", "must default to '5555'"),
    ("changed default", check_interpolation, "${REDIS_IMAGE:-redis:7.2-alpine}", "${REDIS_IMAGE:-redis:7}", "must default to"),
    ("fixed base", check_dockerfile_build_args, "ARG BASE_IMAGE=python:3.11-slim", "ARG BASE_IMAGE=debian:12", "no global `ARG BASE_IMAGE"),
    ("stage off the base", check_dockerfile_build_args, "FROM ${BASE_IMAGE} AS build", "FROM python:3.12 AS build", "stage 1 is not"),
    ("CA in the final image", check_dockerfile_build_args, "ARG APP_UID=10001", "ARG APP_UID=10001\nARG EXTRA_CA_CERTS", "EXTRA_CA_CERTS must be declared"),
    ("unknown image command", check_image_commands, "medheaven keys init --out /keys/", "medheaven keys make --out /keys/", "keys make"),
    ("unknown image option", check_image_commands, "data split --out /split/", "data split --into /split/", "No such option"),
]  # fmt: skip


@pytest.mark.parametrize(("checker", "path", "old", "new", "expected"),
                         [(m[1], m[2], m[3], m[4], m[5]) for m in [
                             (n, c, ROOT / ("docker-compose.yml" if c is check_interpolation else "Dockerfile" if c is check_dockerfile_build_args else "docs/deployment.md"), o, w, e)
                             for n, c, o, w, e in TEXT_MUTATIONS]],
                         ids=[m[0] for m in TEXT_MUTATIONS])  # fmt: skip
def test_text_checker_reports_the_violation(
    checker: Callable[[str], list[str]], path: Path, old: str, new: str, expected: str
) -> None:
    text = path.read_text()
    assert checker(text) == [] and old in text
    problems = checker(text.replace(old, new, 1))
    assert any(expected in problem for problem in problems), problems


def test_smoke_block_checker_reports_a_missing_block() -> None:
    markdown, script = DOC.read_text(), SMOKE.read_text()
    assert check_smoke_blocks(markdown, script) == []
    problems = check_smoke_blocks(markdown.replace("<!-- compose-smoke: rehearse -->", ""), script)
    assert problems == ["docs/deployment.md has 0 blocks marked compose-smoke: rehearse"]


@pytest.mark.parametrize(("mutate", "checker", "expected"), [m[1:] for m in MUTATIONS], ids=[m[0] for m in MUTATIONS])
def test_checker_reports_the_violation(
    compose: Compose, mutate: Callable[[Compose], None], checker: Checker, expected: str
) -> None:
    assert checker(compose) == []
    broken = copy.deepcopy(compose)
    mutate(broken)
    problems = checker(broken)
    assert any(expected in problem for problem in problems), problems

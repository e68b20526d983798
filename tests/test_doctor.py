"""`medheaven doctor`: passes on correctly configured nodes and names each misconfiguration precisely."""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from coordinator.simulation import Simulation, prepare_simulation
from medheaven.cli.doctor import doctor_command
from medheaven.crypto.signing import create_hospital_identity
from medheaven.doctor import CheckResult, diagnose, redact_url, run_checks, secret_material_kind
from medheaven.federated.setup import init_keys
from medheaven.settings import Settings


@pytest.fixture(scope="module")
def simulation(tmp_path_factory: pytest.TempPathFactory) -> Simulation:
    from medheaven.crypto.planning import plan_ckks_parameters

    return prepare_simulation(
        tmp_path_factory.mktemp("doctor"), hospitals=2, synthetic_rows=1200, params=plan_ckks_parameters()
    )


def _hospital(simulation: Simulation, broker: str, hospital: str | None = None, **overrides: Any) -> Settings:
    hospital = hospital or simulation.hospitals[0]
    fields: dict[str, Any] = {
        key.removeprefix("MEDHEAVEN_").lower(): value
        for key, value in simulation.hospital_env(hospital, broker_url=broker).items()
    }
    fields["context_fingerprint"] = simulation.keys.fingerprint
    return Settings(**{**fields, **overrides})


def _aggregator(simulation: Simulation, broker: str, **overrides: Any) -> Settings:
    fields = {k.removeprefix("MEDHEAVEN_").lower(): v for k, v in simulation.aggregator_env(broker_url=broker).items()}
    return Settings(**{**fields, **overrides})


def _by_name(results: list[CheckResult]) -> dict[str, CheckResult]:
    return {result.name: result for result in results}


def _failure(results: list[CheckResult], name: str) -> str:
    result = _by_name(results)[name]
    assert result.status == "fail", result
    return result.detail


def _hospital_failure(simulation: Simulation, broker: str, name: str, **overrides: Any) -> str:
    """The detail of check ``name``, which must fail, on the first hospital configured with ``overrides``."""
    return _failure(run_checks("hospital", _hospital(simulation, broker, **overrides)), name)


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- good nodes -------------------------------------------------------------------------------------------
def test_doctor_passes_a_correctly_configured_hospital(simulation: Simulation, redis_url: str) -> None:
    results = run_checks("hospital", _hospital(simulation, redis_url))
    assert [r.name for r in results] == [
        "hospital id", "broker", "store", "public context", "secret context", "signing key", "agreement key", "data",
    ]  # fmt: skip
    assert all(r.status == "ok" for r in results), results
    details = _by_name(results)
    assert "maxmemory-policy noeviction" in details["broker"].detail
    assert "matches the store's public context" in details["secret context"].detail
    assert "rows" in details["data"].detail and "schema prepared" in details["data"].detail


@pytest.mark.parametrize("role", ["aggregator", "coordinator"])
def test_doctor_passes_a_correctly_configured_aggregator_and_coordinator(
    simulation: Simulation, redis_url: str, role: str, tmp_path: Path
) -> None:
    results = run_checks(role, _aggregator(simulation, redis_url), secret_dirs=[tmp_path])  # type: ignore[arg-type]
    assert all(r.status == "ok" for r in results), results
    assert _by_name(results)["registry"].detail == "2 hospitals registered: h1, h2"


# -- one failure per misconfiguration ---------------------------------------------------------------------
def test_doctor_fails_on_a_wrong_fingerprint(simulation: Simulation, redis_url: str) -> None:
    results = run_checks("hospital", _hospital(simulation, redis_url, context_fingerprint="0" * 64))
    assert "MEDHEAVEN_CONTEXT_FINGERPRINT is 0000000000000000" in _failure(results, "public context")
    assert "MEDHEAVEN_CONTEXT_FINGERPRINT" in _failure(results, "secret context")


def test_doctor_fails_on_a_secret_context_of_another_key_set(
    simulation: Simulation, redis_url: str, tmp_path: Path
) -> None:
    from medheaven.crypto.codec import load_public_keys

    other = init_keys(tmp_path / "other", load_public_keys(simulation.keys.public).params)
    detail = _hospital_failure(simulation, redis_url, "secret context", secret_context=other.secret)
    assert "MEDHEAVEN_CONTEXT_FINGERPRINT is" in detail
    unpinned = _hospital(simulation, redis_url, secret_context=other.secret, context_fingerprint=None)
    assert "this hospital holds another federation's key" in _failure(
        run_checks("hospital", unpinned), "secret context"
    )


def test_doctor_fails_on_a_secret_key_on_the_aggregator(simulation: Simulation, redis_url: str) -> None:
    results = run_checks("aggregator", _aggregator(simulation, redis_url, secret_context=simulation.keys.secret))
    assert "the aggregator must not have access to the secret context" in _failure(results, "no secret key")


def test_doctor_fails_on_a_signing_key_on_the_coordinator(simulation: Simulation, redis_url: str) -> None:
    key = simulation.identities[simulation.hospitals[0]].signing_key
    results = run_checks("coordinator", _aggregator(simulation, redis_url, signing_key=key))
    assert "signing keys stay on their hospital's machines" in _failure(results, "no secret key")


@pytest.mark.parametrize("kind", ["secret context", "signing key"])
def test_doctor_fails_on_key_material_readable_in_the_aggregators_secrets(
    simulation: Simulation, redis_url: str, tmp_path: Path, kind: str
) -> None:
    source = simulation.keys.secret if kind == "secret context" else simulation.identities["h2"].signing_key
    shutil.copy(source, tmp_path / "innocent-name")
    results = run_checks("aggregator", _aggregator(simulation, redis_url), secret_dirs=[tmp_path])
    detail = _failure(results, "no secret key")
    assert str(tmp_path / "innocent-name") in detail and kind.rsplit(maxsplit=1)[-1] in detail
    # a key file behind a path setting is found too
    results = run_checks("aggregator", _aggregator(simulation, redis_url, schema_file=tmp_path / "innocent-name"))
    assert "MEDHEAVEN_SCHEMA_FILE" in _failure(results, "no secret key")


def test_secret_material_kind_tells_public_from_secret(simulation: Simulation) -> None:
    assert secret_material_kind(simulation.keys.secret) == "a secret CKKS context"
    assert secret_material_kind(simulation.identities["h1"].signing_key) == "an Ed25519 signing key"
    assert secret_material_kind(simulation.keys.public) is None
    assert secret_material_kind(simulation.data_files["h1"]) is None


@pytest.mark.parametrize("which", ["secret_context", "signing_key"])
def test_doctor_fails_on_a_world_readable_key(
    simulation: Simulation, redis_url: str, tmp_path: Path, which: str
) -> None:
    hospital = simulation.hospitals[0]
    source = simulation.keys.secret if which == "secret_context" else simulation.identities[hospital].signing_key
    exposed = tmp_path / source.name
    shutil.copy(source, exposed)
    exposed.chmod(0o644)
    results = run_checks("hospital", _hospital(simulation, redis_url, **{which: exposed}))
    detail = _failure(results, "secret context" if which == "secret_context" else "signing key")
    assert "accessible by group or others (mode 644)" in detail and f"chmod 600 {exposed}" in detail


def test_doctor_fails_on_an_unreachable_broker(simulation: Simulation) -> None:
    broker = f"redis://127.0.0.1:{_closed_port()}/15"
    started = time.monotonic()
    results = run_checks("hospital", _hospital(simulation, broker), timeout=2.0)
    assert time.monotonic() - started < 60
    assert f"cannot reach {broker}" in _failure(results, "broker")


def test_doctor_refuses_the_in_process_broker(simulation: Simulation) -> None:
    results = run_checks("aggregator", _aggregator(simulation, "memory://"))
    assert "memory:// is not a deployment broker" in _failure(results, "broker")


def test_doctor_fails_on_a_missing_data_file(simulation: Simulation, redis_url: str, tmp_path: Path) -> None:
    missing = tmp_path / "h1.csv"
    detail = _hospital_failure(simulation, redis_url, "data", data_path=missing)
    assert f"MEDHEAVEN_DATA_PATH={missing} is not a readable file" in detail


def test_doctor_fails_on_a_data_file_without_its_schema(simulation: Simulation, redis_url: str, tmp_path: Path) -> None:
    lonely = tmp_path / "h1.csv"
    shutil.copy(simulation.data_files["h1"], lonely)
    detail = _hospital_failure(simulation, redis_url, "data", data_path=lonely)
    assert "needs schema.json or layout.json next to it" in detail


def test_doctor_fails_on_an_unregistered_or_replaced_signing_key(
    simulation: Simulation, redis_url: str, tmp_path: Path
) -> None:
    signing, _ = create_hospital_identity("h9", tmp_path)
    detail = _hospital_failure(simulation, redis_url, "signing key", hospital_id="h9", signing_key=signing)
    assert "hospital h9 is not registered in hospitals.json" in detail
    other = simulation.identities["h2"].signing_key
    detail = _hospital_failure(simulation, redis_url, "signing key", signing_key=other)
    assert "does not match the verification key registered for h1" in detail


def test_doctor_fails_on_a_missing_loose_or_unregistered_agreement_key(
    simulation: Simulation, redis_url: str, tmp_path: Path
) -> None:
    from medheaven.crypto.masks import create_agreement_key

    # an identity made before masking: signing key only, so no agreement key beside it
    signing, _ = create_hospital_identity("h1", tmp_path)
    detail = _hospital_failure(simulation, redis_url, "agreement key", signing_key=signing)
    assert f"{tmp_path / 'h1.agreement.pem'} does not exist" in detail and "medheaven hospital init --id h1" in detail
    # present but not registered (the registry holds h1's original agreement key)
    agreement, _ = create_agreement_key("h1", tmp_path)
    detail = _hospital_failure(simulation, redis_url, "agreement key", signing_key=signing)
    assert "does not match the agreement key registered for h1" in detail
    # readable by others: refused before anything else
    agreement.chmod(0o644)
    detail = _hospital_failure(simulation, redis_url, "agreement key", signing_key=signing)
    assert "0644" in detail or "mode" in detail


def test_doctor_fails_on_a_missing_store_folder_without_creating_it(simulation: Simulation, tmp_path: Path) -> None:
    absent = tmp_path / "not-mounted"
    results = run_checks("coordinator", _aggregator(simulation, "memory://", store=f"file://{absent}"))
    assert f"store folder {absent} does not exist" in _failure(results, "store")
    assert _by_name(results)["public context"].status == "skip"
    assert not absent.exists()


def test_doctor_warns_when_the_fingerprint_is_not_pinned(simulation: Simulation, redis_url: str) -> None:
    results = run_checks("aggregator", _aggregator(simulation, redis_url, context_fingerprint=None))
    context = _by_name(results)["public context"]
    assert context.status == "warn" and simulation.keys.fingerprint in context.detail


# -- a Redis with a password and an evicting policy --------------------------------------------------------
@contextlib.contextmanager
def _redis_server(port: int, arguments: list[str]) -> Iterator[None]:
    """``redis-server`` with these arguments, once it accepts connections on ``port``; stopped on exit."""
    server = subprocess.Popen(["redis-server", *arguments], stdout=subprocess.DEVNULL)
    try:
        for _ in range(100):
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.05)
        yield
    finally:
        server.terminate()
        server.wait(timeout=10)


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[tuple[int, str]]:
    port, password = _closed_port(), "doctor-test-password"
    with _redis_server(
        port,
        ["--bind", "127.0.0.1", "--port", str(port), "--requirepass", password, "--save", "", "--appendonly", "no",
         "--maxmemory-policy", "allkeys-lru", "--dir", str(tmp_path)],
    ):  # fmt: skip
        yield port, password


def test_doctor_names_password_problems_and_warns_on_eviction(
    simulation: Simulation, private_redis: tuple[int, str]
) -> None:
    port, password = private_redis
    broker = f"redis://127.0.0.1:{port}/0"
    results = run_checks("aggregator", _aggregator(simulation, broker))
    assert "requires a password" in _failure(results, "broker")
    results = run_checks("aggregator", _aggregator(simulation, f"redis://:wrong@127.0.0.1:{port}/0"))
    assert "refused the credentials" in _failure(results, "broker")
    good = f"redis://:{password}@127.0.0.1:{port}/0"
    broker_check = _by_name(run_checks("aggregator", _aggregator(simulation, good)))["broker"]
    assert broker_check.status == "warn" and "maxmemory-policy is allkeys-lru" in broker_check.detail
    assert password not in broker_check.detail and ":***@" in broker_check.detail


def test_redact_url_hides_only_the_password() -> None:
    assert redact_url("redis://:s3cret@host:6379/0") == "redis://:***@host:6379/0"
    assert redact_url("rediss://fed:s3cret@host:6380/1") == "rediss://fed:***@host:6380/1"
    assert redact_url("redis://host:6379/0") == "redis://host:6379/0"


# -- the command ------------------------------------------------------------------------------------------
def _cli() -> typer.Typer:
    """`medheaven doctor` as the lead registers it: a subcommand of a typer app."""
    app = typer.Typer()
    app.command("doctor")(doctor_command)
    app.callback()(lambda: None)
    return app


def _environment(settings: Settings) -> dict[str, str]:
    env = {f"MEDHEAVEN_{name.upper()}": None for name in Settings.model_fields}
    env.update(
        {f"MEDHEAVEN_{name.upper()}": str(value) for name, value in settings.model_dump().items() if value is not None}
    )
    return env  # type: ignore[return-value]


def test_doctor_command_prints_one_line_per_check(simulation: Simulation, redis_url: str) -> None:
    result = CliRunner().invoke(
        _cli(), ["doctor", "--role", "hospital"], env=_environment(_hospital(simulation, redis_url))
    )
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 9 and all(line.startswith("ok ") for line in lines), result.output
    assert lines[0] == "ok   settings: MEDHEAVEN_* variables parse"


def test_doctor_command_exits_1_and_prints_json(simulation: Simulation, redis_url: str) -> None:
    env = _environment(_aggregator(simulation, redis_url, secret_context=simulation.keys.secret))
    result = CliRunner().invoke(_cli(), ["doctor", "--role", "aggregator", "--json"], env=env)
    assert result.exit_code == 1
    report = json.loads(result.output)
    assert report["role"] == "aggregator" and report["ok"] is False
    failed = [c for c in report["checks"] if c["status"] == "fail"]
    assert [c["check"] for c in failed] == ["no secret key"]


def test_doctor_reports_a_setting_that_does_not_parse() -> None:
    report = diagnose("coordinator", settings_factory=lambda: Settings(store="s3://bucket"))
    assert not report.ok
    assert report.checks[0].name == "settings" and "MEDHEAVEN_STORE" in report.checks[0].detail


# -- Redis over TLS (rediss://) ----------------------------------------------------------------------------
def _write_tls_files(folder: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for 127.0.0.1 signed by it: ca.crt, redis.crt, redis.key."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key, server_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "medheaven test CA")])
    ca = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    server = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])).issuer_name(ca_name)
        .public_key(server_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    paths = folder / "ca.crt", folder / "redis.crt", folder / "redis.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(server.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        server_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    paths[2].chmod(0o600)
    return paths


def test_doctor_checks_a_tls_broker_against_the_configured_ca(simulation: Simulation, tmp_path: Path) -> None:
    ca, cert, key = _write_tls_files(tmp_path)
    port = _closed_port()
    # the runbook's TLS command line, on a free port
    with _redis_server(
        port,
        ["--bind", "127.0.0.1", "--port", "0", "--tls-port", str(port), "--tls-cert-file", str(cert),
         "--tls-key-file", str(key), "--tls-ca-cert-file", str(ca), "--tls-auth-clients", "optional",
         "--requirepass", "tls-test", "--appendonly", "no", "--save", "", "--maxmemory-policy", "noeviction",
         "--dir", str(tmp_path)],
    ):  # fmt: skip
        broker = f"rediss://:tls-test@127.0.0.1:{port}/0"
        good = _by_name(run_checks("coordinator", _aggregator(simulation, broker, redis_tls_ca=ca)))["broker"]
        assert good.status == "ok" and "maxmemory-policy noeviction" in good.detail, good
        unverified = run_checks("coordinator", _aggregator(simulation, broker))
        assert "certificate verify failed" in _failure(unverified, "broker")
        missing = run_checks("coordinator", _aggregator(simulation, broker, redis_tls_ca=tmp_path / "none.crt"))
        assert "MEDHEAVEN_REDIS_TLS_CA" in _failure(missing, "broker")

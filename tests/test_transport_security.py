"""Security of the moving parts: Redis behind an ACL user with a password and behind mutual TLS, with a certificate
authority and certificates made here with ``cryptography``. A whole federated round runs through such a broker, and
connections without TLS, without a client certificate, without the password or with a wrong one are refused.

Also part of this picture, tested elsewhere:
* the Flower dashboard refuses anonymous API requests (401): tests/test_flower.py;
* secret-key files are created 0600 and a hospital worker refuses to start when its secret key is readable by
  others: tests/test_federation_redis.py::test_hospital_process_refuses_a_world_readable_secret_key.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import ssl
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from fault_support import assert_run_sound, federation, redis_server
from federation_support import small_simulation
from redis.backoff import NoBackoff
from redis.retry import Retry

from medheaven.settings import Settings
from workers.config import celery_config

pytestmark = pytest.mark.slow

USER, PASSWORD = "medheaven", "correct-horse-battery-staple"
ACL = ("--user", USER, "on", f">{PASSWORD}", "~*", "&*", "+@all", "--user", "default", "off")


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _key_file(path: Path, key: ec.EllipticCurvePrivateKey) -> Path:
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    path.write_bytes(pem)
    os.chmod(path, 0o600)
    return path


def _certificate(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Certificate | None,
    issuer_key: ec.EllipticCurvePrivateKey,
    *,
    usage: x509.ObjectIdentifier | None,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer.subject if issuer else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), critical=True)
    )
    if usage is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]),
            critical=False,
        )
    return builder.sign(issuer_key, hashes.SHA256())


def make_pki(directory: Path) -> Pki:
    directory.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _certificate("MedHeaven test CA", ca_key, None, ca_key, usage=None)
    files: dict[str, Path] = {"ca": directory / "ca.crt"}
    files["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    for role, usage in (("server", ExtendedKeyUsageOID.SERVER_AUTH), ("client", ExtendedKeyUsageOID.CLIENT_AUTH)):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _certificate(f"medheaven-{role}", key, ca, ca_key, usage=usage)
        files[f"{role}_cert"] = directory / f"{role}.crt"
        files[f"{role}_cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        files[f"{role}_key"] = _key_file(directory / f"{role}.key", key)
    return Pki(**files)


def tls_args(pki: Pki) -> tuple[str, ...]:
    return (
        "--tls-cert-file", str(pki.server_cert), "--tls-key-file", str(pki.server_key),
        "--tls-ca-cert-file", str(pki.ca), "--tls-auth-clients", "yes",
    )  # fmt: skip


def client_tls(pki: Pki) -> dict[str, str]:
    return {"ssl_ca_certs": str(pki.ca), "ssl_certfile": str(pki.client_cert), "ssl_keyfile": str(pki.client_key)}


def require_tls_build() -> None:
    """Skip (saying why) only when the installed redis-server was built without TLS: it then rejects --tls-port."""
    import subprocess

    result = subprocess.run(
        ["redis-server", "--port", "0", "--tls-port", "0", "--bind", "127.0.0.1", "--save", ""],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    output = result.stdout + result.stderr
    if "Bad directive" in output or ("tls-port" in output.lower() and "unrecognized" in output.lower()):
        pytest.skip(f"the installed redis-server has no TLS support (BUILD_TLS=no): {output.strip()[-200:]}")


def _refused_client(**kwargs: object) -> redis.Redis:
    """A client that reports the first refusal instead of retrying it with backoff (redis-py's default)."""
    return redis.Redis(retry=Retry(NoBackoff(), 0), **kwargs)  # type: ignore[arg-type]


def test_redis_acl_refuses_anonymous_and_wrong_password(tmp_path: Path) -> None:
    with redis_server(tmp_path / "redis", extra_args=ACL, password=(USER, PASSWORD)) as server:
        assert server.client().ping()
        anonymous = _refused_client(host="127.0.0.1", port=server.port, socket_timeout=5)
        with pytest.raises(redis.exceptions.RedisError, match=r"NOAUTH|[Aa]uthenticat|NOPERM|WRONGPASS"):
            anonymous.set("x", "1")
        wrong = _refused_client(host="127.0.0.1", port=server.port, username=USER, password="guess", socket_timeout=5)
        with pytest.raises(redis.exceptions.AuthenticationError):
            wrong.ping()
        default_user = _refused_client(host="127.0.0.1", port=server.port, password=PASSWORD, socket_timeout=5)
        with pytest.raises(redis.exceptions.AuthenticationError):
            default_user.ping()  # the 'default' user is switched off


def test_redis_tls_refuses_plaintext_and_clients_without_certificate(tmp_path: Path) -> None:
    require_tls_build()
    pki = make_pki(tmp_path / "pki")
    args = (*tls_args(pki), *ACL)
    with redis_server(
        tmp_path / "redis", extra_args=args, tls=True, password=(USER, PASSWORD), client_tls=client_tls(pki)
    ) as server:
        assert server.client().ping()
        plaintext = _refused_client(
            host="127.0.0.1", port=server.port, username=USER, password=PASSWORD, socket_timeout=5
        )
        with pytest.raises(redis.exceptions.ConnectionError):
            plaintext.ping()
        no_cert = _refused_client(
            host="127.0.0.1", port=server.port, username=USER, password=PASSWORD, socket_timeout=5,
            ssl=True, ssl_ca_certs=str(pki.ca),
        )  # fmt: skip
        with pytest.raises(redis.exceptions.ConnectionError):
            no_cert.ping()
        other = make_pki(tmp_path / "other-pki")  # a server certificate the client does not trust
        untrusted = _refused_client(
            host="127.0.0.1", port=server.port, username=USER, password=PASSWORD, socket_timeout=5,
            ssl=True, **client_tls(other),
        )  # fmt: skip
        with pytest.raises(redis.exceptions.ConnectionError, match=r"certificate verify failed|CERTIFICATE"):
            untrusted.ping()


def test_celery_tls_options_are_what_kombu_and_redis_py_expect(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    settings = Settings(
        broker_url=f"rediss://{USER}:{PASSWORD}@127.0.0.1:6390/0",
        redis_tls_ca=pki.ca,
        redis_tls_cert=pki.client_cert,
        redis_tls_key=pki.client_key,
    )
    config = celery_config(settings)
    for name in ("broker_use_ssl", "redis_backend_use_ssl"):
        options = config[name]
        assert options["ssl_cert_reqs"] == ssl.CERT_REQUIRED
        assert options["ssl_ca_certs"] == str(pki.ca)
        assert options["ssl_certfile"] == str(pki.client_cert) and options["ssl_keyfile"] == str(pki.client_key)
    assert "broker_use_ssl" not in celery_config(Settings(broker_url="redis://127.0.0.1:6390/0"))


def test_federated_round_through_redis_with_acl_and_mutual_tls(tmp_path: Path) -> None:
    require_tls_build()
    pki = make_pki(tmp_path / "pki")
    simulation = small_simulation(tmp_path / "sim", hospitals=2, rows=1500)
    args = (*tls_args(pki), *ACL)
    with redis_server(
        tmp_path / "redis", extra_args=args, tls=True, password=(USER, PASSWORD), client_tls=client_tls(pki)
    ) as server:
        url = server.url()
        assert url.startswith(f"rediss://{USER}:{PASSWORD}@127.0.0.1:")
        tls_env = {
            "MEDHEAVEN_REDIS_TLS_CA": str(pki.ca),
            "MEDHEAVEN_REDIS_TLS_CERT": str(pki.client_cert),
            "MEDHEAVEN_REDIS_TLS_KEY": str(pki.client_key),
        }
        settings = Settings(
            broker_url=url,
            store=simulation.store_url(),
            redis_tls_ca=pki.ca,
            redis_tls_cert=pki.client_cert,
            redis_tls_key=pki.client_key,
        )
        with federation(simulation, url, tmp_path / "logs", settings_env=tls_env, settings=settings) as fed:
            config = fed.config("tls", rounds=1, round_timeout=120)
            history = fed.coordinator(config).run()
            clients = server.client().client_list()
        logs = "".join(w.log_path.read_text() for w in fed.cluster.workers)
    assert sorted(history[0]["participants"]) == sorted(simulation.hospitals)
    assert_run_sound(simulation, config.run, rounds=1)
    assert clients and all(c.get("user") == USER for c in clients), "a connection did not authenticate as the ACL user"
    assert f"rediss://{USER}:**@127.0.0.1:{server.port}" in logs and PASSWORD not in logs

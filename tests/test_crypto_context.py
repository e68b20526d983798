"""Key custody: the public context can never decrypt or carry the secret key, and secret files stay owner-only."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import msgpack
import numpy as np
import pytest
import tenseal as ts
from crypto_fixtures import DEFAULT_PARAMS, WIDE_PARAMS, public_context, secret_context

from medheaven.crypto.context import (
    ENCRYPTION_MODES,
    PUBLIC_KEY,
    SYMMETRIC,
    PublicContext,
    SecretContext,
    _serialise,
    create_key_material,
    describe_context_file,
    load_public_context,
    load_secret_context,
)
from medheaven.crypto.planning import CkksParameters
from medheaven.errors import ConfigurationError, CryptoError, KeyCustodyError
from medheaven.private_files import check_private_file_mode, write_private_file, write_public_file

WINDOW = 64


@pytest.fixture(scope="module")
def secret() -> SecretContext:
    return secret_context(DEFAULT_PARAMS)


@pytest.fixture(scope="module")
def public() -> PublicContext:
    return public_context(DEFAULT_PARAMS)


@pytest.fixture(scope="module")
def key_files(tmp_path_factory: pytest.TempPathFactory, secret: SecretContext) -> Iterator[tuple[Path, Path]]:
    folder = tmp_path_factory.mktemp("keys")
    secret_path, public_path = folder / "context.secret", folder / "context.public"
    write_private_file(secret_path, secret.to_bytes())
    write_public_file(public_path, secret.public().to_bytes())
    yield secret_path, public_path


def _secret_key_forms(secret: SecretContext, tmp_path: Path) -> list[bytes]:
    """The secret key as SEAL serialises it (compressed) and as its raw little-endian RNS coefficients."""
    key = secret.tenseal.secret_key().data
    saved = tmp_path / "secret-key.seal"
    key.save(str(saved))
    plaintext = key.data()
    raw = np.array([plaintext.data(i) for i in range(plaintext.coeff_count())], dtype="<u8").tobytes()
    return [saved.read_bytes(), raw]


def _windows(data: bytes, *, skip: int) -> list[bytes]:
    return [data[start : start + WINDOW] for start in range(skip, len(data) - WINDOW + 1, WINDOW)]


def test_context_secret_and_public_are_different_types(secret: SecretContext, public: PublicContext) -> None:
    assert type(secret) is SecretContext
    assert type(public) is PublicContext
    assert not isinstance(public, SecretContext)
    assert not isinstance(secret, PublicContext)
    assert not hasattr(public, "decrypt")
    assert not hasattr(public, "encrypt")


def test_context_public_refuses_a_context_with_a_secret_key(secret: SecretContext) -> None:
    with pytest.raises(KeyCustodyError, match="secret key"):
        PublicContext(params=secret.params, fingerprint=secret.fingerprint, tenseal=secret.tenseal)


def test_context_secret_refuses_a_context_without_secret_key(public: PublicContext) -> None:
    with pytest.raises(KeyCustodyError, match="secret key"):
        SecretContext(params=public.params, fingerprint=public.fingerprint, tenseal=public.tenseal)


def test_context_loaded_public_file_cannot_decrypt(secret: SecretContext, key_files: tuple[Path, Path]) -> None:
    loaded = load_public_context(key_files[1])
    assert not loaded.tenseal.has_secret_key()
    assert not loaded.tenseal.is_private()
    chunk = secret.encrypt(np.arange(10.0))
    vector = ts.ckks_vector_from(loaded.tenseal, chunk)
    with pytest.raises(ValueError, match="doesn't hold a secret_key"):
        vector.decrypt()
    with pytest.raises(ValueError, match="doesn't hold a Secret key"):
        loaded.tenseal.secret_key()


def test_context_secret_key_fixture_is_really_in_the_secret_file(secret: SecretContext, tmp_path: Path) -> None:
    """Control for the next test: the windows we look for are found where the secret key does live."""
    serialised = _serialise(secret.tenseal, secret=True)
    compressed, raw = _secret_key_forms(secret, tmp_path)
    windows = _windows(compressed, skip=16)
    assert windows
    assert all(window in serialised for window in windows)
    assert len(raw) == secret.params.poly_modulus_degree * (len(secret.params.coeff_mod_bit_sizes)) * 8


@pytest.mark.parametrize("params", [DEFAULT_PARAMS, WIDE_PARAMS], ids=["n4096", "n8192"])
def test_context_public_file_never_contains_the_secret_key(params: CkksParameters, tmp_path: Path) -> None:
    secret = secret_context(params)
    public_bytes = secret.public().to_bytes()
    compressed, raw = _secret_key_forms(secret, tmp_path)
    # skip SEAL's 16-byte header, which every serialised SEAL object shares
    for form in (compressed, raw):
        leaked = [window for window in _windows(form, skip=16) if window in public_bytes]
        assert not leaked


def test_context_public_file_is_small_and_has_no_galois_or_relin_keys(key_files: tuple[Path, Path]) -> None:
    public_path = key_files[1]
    # symmetric key set (the default): the aggregator's context is the parameters alone, no key of any kind
    assert public_path.stat().st_size < 1_000
    description = describe_context_file(public_path)
    assert description["kind"] == "public-context"
    assert description["encryption"] == SYMMETRIC
    assert description["has_secret_key"] is False
    assert description["has_galois_keys"] is False
    assert description["has_relin_keys"] is False
    loaded = load_public_context(public_path)
    assert not loaded.tenseal.has_galois_keys()
    assert not loaded.tenseal.has_relin_keys()


@pytest.mark.parametrize("encryption", ENCRYPTION_MODES)
def test_context_modes_round_trip_add_and_decrypt(encryption: str) -> None:
    secret = secret_context(DEFAULT_PARAMS, encryption=encryption)
    assert secret.encryption == encryption
    public = PublicContext.from_bytes(secret.public().to_bytes())
    loaded = SecretContext.from_bytes(secret.to_bytes())
    assert public.encryption == loaded.encryption == encryption
    assert public.fingerprint == loaded.fingerprint == secret.fingerprint
    values = np.linspace(-2.0, 2.0, 100)
    total = ts.ckks_vector_from(public.tenseal, secret.encrypt(values))
    total.add_(ts.ckks_vector_from(public.tenseal, loaded.encrypt(values)))
    assert np.max(np.abs(loaded.decrypt(total.serialize())[:100] - 2 * values)) < 1e-6


def test_context_symmetric_public_context_cannot_encrypt() -> None:
    """With symmetric encryption the aggregator cannot make up a ciphertext: its context holds no key at all."""
    public = public_context(DEFAULT_PARAMS, encryption=SYMMETRIC)
    with pytest.raises(ValueError, match="support encryption"):
        ts.ckks_vector(public.tenseal, [1.0, 2.0])
    assert len(public.to_bytes()) < 1_000


def test_context_public_key_mode_public_context_carries_the_public_key() -> None:
    public = public_context(DEFAULT_PARAMS, encryption=PUBLIC_KEY)
    assert public.tenseal.has_public_key()
    assert 50_000 < len(public.to_bytes()) < 1_000_000
    # anyone holding a public-key context can encrypt: that is what the symmetric mode takes away
    assert ts.ckks_vector(public.tenseal, [1.0, 2.0]).serialize()


def test_context_files_from_before_the_mode_existed_load_as_public_key() -> None:
    secret = secret_context(DEFAULT_PARAMS, encryption=PUBLIC_KEY)
    for data, loader in (
        (secret.to_bytes(), SecretContext.from_bytes),
        (secret.public().to_bytes(), PublicContext.from_bytes),
    ):
        payload = msgpack.unpackb(data, raw=False)
        del payload["encryption"]
        loaded = loader(msgpack.packb(payload, use_bin_type=True))
        assert loaded.encryption == PUBLIC_KEY
        assert loaded.fingerprint == secret.fingerprint


@pytest.mark.parametrize("encryption", ENCRYPTION_MODES)
def test_context_secret_file_whose_mode_was_edited_is_refused(encryption: str) -> None:
    secret = secret_context(DEFAULT_PARAMS, encryption=encryption)
    payload = msgpack.unpackb(secret.to_bytes(), raw=False)
    payload["encryption"] = PUBLIC_KEY if encryption == SYMMETRIC else SYMMETRIC
    with pytest.raises(CryptoError, match="other kind of context"):
        SecretContext.from_bytes(msgpack.packb(payload, use_bin_type=True), source="keys/context.secret")


def test_context_unknown_mode_is_refused() -> None:
    payload = msgpack.unpackb(secret_context(DEFAULT_PARAMS).to_bytes(), raw=False)
    payload["encryption"] = "homomorphic-magic"
    with pytest.raises(CryptoError, match="homomorphic-magic"):
        SecretContext.from_bytes(msgpack.packb(payload, use_bin_type=True))
    with pytest.raises(ConfigurationError, match="homomorphic-magic"):
        create_key_material(DEFAULT_PARAMS, encryption="homomorphic-magic")


def test_context_describe_secret_file_reports_the_secret_key(key_files: tuple[Path, Path]) -> None:
    description = describe_context_file(key_files[0])
    assert description["kind"] == "secret-context"
    assert description["has_secret_key"] is True
    assert description["mode"] == "600"
    assert description["poly_modulus_degree"] == DEFAULT_PARAMS.poly_modulus_degree


def test_context_secret_file_is_created_0600(key_files: tuple[Path, Path]) -> None:
    assert stat.S_IMODE(os.stat(key_files[0]).st_mode) == 0o600
    check_private_file_mode(key_files[0])


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o700 | 0o040])
def test_context_check_private_file_mode_refuses_group_or_other_access(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "context.secret"
    path.write_bytes(b"secret")
    path.chmod(mode)
    with pytest.raises(KeyCustodyError) as caught:
        check_private_file_mode(path)
    assert str(path) in str(caught.value)
    assert f"chmod 600 {path}" in str(caught.value)


def test_context_check_private_file_mode_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="does not exist"):
        check_private_file_mode(tmp_path / "nowhere")


def test_context_load_secret_context_refuses_readable_file(tmp_path: Path, secret: SecretContext) -> None:
    path = tmp_path / "context.secret"
    write_private_file(path, secret.to_bytes())
    path.chmod(0o644)
    with pytest.raises(KeyCustodyError, match="chmod 600"):
        load_secret_context(path)


def test_context_write_private_file_refuses_to_overwrite_without_force(tmp_path: Path) -> None:
    path = tmp_path / "context.secret"
    write_private_file(path, b"first")
    with pytest.raises(ConfigurationError, match="--force"):
        write_private_file(path, b"second")
    assert path.read_bytes() == b"first"
    write_private_file(path, b"second", force=True)
    assert path.read_bytes() == b"second"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_context_write_private_file_force_over_readable_file_ends_0600(tmp_path: Path) -> None:
    path = tmp_path / "context.secret"
    path.write_bytes(b"old")
    path.chmod(0o644)
    write_private_file(path, b"new", force=True)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_context_write_private_file_does_not_follow_a_planted_temporary_symlink(tmp_path: Path) -> None:
    """A pre-existing ``.<name>.tmp`` symlink must not receive the secret, nor become the key file.

    The temporary file is opened without O_EXCL / O_NOFOLLOW, so anyone able to write into the key folder can
    plant the link and read the key (and the final path ends up a symlink to their file).
    """
    path = tmp_path / "context.secret"
    planted = tmp_path / "elsewhere"
    planted.write_bytes(b"")
    planted.chmod(0o644)
    (tmp_path / ".context.secret.tmp").symlink_to(planted)
    write_private_file(path, b"SECRET-KEY-BYTES")
    assert not path.is_symlink()
    assert b"SECRET-KEY-BYTES" not in planted.read_bytes()
    assert path.read_bytes() == b"SECRET-KEY-BYTES"


def test_context_public_from_bytes_refuses_a_secret_file(secret: SecretContext) -> None:
    with pytest.raises(KeyCustodyError, match="secret-context file"):
        PublicContext.from_bytes(secret.to_bytes(), source="context.public")


def test_context_secret_from_bytes_refuses_a_public_file(public: PublicContext) -> None:
    with pytest.raises(KeyCustodyError, match="public-context file"):
        SecretContext.from_bytes(public.to_bytes(), source="context.secret")


def test_context_load_public_context_refuses_a_secret_file(tmp_path: Path, secret: SecretContext) -> None:
    path = tmp_path / "context.public"
    write_private_file(path, secret.to_bytes())
    with pytest.raises(KeyCustodyError, match=str(path)):
        load_public_context(path)


def test_context_public_from_bytes_refuses_a_context_with_secret_key_inside(secret: SecretContext) -> None:
    """A file labelled public whose TenSEAL bytes still hold the secret key is refused by type, not trusted."""
    raw = _serialise(secret.tenseal, secret=True)
    forged = msgpack.packb(
        {
            "format": 1,
            "kind": "public-context",
            "params": secret.params.to_dict(),
            "fingerprint": hashlib.sha256(raw).hexdigest(),
            "tenseal": raw,
        },
        use_bin_type=True,
    )
    with pytest.raises(KeyCustodyError, match="secret key"):
        PublicContext.from_bytes(forged)


def test_context_public_from_bytes_refuses_wrong_fingerprint(public: PublicContext) -> None:
    payload = msgpack.unpackb(public.to_bytes(), raw=False)
    payload["fingerprint"] = "0" * 64
    with pytest.raises(CryptoError, match="fingerprint does not match"):
        PublicContext.from_bytes(msgpack.packb(payload, use_bin_type=True))


@pytest.mark.parametrize(
    "data",
    [b"", b"\x00\x01garbage", msgpack.packb([1, 2, 3]), msgpack.packb({"format": 2}), msgpack.packb({"format": 1})],
    ids=["empty", "garbage", "list", "format-2", "fields-missing"],
)
def test_context_from_bytes_refuses_non_context_files(data: bytes) -> None:
    for loader in (PublicContext.from_bytes, SecretContext.from_bytes):
        with pytest.raises(CryptoError, match="not a MedHeaven context file"):
            loader(data)


def test_context_load_public_context_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="keys init"):
        load_public_context(tmp_path / "context.public")


def test_context_fingerprint_is_sha256_of_public_tenseal_bytes_and_key_commitment(
    secret: SecretContext, key_files: tuple[Path, Path]
) -> None:
    public = secret.public()
    assert public.fingerprint == secret.fingerprint
    keyless = _serialise(public.tenseal, secret=False, encryption=SYMMETRIC)
    commitment = hashlib.sha256(
        b"medheaven-key-commitment/1\x00" + _serialise(secret.tenseal, secret=True, encryption=SYMMETRIC)
    ).digest()
    assert public.key_id == commitment
    assert secret.fingerprint == hashlib.sha256(keyless + commitment).hexdigest()
    loaded_public = load_public_context(key_files[1])
    loaded_secret = load_secret_context(key_files[0])
    assert loaded_public.fingerprint == loaded_secret.fingerprint == secret.fingerprint
    # recomputed from the key, not merely copied from the file
    assert loaded_secret.public().key_id == commitment
    assert loaded_secret.public().fingerprint == secret.fingerprint


def test_context_public_key_mode_fingerprint_is_sha256_of_public_tenseal_bytes() -> None:
    secret = secret_context(DEFAULT_PARAMS, encryption=PUBLIC_KEY)
    public = PublicContext.from_bytes(secret.public().to_bytes())
    assert public.key_id == b""
    assert secret.fingerprint == hashlib.sha256(_serialise(public.tenseal, secret=False)).hexdigest()


def test_context_public_file_with_another_key_commitment_is_refused(secret: SecretContext) -> None:
    payload = msgpack.unpackb(secret.public().to_bytes(), raw=False)
    payload["key_id"] = hashlib.sha256(b"someone else's key").digest()
    with pytest.raises(CryptoError, match="fingerprint does not match"):
        PublicContext.from_bytes(msgpack.packb(payload, use_bin_type=True))


@pytest.mark.parametrize("encryption", ENCRYPTION_MODES)
def test_context_fingerprints_differ_between_key_sets(encryption: str) -> None:
    one = secret_context(DEFAULT_PARAMS, encryption=encryption)
    other = secret_context(DEFAULT_PARAMS, "other", encryption=encryption)
    assert one.fingerprint != other.fingerprint


def test_context_secret_from_bytes_refuses_a_fingerprint_that_does_not_match_its_key(secret: SecretContext) -> None:
    """The public context checks its fingerprint on load; the secret one trusts whatever the file claims.

    A hospital holding such a file would sign envelopes under a fingerprint that is not its key's, and the
    aggregator would add ciphertexts of two key sets into one garbage model without noticing.
    """
    payload = msgpack.unpackb(secret.to_bytes(), raw=False)
    payload["fingerprint"] = secret_context(DEFAULT_PARAMS, "other").fingerprint
    with pytest.raises(CryptoError, match="fingerprint"):
        SecretContext.from_bytes(msgpack.packb(payload, use_bin_type=True))


@pytest.mark.parametrize("length", [1, 100, DEFAULT_PARAMS.slots])
def test_context_secret_round_trip_through_file_decrypts(
    tmp_path: Path, secret: SecretContext, public: PublicContext, length: int
) -> None:
    path = tmp_path / "context.secret"
    write_private_file(path, secret.to_bytes())
    loaded = load_secret_context(path)
    values = np.linspace(-1.0, 1.0, length)
    chunk = secret.encrypt(values)
    assert np.max(np.abs(loaded.decrypt(chunk) - values)) <= DEFAULT_PARAMS.error_bound
    # a ciphertext that went through the aggregator's public context still decrypts with the loaded key
    through_public = ts.ckks_vector_from(public.tenseal, chunk).serialize()
    assert np.max(np.abs(loaded.decrypt(through_public) - values)) <= DEFAULT_PARAMS.error_bound


# -- the key ceremony's command ------------------------------------------------------------------------------


@pytest.mark.parametrize("encryption", ENCRYPTION_MODES)
def test_context_keys_init_command_writes_the_chosen_mode(encryption: str, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from medheaven.cli.root import app

    result = CliRunner().invoke(
        app, ["keys", "init", "--out", str(tmp_path), "--scheme", "ckks", "--encryption", encryption, "--json"]
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["encryption"] == encryption
    secret = load_secret_context(tmp_path / "context.secret")
    public = load_public_context(tmp_path / "context.public")
    assert secret.encryption == public.encryption == encryption
    assert secret.fingerprint == public.fingerprint
    assert stat.S_IMODE((tmp_path / "context.secret").stat().st_mode) == 0o600
    shown = CliRunner().invoke(app, ["keys", "show", str(tmp_path / "context.public"), "--json"])
    assert json.loads(shown.stdout)["encryption"] == encryption


def test_context_keys_init_command_refuses_an_unknown_mode(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from medheaven.cli.root import app

    result = CliRunner().invoke(
        app, ["keys", "init", "--out", str(tmp_path), "--scheme", "ckks", "--encryption", "rot13"]
    )
    assert result.exit_code == 2, result.output
    assert "rot13" in result.output and "symmetric" in result.output
    assert not (tmp_path / "context.secret").exists()


def test_context_keys_init_command_defaults_to_bfv_masked(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from medheaven.cli.root import app
    from medheaven.crypto.bfv import BfvPublicKeys, BfvSecretKeys
    from medheaven.crypto.codec import load_public_keys, load_secret_keys

    result = CliRunner().invoke(app, ["keys", "init", "--out", str(tmp_path), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["scheme"] == "bfv-masked"
    secret = load_secret_keys(tmp_path / "context.secret")
    public = load_public_keys(tmp_path / "context.public")
    assert isinstance(secret, BfvSecretKeys) and isinstance(public, BfvPublicKeys)
    assert secret.fingerprint == public.fingerprint
    assert stat.S_IMODE((tmp_path / "context.secret").stat().st_mode) == 0o600
    shown = json.loads(CliRunner().invoke(app, ["keys", "show", str(tmp_path / "context.public"), "--json"]).stdout)
    assert shown["scheme"] == "bfv-masked" and shown["has_secret_key"] is False
    with pytest.raises(CryptoError, match="bfv-masked"):
        load_secret_context(tmp_path / "context.secret")  # the CKKS loader names the scheme instead of failing oddly
    refused = CliRunner().invoke(app, ["keys", "init", "--out", str(tmp_path / "x"), "--encryption", "public-key"])
    assert refused.exit_code != 0 and "ckks only" in refused.output

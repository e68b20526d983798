"""Hospital identities: Ed25519 keys on disk, the registry of verification keys, and verification failures."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest
from crypto_fixtures import registry_of, signing_key

from medheaven.crypto.signing import (
    HospitalRegistry,
    create_hospital_identity,
    load_signing_key,
    parse_verify_key,
    validate_hospital_id,
)
from medheaven.errors import ConfigurationError, KeyCustodyError, SignatureError, UnknownHospitalError

MESSAGE = b"medheaven-envelope/1\x00header"


def test_signing_registry_round_trip_through_json() -> None:
    registry = registry_of("st-mary", "general_2", "0clinic")
    restored = HospitalRegistry.from_dict(json.loads(json.dumps(registry.to_dict())))
    assert restored == registry
    assert sorted(restored.keys) == ["0clinic", "general_2", "st-mary"]
    signature = signing_key("general_2").sign(MESSAGE)
    restored.verify("general_2", MESSAGE, signature)


def test_signing_registry_to_dict_is_public_material_only() -> None:
    data = registry_of("st-mary").to_dict()
    assert data == {"format": 1, "hospitals": {"st-mary": {"verify_key": signing_key("st-mary").verify_key_hex()}}}


def test_signing_registry_without_hospital() -> None:
    registry = registry_of("st-mary", "general").without_hospital("general")
    assert list(registry.keys) == ["st-mary"]
    with pytest.raises(UnknownHospitalError, match="'general' is not registered"):
        registry.verify("general", MESSAGE, signing_key("general").sign(MESSAGE))


@pytest.mark.parametrize(
    "hospital_id",
    ["", "St-Mary", "-lead", "_lead", "a" * 64, "st mary", "../etc", "h/1", "h.1", "h\n", "é", 5, None],
)
def test_signing_invalid_hospital_ids_refused(hospital_id: Any) -> None:
    with pytest.raises(ConfigurationError, match="is not valid"):
        validate_hospital_id(hospital_id)
    with pytest.raises(ConfigurationError, match="is not valid"):
        HospitalRegistry().with_hospital(hospital_id, signing_key("st-mary").verify_key_hex())


@pytest.mark.parametrize("hospital_id", ["a", "st-mary", "general_2", "0clinic", "a" * 63])
def test_signing_valid_hospital_ids_accepted(hospital_id: str) -> None:
    assert validate_hospital_id(hospital_id) == hospital_id


@pytest.mark.parametrize("bad", [{"hospitals": {"BAD": {"verify_key": "00"}}}, {"hosp": {}}, [], {"hospitals": []}])
def test_signing_registry_from_dict_refuses_malformed(bad: Any) -> None:
    with pytest.raises(ConfigurationError):
        HospitalRegistry.from_dict(bad)


@pytest.mark.parametrize("key_hex", ["", "zz" * 32, "00" * 31, "00" * 33])
def test_signing_with_hospital_refuses_bad_verify_key(key_hex: str) -> None:
    with pytest.raises(ConfigurationError, match="not a hex Ed25519 verification key"):
        HospitalRegistry().with_hospital("st-mary", key_hex)


def test_signing_verify_with_wrong_key_fails() -> None:
    registry = HospitalRegistry().with_hospital("st-mary", signing_key("general").verify_key_hex())
    with pytest.raises(SignatureError, match="does not verify with hospital 'st-mary'"):
        registry.verify("st-mary", MESSAGE, signing_key("st-mary").sign(MESSAGE))


def test_signing_verify_altered_message_fails() -> None:
    registry = registry_of("st-mary")
    signature = signing_key("st-mary").sign(MESSAGE)
    registry.verify("st-mary", MESSAGE, signature)
    with pytest.raises(SignatureError, match="altered or signed by someone else"):
        registry.verify("st-mary", MESSAGE + b"!", signature)


def test_signing_unknown_hospital_refused() -> None:
    with pytest.raises(UnknownHospitalError, match="medheaven hospital register"):
        registry_of("st-mary").verify("general", MESSAGE, signing_key("general").sign(MESSAGE))


def test_signing_identity_files_round_trip(tmp_path: Path) -> None:
    signing_path, verify_path = create_hospital_identity("st-mary", tmp_path)
    assert stat.S_IMODE(os.stat(signing_path).st_mode) == 0o600
    key = load_signing_key(signing_path, hospital_id="st-mary")
    verify_hex = verify_path.read_text()
    assert parse_verify_key(verify_hex, source=str(verify_path)) is not None
    registry = HospitalRegistry().with_hospital("st-mary", verify_hex)
    registry.verify("st-mary", MESSAGE, key.sign(MESSAGE))


def test_signing_identity_refuses_overwrite_without_force(tmp_path: Path) -> None:
    signing_path, _ = create_hospital_identity("st-mary", tmp_path)
    before = signing_path.read_bytes()
    with pytest.raises(ConfigurationError, match="--force"):
        create_hospital_identity("st-mary", tmp_path)
    assert signing_path.read_bytes() == before
    create_hospital_identity("st-mary", tmp_path, force=True)
    assert signing_path.read_bytes() != before


def test_signing_load_refuses_readable_signing_key(tmp_path: Path) -> None:
    signing_path, _ = create_hospital_identity("st-mary", tmp_path)
    signing_path.chmod(0o644)
    with pytest.raises(KeyCustodyError, match="chmod 600"):
        load_signing_key(signing_path, hospital_id="st-mary")


def test_signing_load_refuses_non_key_file(tmp_path: Path) -> None:
    path = tmp_path / "st-mary.signing.pem"
    path.write_bytes(b"not a pem")
    path.chmod(0o600)
    with pytest.raises(ConfigurationError, match="not a PEM Ed25519 signing key"):
        load_signing_key(path, hospital_id="st-mary")


def test_registry_carries_agreement_keys_and_old_registries_load_without_them(tmp_path: Path) -> None:
    from medheaven.crypto.masks import create_agreement_key

    _, public = create_agreement_key("st-mary", tmp_path)
    old = registry_of("st-mary", "general")  # written before masking: verify keys only
    assert HospitalRegistry.from_dict(old.to_dict()).agreement == {}
    with pytest.raises(ConfigurationError, match=r"no agreement key for st-mary, general.*medheaven hospital init"):
        old.require_agreement_keys(["st-mary", "general"])
    registry = old.with_hospital("st-mary", signing_key("st-mary").verify_key_hex(), public.read_text())
    again = HospitalRegistry.from_dict(registry.to_dict())
    assert again.agreement == {"st-mary": public.read_text().strip()}
    assert set(again.require_agreement_keys(["st-mary"])) == {"st-mary"}
    with pytest.raises(ConfigurationError, match="not a hex X25519 agreement key"):
        old.with_hospital("general", signing_key("general").verify_key_hex(), "00" * 5)
    assert "st-mary" not in again.without_hospital("st-mary").agreement

"""Shared builders for the CKKS tests: cached key sets, hospital identities and signed update envelopes.

Key generation is cheap at N=4096 (~15 ms) but not free at N=8192, and every test module needs the same few key
sets, so they are built once per process. Nothing here is a pytest fixture: the test modules wrap these builders in
module-scoped fixtures of their own (``tests/`` has no ``conftest.py`` of ours to share fixtures through).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cache

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from medheaven.crypto.context import SYMMETRIC, PublicContext, SecretContext, create_key_material
from medheaven.crypto.envelope import Envelope, EnvelopeExpectation, EnvelopeLimits
from medheaven.crypto.packing import encrypt_chunks, pack_update
from medheaven.crypto.planning import CkksParameters, plan_ckks_parameters
from medheaven.crypto.signing import HospitalRegistry, SigningKey

#: the project's default plan: N=4096, chain (60, 49)
DEFAULT_PARAMS = plan_ckks_parameters()
#: 20 hospitals of up to 10**6 samples each: the planner moves to N=8192, chain (60, 60, 60)
WIDE_PARAMS = plan_ckks_parameters(max_abs_weight=1.0, max_total_samples=20 * 10**6, precision=1e-6)

RUN = "run-1"
ROUND = 3
BASE = hashlib.sha256(b"encrypted global model of round 2").hexdigest()
EARLIER_BASE = hashlib.sha256(b"encrypted global model of round 1").hexdigest()


def secret_context(params: CkksParameters, label: str = "federation", *, encryption: str = SYMMETRIC) -> SecretContext:
    """One key set per (params, label, mode); another label gives an independent key set with the same parameters."""
    return _key_set(params, label, encryption)[0]


def public_context(params: CkksParameters, label: str = "federation", *, encryption: str = SYMMETRIC) -> PublicContext:
    return _key_set(params, label, encryption)[1]


@cache
def _key_set(params: CkksParameters, label: str, encryption: str) -> tuple[SecretContext, PublicContext]:
    del label  # only part of the cache key
    secret = create_key_material(params, encryption=encryption)
    return secret, secret.public()


@cache
def signing_key(hospital_id: str) -> SigningKey:
    return SigningKey(hospital_id, Ed25519PrivateKey.generate())


def registry_of(*hospital_ids: str) -> HospitalRegistry:
    registry = HospitalRegistry()
    for hospital_id in hospital_ids:
        registry = registry.with_hospital(hospital_id, signing_key(hospital_id).verify_key_hex())
    return registry


@dataclass(frozen=True)
class RoundSetup:
    """What the aggregator of one round knows: expectation and decoder limits for a packed vector length."""

    params: CkksParameters
    fingerprint: str
    length: int

    def expectation(self, *, round_number: int = ROUND, base: str = BASE, run: str = RUN) -> EnvelopeExpectation:
        return EnvelopeExpectation(
            kind="update",
            run=run,
            round=round_number,
            fingerprint=self.fingerprint,
            base=base,
            length=self.length,
            chunk_count=self.params.chunk_count(self.length),
            scale_bits=self.params.scale_bits,
        )

    def limits(self) -> EnvelopeLimits:
        return EnvelopeLimits(
            max_chunks=self.params.chunk_count(self.length),
            max_chunk_bytes=self.params.max_chunk_bytes(),
            max_length=self.length,
        )


def update_envelope(
    secret: SecretContext,
    weights: np.ndarray,
    n_samples: int,
    *,
    hospital: str,
    round_number: int = ROUND,
    base: str = BASE,
    run: str = RUN,
    sign: bool = True,
) -> Envelope:
    """What a hospital uploads: pre-scaled, packed, encrypted, signed."""
    packed = pack_update(weights, n_samples, params=secret.params)
    envelope = Envelope(
        kind="update",
        run=run,
        round=round_number,
        hospital=hospital,
        fingerprint=secret.fingerprint,
        base=base,
        length=packed.size,
        scale_bits=secret.params.scale_bits,
        chunks=encrypt_chunks(secret, packed),
    )
    return envelope.signed_by(signing_key(hospital)) if sign else envelope

"""MedHeaven's error tree. Every message says what went wrong *and* what the user should do.

MedHeavenError
├── ConfigurationError          a setting, key file or permission is wrong
│   └── KeyCustodyError         a secret key is where it must not be, or is readable by others
├── DataError                   a data file cannot be used
│   ├── DataFileError           missing, empty, unreadable file
│   ├── SchemaError             unknown schema, missing/extra columns, bad schema file
│   └── TargetError             target column missing, unparseable or single-class
├── CryptoError
│   ├── ParameterPlanningError  no CKKS parameters satisfy the bounds asked for
│   ├── PackingError            weights that cannot be encrypted safely (non-finite, out of bounds)
│   └── EnvelopeError           an envelope or receipt was rejected; one subclass per reason
│       ├── EnvelopeFormatError       undecodable msgpack, missing or wrongly typed fields
│       ├── EnvelopeVersionError      unknown format version or kind
│       ├── EnvelopeSizeError         a declared or actual size beyond the decoder's bounds
│       ├── ContextMismatchError      encrypted under another key set
│       ├── RunMismatchError          for another run
│       ├── RoundMismatchError        for another round, or trained from another base model
│       ├── UnknownHospitalError      sender not in the registry
│       ├── SignatureError            missing or invalid signature
│       ├── ShapeMismatchError        vector length or chunk count disagrees with the model
│       ├── CiphertextError           a chunk is not a valid ciphertext for the public context
│       └── DigestMismatchError       payload does not match the digest that announced it
├── StoreError
│   ├── StoreKeyNotFoundError   nothing stored under that key
│   ├── StoreConflictError      the write would overwrite a committed file
│   └── StoreAccessError        credentials, folder or permissions
└── RoundError
    ├── QuorumNotReachedError   too few hospitals folded before the deadline
    ├── RoundClosedError        an update arrived for a round that is already committed or failed
    └── RunStateError           the run's records do not allow what was asked (resume, start)
"""

from __future__ import annotations


class MedHeavenError(Exception):
    """Root of every error MedHeaven raises on purpose."""


class ConfigurationError(MedHeavenError):
    pass


class KeyCustodyError(ConfigurationError):
    pass


class DataError(MedHeavenError):
    pass


class DataFileError(DataError):
    pass


class SchemaError(DataError):
    pass


class TargetError(DataError):
    pass


class CryptoError(MedHeavenError):
    pass


class ParameterPlanningError(CryptoError):
    pass


class PackingError(CryptoError):
    pass


class EnvelopeError(CryptoError):
    """An envelope or receipt was refused. ``reason`` is a stable short code for logs and manifests."""

    reason = "envelope"


class EnvelopeFormatError(EnvelopeError):
    reason = "format"


class EnvelopeVersionError(EnvelopeError):
    reason = "version"


class EnvelopeSizeError(EnvelopeError):
    reason = "size"


class ContextMismatchError(EnvelopeError):
    reason = "context"


class RunMismatchError(EnvelopeError):
    reason = "run"


class RoundMismatchError(EnvelopeError):
    reason = "round"


class UnknownHospitalError(EnvelopeError):
    reason = "unknown-hospital"


class SignatureError(EnvelopeError):
    reason = "signature"


class ShapeMismatchError(EnvelopeError):
    reason = "shape"


class CiphertextError(EnvelopeError):
    reason = "ciphertext"


class DigestMismatchError(EnvelopeError):
    reason = "digest"


class StoreError(MedHeavenError):
    pass


class StoreKeyNotFoundError(StoreError):
    pass


class StoreConflictError(StoreError):
    pass


class StoreAccessError(StoreError):
    pass


class BrokerUnreachableError(MedHeavenError):
    """The broker/result backend stayed unreachable longer than the coordinator's outage tolerance."""


class RoundError(MedHeavenError):
    pass


class QuorumNotReachedError(RoundError):
    pass


class RoundClosedError(RoundError):
    pass


class RunStateError(RoundError):
    pass

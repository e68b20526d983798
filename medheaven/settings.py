"""The one settings object. Every knob has a name, a type, a default and a ``MEDHEAVEN_*`` variable.

Read once when a process starts (``Settings()``); library functions take keyword arguments and never read the
environment themselves. The Celery configuration is derived from this object in ``workers.config``.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

#: the TLS settings of a rediss:// broker and the redis-py/kombu keyword each one becomes
_REDIS_TLS_KEYWORDS = {"redis_tls_ca": "ssl_ca_certs", "redis_tls_cert": "ssl_certfile", "redis_tls_key": "ssl_keyfile"}
SchemaName = Literal["diabetes130", "johns", "generic", "prepared"]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MEDHEAVEN_", extra="ignore", frozen=True)

    # --- transport -----------------------------------------------------------------------------------------
    broker_url: str = Field(
        default="memory://",
        description="Celery broker. memory:// runs everything in one process; redis://[:password@]host:port/db "
        "or rediss:// (TLS) for a real deployment.",
    )
    result_backend: str | None = Field(
        default=None,
        description="Celery result backend; defaults to the broker URL (cache+memory:// in memory).",
    )
    redis_tls_ca: Path | None = Field(default=None, description="CA bundle for rediss:// brokers.")
    redis_tls_cert: Path | None = Field(default=None, description="Client certificate for rediss:// brokers.")
    redis_tls_key: Path | None = Field(default=None, description="Client key for rediss:// brokers.")
    task_time_limit: int = Field(default=3600, ge=10, description="Hard limit (s) for one hospital task.")
    dashboard_metrics: bool = Field(
        default=False,
        description="Serve Flower's /metrics (behind its login): worker names and per-hospital task runtimes.",
    )
    max_deliveries: int = Field(
        default=3,
        ge=1,
        description="A task delivered this many times without finishing is failed, not retried.",
    )

    hospitals: str = Field(
        default="", description="Comma-separated hospital ids whose queues this process declares (coordinator, Flower)."
    )
    keep_updates: bool = Field(
        default=True, description="Keep a round's update envelopes after it commits (needed by `medheaven verify`)."
    )

    # --- store ---------------------------------------------------------------------------------------------
    store: str = Field(
        default="file://./medheaven-store",
        description="Global server: file:///abs/path, file://./relative, or drive://<folder-id>.",
    )
    drive_service_account: Path | None = Field(
        default=None, description="Service-account JSON key file for the Google Drive store."
    )
    drive_oauth_settings: Path | None = Field(
        default=None,
        description="pydrive2 settings.yaml for OAuth with a user account instead of a service account.",
    )
    drive_api_root: str = Field(default="https://www.googleapis.com/", description="Drive API root URL.")
    drive_token_uri: str | None = Field(
        default=None, description="Overrides the service account's token_uri (OAuth token endpoint)."
    )
    drive_chunk_size: int = Field(default=8 * 1024 * 1024, ge=256 * 1024, description="Resumable upload chunk.")

    # --- hospital node -------------------------------------------------------------------------------------
    hospital_id: str | None = Field(default=None, description="This node's hospital id (hospital workers).")
    data_path: Path | None = Field(default=None, description="This hospital's data file.")
    schema_name: SchemaName = Field(default="diabetes130", description="Schema of the hospital's data file.")
    schema_file: Path | None = Field(default=None, description="Schema file for the generic CSV schema.")
    secret_context: Path | None = Field(default=None, description="Secret CKKS context file (hospitals only).")
    signing_key: Path | None = Field(default=None, description="This hospital's Ed25519 signing key (PEM).")
    validation_fraction: float = Field(
        default=0.1, gt=0.0, lt=1.0, description="Share of a hospital's patients held out for its validation metrics."
    )

    # --- aggregator node -----------------------------------------------------------------------------------
    context_fingerprint: str | None = Field(
        default=None,
        description="Expected sha256 of the public context; nodes refuse a store that disagrees.",
    )

    # --- coordinator ---------------------------------------------------------------------------------------
    round_timeout: float = Field(default=600.0, gt=0, description="Seconds a round waits before its deadline.")
    poll_interval: float = Field(
        default=0.2, gt=0, description="Longest wait between coordinator status reads (it wakes on task events sooner)."
    )
    max_abs_feature: float = Field(
        default=1000.0,
        gt=0,
        description="Largest feature magnitude a new run accepts (before standardisation); it sizes the encrypted "
        "statistics' scale. `medheaven-coordinator run --max-abs-feature` overrides it per run.",
    )

    @field_validator("store")
    @classmethod
    def _store_scheme(cls, value: str) -> str:
        if not (value.startswith("file://") or value.startswith("drive://")):
            raise ValueError(f"MEDHEAVEN_STORE={value!r}: use file:///path, file://./path or drive://<folder-id>")
        return value

    def hospital_ids(self) -> list[str]:
        listed = [h.strip() for h in self.hospitals.split(",") if h.strip()]
        if self.hospital_id and self.hospital_id not in listed:
            listed.append(self.hospital_id)
        return listed

    def redis_tls_files(self) -> dict[str, Path]:
        """The TLS files configured for a rediss:// broker, by setting name (``redis_tls_ca``, ...)."""
        return {name: path for name in _REDIS_TLS_KEYWORDS if (path := getattr(self, name)) is not None}

    def redis_tls_options(self) -> dict[str, Any]:
        """redis-py/kombu TLS options of a rediss:// broker: the server's certificate is always verified."""
        files = {_REDIS_TLS_KEYWORDS[name]: str(path) for name, path in self.redis_tls_files().items()}
        return {"ssl_cert_reqs": ssl.CERT_REQUIRED, **files}

    def resolved_backend(self) -> str:
        if self.result_backend:
            return self.result_backend
        if self.broker_url.startswith("memory://"):
            return "cache+memory://"
        return self.broker_url

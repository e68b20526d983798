"""The settings parse and the broker and result backend answer (``memory://`` is not a deployment broker)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from pydantic import ValidationError

from medheaven.doctor.results import CheckResult, fail, ok, redact_url
from medheaven.settings import Settings


def load_settings(factory: Callable[[], Settings] = Settings) -> tuple[Settings | None, CheckResult]:
    """Read the MEDHEAVEN_* environment once; a value that does not parse is reported by its variable name."""
    try:
        settings = factory()
    except ValidationError as exc:
        problems = "; ".join(
            f"MEDHEAVEN_{str(error['loc'][0]).upper() if error['loc'] else '?'}: {error['msg']}"
            for error in exc.errors()
        )
        return None, fail("settings", problems)
    return settings, ok("settings", "MEDHEAVEN_* variables parse")


def _tls_arguments(settings: Settings) -> tuple[dict[str, Any], str | None]:
    """redis-py TLS keyword arguments for a rediss:// URL, or the name of a configured file that is missing."""
    for name, path in settings.redis_tls_files().items():
        if not path.is_file():
            return {}, f"MEDHEAVEN_{name.upper()}={path} is not a readable file"
    return settings.redis_tls_options(), None


def _redis_arguments(url: str, settings: Settings) -> tuple[dict[str, Any], str | None]:
    """redis-py keyword arguments for ``url``, or why ``url`` cannot be a deployment broker."""
    if url.startswith("memory://") or url.startswith("cache+memory://"):
        return {}, (
            f"{url} is not a deployment broker (it only reaches this process): set MEDHEAVEN_BROKER_URL="
            "redis://:PASSWORD@HOST:6379/0, or rediss://... for TLS"
        )
    if url.startswith("rediss://"):
        return _tls_arguments(settings)
    if not url.startswith("redis://"):
        return {}, f"{redact_url(url)}: MedHeaven deployments use redis:// or rediss:// (TLS)"
    return {}, None


def _explain_redis_error(url: str, exc: Exception, timeout: float) -> str:
    import redis

    shown = redact_url(url)
    denied = isinstance(exc, redis.exceptions.AuthenticationError) or "NOAUTH" in str(exc)
    if denied and urlsplit(url).password is None:
        return f"{shown} requires a password: use redis://:PASSWORD@host:port/db ({exc})"
    if denied:
        return f"{shown} refused the credentials ({exc}): check the password (or ACL user) in the URL"
    if isinstance(exc, redis.exceptions.ResponseError):
        return f"{shown} answered PING with an error: {exc}"
    return f"cannot reach {shown} within {timeout:g}s: {exc}"


def ping_redis(url: str, settings: Settings, *, name: str, timeout: float) -> CheckResult:
    import redis

    shown = redact_url(url)
    arguments, problem = _redis_arguments(url, settings)
    if problem:
        return fail(name, problem)
    client = redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout, **arguments)
    try:
        started = time.perf_counter()
        client.ping()
        elapsed = (time.perf_counter() - started) * 1000
        policy = _eviction_policy(client)
    except (redis.exceptions.RedisError, OSError) as exc:
        return fail(name, _explain_redis_error(url, exc, timeout))
    finally:
        client.close()
    detail = f"{shown} answered PING in {elapsed:.1f} ms"
    if policy is not None and policy != "noeviction":
        return CheckResult(
            name,
            "warn",
            f"{detail}, but maxmemory-policy is {policy}: Redis may evict queued tasks under memory pressure; "
            "set maxmemory-policy noeviction",
        )
    return ok(name, detail + (f", maxmemory-policy {policy}" if policy else " (maxmemory-policy not readable)"))


def _eviction_policy(client: Any) -> str | None:
    """Redis' eviction policy, or None where an ACL user may not read the configuration."""
    import redis

    try:
        config = client.config_get("maxmemory-policy")
    except redis.exceptions.ResponseError:
        return None
    value = config.get("maxmemory-policy") if isinstance(config, dict) else None
    return value.decode() if isinstance(value, bytes) else value


def check_broker(settings: Settings, *, timeout: float = 3.0) -> CheckResult:
    return ping_redis(settings.broker_url, settings, name="broker", timeout=timeout)


def check_result_backend(settings: Settings, *, timeout: float = 3.0) -> CheckResult | None:
    """Only when MEDHEAVEN_RESULT_BACKEND names another server than the broker."""
    backend = settings.result_backend
    if not backend or backend == settings.broker_url:
        return None
    return ping_redis(backend, settings, name="result backend", timeout=timeout)

"""Celery configuration choices that matter for speed: the embedded memory:// transport must not idle."""

from __future__ import annotations

from medheaven.settings import Settings
from workers.app import create_app
from workers.config import MEMORY_POLLING_INTERVAL, celery_config


def test_memory_transport_polls_at_the_short_interval() -> None:
    app = create_app(Settings(broker_url="memory://"), hospitals=["a"])
    with app.connection_for_write() as connection:
        # kombu's default is 1 s per queue hop; a round crosses three queues.
        assert connection.transport.polling_interval == MEMORY_POLLING_INTERVAL
    assert MEMORY_POLLING_INTERVAL < 0.1


def test_redis_transport_options_keep_only_the_visibility_timeout() -> None:
    options = celery_config(Settings(broker_url="redis://127.0.0.1:6416/0"))["broker_transport_options"]
    assert "polling_interval" not in options
    assert options["visibility_timeout"] > Settings().task_time_limit

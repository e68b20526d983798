"""Queue depth per declared queue on real Redis, with no worker consuming: waiting and unacknowledged messages."""

from __future__ import annotations

from coordinator.queues import QueueDepth, queue_depths
from medheaven.settings import Settings
from workers.app import create_app
from workers.config import hospital_queue


def test_queue_depths_counts_waiting_and_unacknowledged_messages_of_a_dead_hospital(redis_url: str) -> None:
    app = create_app(Settings(broker_url=redis_url), hospitals=["qa", "qb"])
    with app.connection_for_write() as connection:
        channel = connection.default_channel
        for queue in app.conf.task_queues:
            queue(channel).declare()
            channel.queue_purge(queue.name)
        channel.client.delete(channel.unacked_key, channel.unacked_index_key)
    for _ in range(3):
        app.send_task("medheaven.hospital.train", args=({}, "qa"), queue=hospital_queue("qa"))
    app.send_task("medheaven.hospital.train", args=({}, "qb"), queue=hospital_queue("qb"))
    with app.connection_for_read() as holder:  # a worker that took qb's message and has not acknowledged it
        held = holder.SimpleQueue(hospital_queue("qb"), accept=["msgpack"]).get(timeout=5)
        depths = {d.queue: d for d in queue_depths(app, ["qa", "qb"])}
        assert depths[hospital_queue("qa")] == QueueDepth(hospital_queue("qa"), 3, 0)
        assert depths[hospital_queue("qb")] == QueueDepth(hospital_queue("qb"), 0, 1)
        assert depths["aggregate"].waiting == 0
        held.ack()
    assert {d.queue: d.unacknowledged for d in queue_depths(app, ["qa", "qb"])}[hospital_queue("qb")] == 0

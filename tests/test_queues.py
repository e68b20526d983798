"""Queue depth per declared queue on real Redis, with no worker consuming: waiting, unacknowledged and stranded
messages (unacknowledged, and held by no live worker) and live consumers."""

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
        assert depths[hospital_queue("qa")] == QueueDepth(hospital_queue("qa"), 3, 0, consumers=0, stranded=0)
        # no live worker reports the held task: it is stranded, and the operator's line says so
        assert depths[hospital_queue("qb")] == QueueDepth(hospital_queue("qb"), 0, 1, consumers=0, stranded=1)
        assert "1 unacknowledged, 0 live consumers, 1 stranded" in depths[hospital_queue("qb")].describe()
        assert depths["aggregate"].waiting == 0
        held.ack()
    after = {d.queue: d for d in queue_depths(app, ["qa", "qb"], ask_workers=False)}
    assert after[hospital_queue("qb")] == QueueDepth(hospital_queue("qb"), 0, 0)

"""A hospital killed mid-round on real worker processes, under the pairwise-masked default: the round commits with
the survivors through a fresh attempt, and the dropped hospital's update is not recoverable from the store.

Why it is not recoverable (the argument of docs/architecture.md, "Dropouts", checked here on the store's files):

* the killed hospital never uploaded in attempt 1 (it was stopped while training and killed), so the store holds
  nothing derived from its update; and hospitals refuse to upload into an attempt past its deadline or once it has
  a tombstone, so nothing can arrive later either;
* attempt 1's uploads of the survivors still carry their pairwise masks with the killed hospital: their sum (all a
  key holder can form from attempt 1) does not unmask: its sample-count lane is a uniform residue, refused;
* attempt 2 re-trains and re-masks with masks of attempt 2 (the scope names the attempt and the cohort), so its
  uploads share no mask with attempt 1's and the two attempts cannot be combined to cancel one;
* the tombstone records attempt 1's cohort, who was missing and who had uploaded, and the committed round verifies
  bit for bit (``verify_round`` sums the folded uploads' residues mod t against the committed sum).
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
from fault_support import BackgroundRun, assert_run_sound, federation, kill_family, redis_server, wait_for
from federation_support import small_simulation

from medheaven.crypto.codec import BfvMaskedCodec, hospital_codec, load_secret_keys
from medheaven.crypto.envelope import Envelope
from medheaven.crypto.packing import unpack_average
from medheaven.errors import PackingError
from medheaven.federated.ledger import AttemptTombstone
from medheaven.federated.paths import RunPaths
from medheaven.federated.protocol import envelope_limits
from medheaven.federated.wire import RoundSpec, RunDescription

pytestmark = pytest.mark.slow


def test_fault_hospital_killed_after_the_others_uploaded_round_commits_by_a_fresh_attempt(tmp_path: Path) -> None:
    simulation = small_simulation(tmp_path / "sim", hospitals=3, rows=1800)
    h1, h2, victim = simulation.hospitals
    with redis_server(tmp_path / "redis") as redis, federation(simulation, redis.url(), tmp_path / "logs") as fed:
        # a long deadline on purpose: nothing here may wait for it (the attempt is abandoned once the victim's lease
        # expires, and the final validation skips the victim)
        config = fed.config("dropout", rounds=1, min_hospitals=2, round_timeout=240)
        started = time.time()
        run = BackgroundRun(fed.coordinator(config))

        # stop the victim the moment its round-1 training starts, let the others upload and be folded, then kill it
        def training() -> int | None:
            if run.error is not None:
                raise run.error
            state, info = fed.train_state(config.run, 1, victim)
            return int(info["pid"]) if state == "STARTED" and isinstance(info, dict) else None

        process = psutil.Process(wait_for(training, timeout=120, what="the victim's training", interval=0.02))
        process.send_signal(signal.SIGSTOP)
        wait_for(
            lambda: sorted(fed.folded(config.run, 1)) == [h1, h2] or None,
            timeout=60,
            what="the survivors' attempt-1 updates to be folded",
        )
        kill_family(fed.worker(f"{victim}-0"))
        history = run.result(timeout=300)

    store = simulation.store()
    paths = RunPaths(config.run)
    description = RunDescription.from_dict(store.get_json(paths.model))
    assert description.scheme.masked
    assert history[0]["attempt"] == 2 and sorted(history[0]["participants"]) == [h1, h2]
    spec = RoundSpec.from_dict(store.get_json(paths.spec("update", 1)))
    assert spec.attempt == 2 and spec.cohort == (h1, h2)  # a new cohort of the hospitals still answering

    tombstone = AttemptTombstone.from_dict(store.get_json(paths.failure("update", 1, 1)))
    assert tombstone.cohort == (h1, h2, victim) and tombstone.missing == (victim,)
    assert tombstone.uploaded == (h1, h2) and "cohort incomplete" in tombstone.reason
    # abandoned as soon as the victim's worker was known lost, by the aggregator's policy with the coordinator's word
    assert f"{victim} worker lost" in tombstone.reason and "abandoned now" in tombstone.reason
    # attempt 1 opened after ``started``, so its deadline lies past started + round_timeout: not waited out
    assert spec.opened_at < started + config.round_timeout
    [failed] = store.get_json(paths.failed_attempts)
    assert failed["statuses"] == {h1: "folded", h2: "folded", victim: "worker lost"}
    # the final validation did not wait for the dead hospital either: skipped, with its state
    final = store.get_json(paths.final_validation)
    assert sorted(final["metrics"]) == [h1, h2] and final["missing"] == []
    assert final["skipped"] == {victim: f"worker lost in round 1 ({failed['reasons'][victim]})"}
    assert not store.exists(paths.update("update", 1, 1, victim))  # nothing of the victim's update in the store
    assert not store.exists(paths.update("update", 1, 2, victim))

    # what a key holder can do with attempt 1: add every upload it has; the victim's masks keep the sum masked
    secret = load_secret_keys(simulation.keys.secret)
    codec = hospital_codec(description.scheme, secret)
    assert isinstance(codec, BfvMaskedCodec)
    limits = envelope_limits(description)
    t_mask = np.uint64(codec.params.plain_modulus - 1)

    def residues(attempt: int, hospital: str) -> np.ndarray:
        envelope = Envelope.from_bytes(store.get(paths.update("update", 1, attempt, hospital)), limits=limits)
        return codec.decode_residues(envelope.chunks, length=envelope.length)

    failed_sum = (residues(1, h1) + residues(1, h2)) & t_mask
    half = np.uint64(codec.params.plain_modulus // 2)
    signed = ((failed_sum + half) & t_mask).astype(np.int64) - np.int64(half)
    with pytest.raises(PackingError, match=r"masks did not cancel|empty or corrupt"):
        unpack_average(np.ldexp(signed.astype(np.float64), -codec.params.scale_bits), exact=True)
    # attempt 2 masked afresh: each survivor's two uploads differ in (nearly) every lane
    assert np.mean(residues(1, h1) == residues(2, h1)) < 0.01

    reports = assert_run_sound(simulation, config.run, rounds=1, expected={1: {h1, h2}})
    assert reports[1]["mismatched_lanes"] == 0 and reports[1]["within_bound"]

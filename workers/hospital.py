"""Hospital worker: ``celery -A workers.hospital worker -Q hospital.<id>``.

A thin adapter: each task parses its arguments, calls ``medheaven.federated.hospital.HospitalNode`` and returns a
small dict. TensorFlow and TenSEAL are imported inside the tasks, never in the prefork parent, because a parent that
imported TensorFlow before forking leaves its children hung.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from celery import Task, bootsteps

from workers.app import app, settings
from workers.guard import count_delivery
from workers.lease import announce

if TYPE_CHECKING:
    from medheaven.federated.hospital import HospitalNode

log = logging.getLogger(__name__)

_NODES: dict[str, HospitalNode] = {}
_NODES_LOCK = threading.Lock()
_node_factory: Callable[[str], HospitalNode] | None = None


def use_node_factory(factory: Callable[[str], HospitalNode] | None) -> None:
    """The in-process demo serves several hospitals from one process; a real worker serves one."""
    global _node_factory
    _node_factory = factory
    _NODES.clear()


def node_for(hospital_id: str) -> HospitalNode:
    with _NODES_LOCK:
        node = _NODES.get(hospital_id)
        if node is None:
            if _node_factory is not None:
                node = _node_factory(hospital_id)
            else:
                from medheaven.federated.nodes import hospital_node_from_settings

                node = hospital_node_from_settings(settings(), expected_hospital=hospital_id)
            _NODES[hospital_id] = node
        return node


class HospitalStartupCheck(bootsteps.Step):  # type: ignore[misc]
    """Refuse to start a hospital worker whose configuration is incomplete, whose secret key is exposed or whose
    data file does not load with its schema.

    A bootstep, not a ``worker_init`` receiver: Celery logs and swallows exceptions raised by signal receivers,
    whereas an exception in a bootstep aborts the worker's start-up with a non-zero exit.
    """

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        if _node_factory is None:
            from medheaven.federated.nodes import check_hospital_data, check_hospital_settings

            check_hospital_settings(settings())
            check_hospital_data(settings())


app.steps["worker"].add(HospitalStartupCheck)


def _guard(task: Task) -> None:
    count_delivery(task, limit=settings().max_deliveries)
    announce(task)  # the worker's main pid joins the STARTED meta: see workers.lease


@app.task(name="medheaven.hospital.stats", bind=True)
def stats(self: Task, spec: dict[str, Any], hospital: str) -> dict[str, Any]:
    """Encrypt this hospital's sufficient statistics for the federated standardiser."""
    from medheaven.federated.wire import RoundSpec

    _guard(self)
    return node_for(hospital).compute_stats(RoundSpec.from_dict(spec)).to_dict()


@app.task(name="medheaven.hospital.init_model", bind=True)
def init_model(self: Task, run: str, hospital: str) -> dict[str, Any]:
    """Round 0: a key holder encrypts the deterministic initial model and stores it (idempotent)."""
    from medheaven.federated.nodes import store_initial_model

    _guard(self)
    return store_initial_model(node_for(hospital), run)


@app.task(name="medheaven.hospital.train", bind=True)
def train(self: Task, spec: dict[str, Any], hospital: str) -> dict[str, Any]:
    """Fetch and check the global model, evaluate, train locally, upload the encrypted update; return a receipt."""
    from medheaven.errors import RoundClosedError
    from medheaven.federated.results import closed_reason
    from medheaven.federated.wire import RoundSpec

    _guard(self)
    round_spec = RoundSpec.from_dict(spec)
    node = node_for(hospital)
    closed = closed_reason(node.store, round_spec)
    if closed is not None:
        # acknowledged (a failed task is acked) and dropped without training; its link (the fold) never runs
        log.warning("dropped the train task of %s for %s round %s untrained: %s", hospital, round_spec.kind,
                    round_spec.round, closed)  # fmt: skip
        raise RoundClosedError(f"train task of {hospital!r} dropped without training: {closed}")
    folded = _already_folded(node.store, round_spec, hospital)
    if folded is not None:
        # a task given back after a false alarm (its worker was frozen, not dead, and finished after all)
        log.warning("dropped the train task of %s for %s round %s untrained: %s", hospital, round_spec.kind,
                    round_spec.round, folded)  # fmt: skip
        raise RoundClosedError(f"train task of {hospital!r} dropped without training: {folded}")
    return node.train(round_spec).to_dict()


def _already_folded(store: Any, spec: Any, hospital: str) -> str | None:
    from medheaven.federated.ledger import Ledger
    from medheaven.federated.paths import RunPaths

    key = RunPaths(spec.run).ledger(spec.kind, spec.round, spec.attempt)
    if store.exists(key) and hospital in Ledger.from_dict(store.get_json(key)).folded_hospitals:
        return f"{hospital}'s update is already folded into attempt {spec.attempt} of {spec.kind} round {spec.round}"
    return None


@app.task(name="medheaven.hospital.validate", bind=True)
def validate(self: Task, run: str, round_number: int, hospital: str) -> dict[str, Any]:
    """Metrics of a committed global model on this hospital's validation patients (used to select a round)."""
    _guard(self)
    return {"hospital": hospital, "round": round_number, "metrics": node_for(hospital).validate(run, round_number)}


@app.task(name="medheaven.hospital.evaluate_test", bind=True)
def evaluate_test(self: Task, run: str, round_number: int, hospital: str) -> dict[str, Any]:
    """Simulation only: a key holder scores a committed global model on the run's held-out test file."""
    from medheaven.federated.nodes import score_test_file

    _guard(self)
    return score_test_file(node_for(hospital), run, round_number)


@app.task(name="medheaven.hospital.layout_propose", bind=True)
def layout_propose(self: Task, hospital: str, min_patients: int) -> dict[str, Any]:
    """Layout phase, step 1: column kinds and the levels held for >= k patients (names only, no counts)."""
    from medheaven.federated.layout_phase import propose_levels

    _guard(self)
    return propose_levels(node_for(hospital), int(min_patients))


@app.task(name="medheaven.hospital.layout_counts", bind=True)
def layout_counts(self: Task, spec: dict[str, Any], hospital: str) -> dict[str, Any]:
    """Layout phase, step 2: encrypt the per-candidate-level patient counts; the receipt goes to the aggregator."""
    from medheaven.federated.layout_phase import encrypt_level_counts
    from medheaven.federated.wire import RoundSpec

    _guard(self)
    return encrypt_level_counts(node_for(hospital), RoundSpec.from_dict(spec)).to_dict()


@app.task(name="medheaven.hospital.layout_decide", bind=True)
def layout_decide(self: Task, layout_run: str, hospital: str, threshold: int) -> dict[str, Any]:
    """Layout phase, step 3 (a key holder): decrypt the summed counts here and return only the layout."""
    from medheaven.federated.layout_phase import decide_layout

    _guard(self)
    return decide_layout(node_for(hospital), layout_run, int(threshold))

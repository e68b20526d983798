"""One compiled Keras model per architecture and optimiser per process, shared by the hospitals that process serves.

A hospital worker serves one hospital, so this changes nothing there. The embedded demo serves every hospital from
one process: building a model and tracing its training function once per hospital cost about a second each on 2
cores (more under load), i.e. most of round 1. The hospitals now take turns on one model under a lock, and each
keeps its own optimiser state (the Adam moments that stay with a hospital across rounds, ``HospitalNode.train``)
and its own dropout seed-generator state: they are swapped in before that hospital trains and out before another
does, so every hospital still trains its own local model from the global weights exactly as before, with the
dropout masks its own process would draw. The state never leaves the process.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from medheaven.model import ModelSpec

if TYPE_CHECKING:
    import keras


@dataclass
class ModelSlot:
    model: keras.Model
    lock: threading.Lock = field(default_factory=threading.Lock)
    owner: tuple[str, str] | None = None  # (hospital, run) whose optimiser state the model holds now
    fresh: list[np.ndarray] = field(default_factory=list)  # the optimiser's state before any step
    saved: dict[tuple[str, str], list[np.ndarray]] = field(default_factory=dict)

    def switch_to(self, owner: tuple[str, str]) -> None:
        """Make the model hold ``owner``'s state (fresh the first time). Call with ``lock`` held."""
        if self.owner == owner:
            return
        variables = _hospital_state(self.model)
        if self.owner is not None:
            self.saved[self.owner] = [np.array(v.numpy(), copy=True) for v in variables]
        for variable, value in zip(variables, self.saved.get(owner, self.fresh), strict=True):
            variable.assign(value)
        self.owner = owner


_SLOTS: dict[str, ModelSlot] = {}
_SLOTS_LOCK = threading.Lock()


def model_slot(spec: ModelSpec, *, optimizer: str, learning_rate: float) -> ModelSlot:
    """The process's model for this architecture and optimiser, compiled, its optimiser state built."""
    from medheaven.model import build_model, compile_model

    key = json.dumps({"model": spec.to_dict(), "optimizer": optimizer}, sort_keys=True)
    with _SLOTS_LOCK:
        slot = _SLOTS.get(key)
        if slot is None:
            model = build_model(spec)
            compile_model(model, learning_rate=learning_rate, optimizer=optimizer)
            model.optimizer.build(model.trainable_variables)
            slot = ModelSlot(model, fresh=[np.array(v.numpy(), copy=True) for v in _hospital_state(model)])
            _SLOTS[key] = slot
        return slot


def _hospital_state(model: keras.Model) -> list[keras.Variable]:
    """What a hospital's own model would carry from round to round besides the weights it gets from the global
    model: the optimiser's state and the dropout layers' seed-generator state (``non_trainable_variables``). With
    the seed state swapped too, each hospital draws the dropout masks its own worker process would, whatever order
    the demo's threads train in, so a run is reproducible."""
    return [*model.optimizer.variables, *model.non_trainable_variables]

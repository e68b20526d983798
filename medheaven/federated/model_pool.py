"""One compiled Keras model per architecture and optimiser per process, shared by the hospitals that process serves.

A hospital worker serves one hospital, so this changes nothing there. The embedded demo serves every hospital from
one process: building a model and tracing its training function once per hospital cost about a second each on 2
cores (more under load), i.e. most of round 1. The hospitals now take turns on one model under a lock, and each
keeps its own optimiser state (the Adam moments that stay with a hospital across rounds, ``HospitalNode.train``):
it is swapped in before that hospital trains and out before another does, so every hospital still trains its own
local model from the global weights exactly as before. The state never leaves the process.
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
        """Make the model's optimiser hold ``owner``'s state (fresh the first time). Call with ``lock`` held."""
        if self.owner == owner:
            return
        variables = self.model.optimizer.variables
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
            slot = ModelSlot(model, fresh=[np.array(v.numpy(), copy=True) for v in model.optimizer.variables])
            _SLOTS[key] = slot
        return slot

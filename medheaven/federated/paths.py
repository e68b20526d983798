"""Where a run's files live in the store (the layout of ARCHITECTURE.md, under ``<run>/``).

Federation-wide files sit at the store root: ``context.public`` and ``hospitals.json`` are shared by every run
that uses the same key set and hospitals.
"""

from __future__ import annotations

from dataclasses import dataclass

from medheaven.federated.phase import Phase

CONTEXT_KEY = "context.public"
REGISTRY_KEY = "hospitals.json"


@dataclass(frozen=True)
class RunPaths:
    run: str

    @property
    def model(self) -> str:
        return f"{self.run}/model.json"

    def phase_dir(self, kind: Phase, round_number: int) -> str:
        return Phase(kind).directory(self.run, round_number)

    def updates_dir(self, kind: Phase, round_number: int, attempt: int) -> str:
        # attempts are kept apart so that a straggler of a failed attempt can never overwrite a later attempt's file
        return f"{Phase(kind).updates_directory(self.run, round_number)}/a{attempt}"

    def spec(self, kind: Phase, round_number: int) -> str:
        return f"{self.phase_dir(kind, round_number)}/spec.json"

    def manifest(self, kind: Phase, round_number: int) -> str:
        return f"{self.phase_dir(kind, round_number)}/manifest.json"

    def failure(self, kind: Phase, round_number: int, attempt: int) -> str:
        return f"{self.phase_dir(kind, round_number)}/failed-{attempt}.json"

    def result(self, kind: Phase, round_number: int) -> str:
        return f"{self.phase_dir(kind, round_number)}/{Phase(kind).result_name}"

    def update(self, kind: Phase, round_number: int, attempt: int, hospital: str) -> str:
        return f"{self.updates_dir(kind, round_number, attempt)}/{hospital}.ckks"

    def ledger(self, kind: Phase, round_number: int, attempt: int) -> str:
        return f"{self.updates_dir(kind, round_number, attempt)}/ledger.json"

    def dispatch(self, kind: Phase, round_number: int, attempt: int) -> str:
        return f"{self.updates_dir(kind, round_number, attempt)}/dispatch.json"

    @property
    def config(self) -> str:
        return f"{self.run}/run.json"

    @property
    def history(self) -> str:
        return f"{self.run}/history.json"

    @property
    def failed_attempts(self) -> str:
        """The coordinator's record of every attempt that failed, with each hospital's reason."""
        return f"{self.run}/failed-attempts.json"

    @property
    def final_validation(self) -> str:
        return f"{self.run}/final-validation.json"

    def global_model(self, round_number: int) -> str:
        return self.result(Phase.UPDATE, round_number)

    def test_scores(self) -> str:
        return f"{self.run}/final-test.json"

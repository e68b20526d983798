"""The layering the architecture document promises, checked on the code itself."""

from __future__ import annotations

import subprocess
import sys


def _modules_after_import(module: str) -> set[str]:
    code = f"import sys, {module}; print('\\n'.join(sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    return set(done.stdout.split())


def test_architecture_round_loop_imports_no_celery() -> None:
    loaded = _modules_after_import("coordinator.loop")
    framework = sorted(m for m in loaded if m.split(".")[0] in {"celery", "kombu", "workers"})
    assert not framework, f"importing coordinator.loop loaded {framework}: the loop must depend on Transport only"

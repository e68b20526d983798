"""The aggregator's allocator tuning (medheaven/memory.py)."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

from medheaven import memory


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt thresholds exist only in glibc")
def test_memory_thresholds_are_set_on_glibc() -> None:
    # in a fresh process, so the test suite's own allocator is left as it was
    code = "from medheaven.memory import map_large_buffers_separately as f; print(f())"
    result = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    assert result.stdout.strip() == "True"


def test_memory_without_a_c_library_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(memory.ctypes.util, "find_library", lambda name: None)
    assert memory.map_large_buffers_separately() is False

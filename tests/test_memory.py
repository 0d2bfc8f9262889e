import json
import platform
import subprocess
import sys

import numpy as np
import pytest

from pipeline import memory

linux_glibc = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="the policy is glibc's and Linux's"
)


@pytest.fixture
def unsettled(monkeypatch):
    """A process whose policy is not yet set, and numpy's huge-page advice restored afterwards."""
    monkeypatch.setattr(memory, "_settled", None)
    monkeypatch.delenv("PIPELINE_MEMORY", raising=False)
    before = np._core.multiarray._set_madvise_hugepage(True)
    yield
    np._core.multiarray._set_madvise_hugepage(before)


@linux_glibc
def test_a_batch_command_turns_numpys_huge_pages_off_and_keeps_freed_memory(unsettled, monkeypatch):
    kept = []
    monkeypatch.setattr(memory, "_keep_freed_memory", lambda: kept.append(True) or True)
    chosen = memory.settle_memory()
    assert chosen == {"numpy_hugepages": False, "keep_freed": True}
    assert np._core.multiarray._set_madvise_hugepage(True) is False  # returns the setting it replaces
    assert kept == [True]
    assert memory.settle_memory() is chosen and memory.memory_policy() is chosen  # once per process


@pytest.mark.parametrize(("batch", "env"), [(False, None), (True, "default")])
def test_a_server_or_pipeline_memory_default_keeps_the_platforms_policy(unsettled, monkeypatch, batch, env):
    if env:
        monkeypatch.setenv("PIPELINE_MEMORY", env)
    monkeypatch.setattr(memory, "_keep_freed_memory", lambda: pytest.fail("freed memory must go back"))
    assert memory.settle_memory(batch=batch) == {"policy": "default"}
    assert np._core.multiarray._set_madvise_hugepage(True) is True


@linux_glibc
def test_glibc_takes_the_policy_in_a_fresh_process():
    # mallopt changes the whole process: run it in one of its own.
    code = "import json; from pipeline.memory import settle_memory; print(json.dumps(settle_memory()))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(done.stdout) == {"numpy_hugepages": False, "keep_freed": True}

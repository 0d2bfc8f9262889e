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
def test_fresh_pages_are_timed_in_small_and_huge_pages():
    seconds = memory.fresh_page_seconds(regions=2, nbytes=4 << 20)
    assert set(seconds) == {"small", "huge"}
    assert all(0 < s < 60 for s in seconds.values())  # seconds per GB


@linux_glibc
@pytest.mark.parametrize(("small", "huge", "hugepages"), [(0.45, 8.0, False), (0.3, 0.1, True)])
def test_numpys_huge_pages_stay_on_only_where_they_cost_no_more(unsettled, monkeypatch, small, huge, hugepages):
    monkeypatch.setattr(memory, "fresh_page_seconds", lambda: {"small": small, "huge": huge})
    kept = []
    monkeypatch.setattr(memory, "_keep_freed_memory", lambda: kept.append(True) or True)
    chosen = memory.settle_memory()
    assert chosen == {"s_per_gb": {"small": small, "huge": huge}, "numpy_hugepages": hugepages, "keep_freed": True}
    assert np._core.multiarray._set_madvise_hugepage(True) is hugepages  # returns the setting it replaces
    assert kept == [True]
    assert memory.settle_memory() is chosen  # once per process
    assert memory.memory_policy() is chosen


@linux_glibc
def test_a_server_leaves_freed_memory_to_the_kernel(unsettled, monkeypatch):
    monkeypatch.setattr(memory, "fresh_page_seconds", lambda: {"small": 0.4, "huge": 0.1})
    monkeypatch.setattr(memory, "_keep_freed_memory", lambda: pytest.fail("a server must not keep freed memory"))
    assert memory.settle_memory(keep_freed=False)["keep_freed"] is False


def test_pipeline_memory_default_leaves_the_process_alone(unsettled, monkeypatch):
    monkeypatch.setenv("PIPELINE_MEMORY", "default")
    monkeypatch.setattr(memory, "fresh_page_seconds", lambda: pytest.fail("nothing is measured"))
    assert memory.settle_memory() == {"policy": "default"}


@linux_glibc
def test_glibc_takes_the_policy_in_a_fresh_process():
    # mallopt changes the whole process: run it in one of its own.
    code = "import json; from pipeline.memory import settle_memory; print(json.dumps(settle_memory()))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    chosen = json.loads(done.stdout)
    assert chosen["keep_freed"] is True
    assert chosen["numpy_hugepages"] is (chosen["s_per_gb"]["huge"] <= chosen["s_per_gb"]["small"])

"""One writer at a time, across processes; readers are served while a writer holds the catalogue."""

from __future__ import annotations

import subprocess
import sys

import pytest

from pipeline.catalogue import CatalogueError, add_postings, match_postings, open_catalogue

from .conftest import postings

HOLD = """
import fcntl, sys, time
fd = open(sys.argv[1], "a+")
fcntl.flock(fd, fcntl.LOCK_EX)
fd.write("pid holder-process"); fd.flush()
print("held", flush=True)
sys.stdin.read()  # until the test closes stdin
"""


@pytest.fixture
def held_elsewhere(catalogue):
    """Another process holds the catalogue's write lock until the test ends."""
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(catalogue.root / "write.lock")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "held"
    yield
    holder.stdin.close()
    holder.wait(timeout=10)


def test_a_second_writer_is_refused_and_readers_still_served(catalogue, space, held_elsewhere):
    with pytest.raises(CatalogueError, match="is being written by"):
        add_postings(catalogue, postings(["p"]), vectors={"text": space.near("C")})
    reader = open_catalogue(catalogue.root)
    found = match_postings(reader, postings(["q"]), vectors={"text": space.near("C")})[0]
    assert found.verdict == "match" and {c.posting_id for c in found.candidates} >= {"c0", "c1", "c2"}
    assert reader.live_count() == 12
    reader.close()

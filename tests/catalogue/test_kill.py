"""SIGKILL in the middle of ``add``, just before and just after the commit: after the restart the
integrity check passes and the batch, sent again, gives what a clean add gives. test_adding.py
faults every crash point in-process; benchmarks/catalogue_kills.py kills at 20 random moments."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pipeline.catalogue import add_postings, check, export_groups, open_catalogue
from pipeline.catalogue.catalogue import CRASH_ENV

from .conftest import postings

ROOT = Path(__file__).resolve().parents[2]
ADD = """
import sys, numpy as np
from pipeline.catalogue import add_postings, open_catalogue
from tests.catalogue.conftest import postings
cat = open_catalogue(sys.argv[1], write=True)
add_postings(cat, postings(sys.argv[3].split(",")), vectors={"text": np.load(sys.argv[2])})
"""


@pytest.mark.parametrize("point", ["journaled", "committed"])
def test_a_killed_add_is_repaired_on_restart(catalogue, space, tmp_path, point):
    ids = ["p", "q", "r"]
    x = np.vstack([space.near("A", "B"), space.near("D"), space.far()])
    np.save(tmp_path / "x.npy", x)
    before, root = export_groups(catalogue), catalogue.root
    catalogue.close()
    env = {**os.environ, CRASH_ENV: point, "OMP_NUM_THREADS": "1"}
    args = [sys.executable, "-c", ADD, str(root), str(tmp_path / "x.npy"), ",".join(ids)]
    done = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == -signal.SIGKILL, done.stderr

    cat = open_catalogue(root, write=True)
    with cat.writer():  # the restart: the next writer repairs
        assert check(cat) == []
        if point == "journaled":
            assert export_groups(cat).equals(before)
        else:
            assert cat.live_count() == len(before) + len(ids)
    again = add_postings(cat, postings(ids), vectors={"text": x})
    assert again.set_index("posting_id")["action"].to_dict() == {"p": "merge", "q": "join", "r": "new"}
    assert check(cat) == []
    cat.close()

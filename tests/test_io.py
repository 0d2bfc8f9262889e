import os

import numpy as np
import pandas as pd
import pytest

from pipeline.io import atomic_path, read_json, write_csv, write_json


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.json"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []


def test_atomic_write_replaces_and_uses_normal_permissions(tmp_path):
    target = write_json({"a": 1}, tmp_path / "x.json")
    write_json({"a": np.float32(2.5), "b": np.arange(2)}, target)
    assert read_json(target) == {"a": 2.5, "b": [0, 1]}
    umask = os.umask(0)
    os.umask(umask)
    assert (target.stat().st_mode & 0o777) == (0o666 & ~umask)
    frame = pd.DataFrame({"a": [1, 2]})
    pd.testing.assert_frame_equal(pd.read_csv(write_csv(frame, tmp_path / "a.csv")), frame)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.csv", "x.json"]


def test_json_is_strict_with_infinities_as_null(tmp_path):
    path = write_json({"floor": float("inf"), "x": [np.float64("nan"), 1.5]}, tmp_path / "a.json")
    assert "Infinity" not in path.read_text() and "NaN" not in path.read_text()
    assert read_json(path) == {"floor": None, "x": [None, 1.5]}


def test_a_full_disk_names_the_file_and_leaves_nothing(tmp_path, monkeypatch):
    import errno
    from pathlib import Path

    from pipeline.io import WriteError, write_text

    target = tmp_path / "thresholds.json"
    target.write_text("old")

    def no_space(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_text", no_space)
    with pytest.raises(WriteError, match=r"cannot write .*thresholds\.json: disk full \(No space left on device\)"):
        write_text("new", target)
    monkeypatch.undo()
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["thresholds.json"]


def test_a_folder_that_cannot_be_written_names_the_file(tmp_path):
    from pipeline.io import WriteError, write_json

    if os.geteuid() == 0:
        pytest.skip("root writes into read-only folders")
    tmp_path.chmod(0o500)
    try:
        with pytest.raises(WriteError, match=r"cannot write .*a\.json: not writable"):
            write_json({}, tmp_path / "a.json")
    finally:
        tmp_path.chmod(0o700)

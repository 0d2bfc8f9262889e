"""Importing the torch datasets opens no network connection (albumentations' update check is off)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# Every connection that is not to this machine is reported on stderr and refused.
GUARD = textwrap.dedent("""
    import socket
    import sys

    _connect = socket.socket.connect

    def _guarded(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6) and address[0] not in ("127.0.0.1", "::1", "localhost"):
            print(f"network access attempted: {address}", file=sys.stderr)
            raise ConnectionRefusedError(f"network access attempted: {address}")
        return _connect(self, address)

    socket.socket.connect = _guarded
""")


def test_importing_the_datasets_opens_no_connection(tmp_path):
    (tmp_path / "sitecustomize.py").write_text(GUARD)
    env = {k: v for k, v in os.environ.items() if k != "NO_ALBUMENTATIONS_UPDATE"}
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), str(ROOT)])
    done = subprocess.run(
        [sys.executable, "-c", "import pipeline.data.datasets, albumentations"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "network access attempted" not in done.stderr, done.stderr

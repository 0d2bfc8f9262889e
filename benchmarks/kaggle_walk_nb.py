"""Helpers of ``benchmarks/kaggle_walk.sh``, run by the Kaggle-like venv's Python (nbclient, nbformat and pip
only: this file must not import the project, which that venv gets from the code dataset's wheels).

``run NOTEBOOK PARAMS_JSON CWD OUT``: execute a notebook top to bottom with its ``parameters`` cell replaced,
as Kaggle's *Run All* does, and print each code cell's wall time; the executed notebook goes to ``OUT`` and
its text outputs to ``OUT.txt`` (also when a cell fails).

``image-state FREEZE``: put this venv back to the ``pip freeze`` in ``FREEZE`` (the "Kaggle image"): uninstall
what a notebook installed and reinstall, without dependencies, a distribution whose version changed. A new
Kaggle session starts from the image, so each notebook of the walk does too.

``diff FREEZE [KAGGLE_CODE_JSON]``: print what this venv holds beyond (or at another version than) ``FREEZE``;
with the code dataset's record, fail if any of it is not one of the dataset's wheels.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from datetime import datetime


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def freeze() -> dict[str, str]:
    out = subprocess.run(
        [sys.executable, "-m", "pip", "freeze", "--all", "--disable-pip-version-check"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    pins = {}
    for line in out.splitlines():
        if "==" in line:
            name, ver = line.split("==", 1)
            pins[norm(name)] = ver.strip()
        elif " @ " in line:  # installed from a wheel file: its name says the version
            pins[norm(line.split(" @ ")[0])] = line.split(" @ ", 1)[1].strip().rsplit("/", 1)[-1]
    return pins


def read_freeze(path: str) -> dict[str, str]:
    pins = {}
    for line in open(path, encoding="utf-8"):
        if "==" in line:
            name, ver = line.strip().split("==", 1)
            pins[norm(name)] = ver
    return pins


def diff(image: dict[str, str]) -> tuple[list[str], list[str]]:
    """(distributions beyond the image, ``name==version`` of the image's that changed)."""
    now = freeze()
    extra = sorted(f"{d}=={v}" for d, v in now.items() if d not in image)
    changed = sorted(f"{d}=={image[d]} (now {now[d]})" for d in image if d in now and now[d] != image[d])
    missing = sorted(f"{d}=={image[d]} (now absent)" for d in image if d not in now)
    return extra, changed + missing


def image_state(path: str) -> None:
    image = read_freeze(path)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    removed, _ = diff(image)
    if removed:
        subprocess.run([*pip, "uninstall", "-y", "-q", *(e.split("==")[0] for e in removed)], check=True)
    now = freeze()
    restore = [f"{d}=={v}" for d, v in image.items() if now.get(d) != v]
    if restore:
        subprocess.run([*pip, "install", "-q", "--no-deps", *restore], check=True)
    extra, changed = diff(image)
    if extra or changed:
        raise SystemExit(f"could not restore the image: extra {extra}, changed {changed}")
    print(f"venv back to the image ({len(image)} distributions); removed {removed}, restored {restore}")


def run(path: str, params: dict, cwd: str, out: str, timeout: int = 7200) -> None:
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    cell.source = "\n".join(f"{k} = {v!r}" for k, v in params.items())
    t0 = time.perf_counter()
    failed = None
    try:
        NotebookClient(
            nb, timeout=timeout, kernel_name="python3", record_timing=True, resources={"metadata": {"path": cwd}}
        ).execute()
    except Exception as e:  # noqa: BLE001  reported below, with the timings of the cells that ran
        failed = e
    wall = time.perf_counter() - t0
    nbformat.write(nb, out)
    texts = []
    for c in nb.cells:
        if c.cell_type != "code":
            continue
        for o in c.get("outputs", []):
            texts.append(o.get("text", "") or "\n".join(o.get("traceback", [])))
    with open(out + ".txt", "w", encoding="utf-8") as f:
        f.write("\n".join(texts))
    print(f"{path}: cell wall times (s)")
    for i, c in enumerate(c for c in nb.cells if c.cell_type == "code"):
        ex = c.metadata.get("execution", {})
        start, end = ex.get("iopub.execute_input"), ex.get("shell.execute_reply")
        secs = (
            (datetime.fromisoformat(end.replace("Z", "+00:00")) - datetime.fromisoformat(start.replace("Z", "+00:00")))
            if start and end
            else None
        )
        first = next((line for line in c.source.splitlines() if line and not line.startswith("#")), "")
        shown = f"{secs.total_seconds():8.1f}" if secs is not None else "     n/a"
        print(f"  cell {i:2d} {shown}  {first[:90]}")
    print(f"{path}: {wall:.1f} s in all (kernel start included)")
    if failed is not None:
        raise SystemExit(f"{path} failed: {str(failed)[-3000:]}")


def main(argv: list[str]) -> None:
    if argv[0] == "run":
        run(argv[1], json.loads(argv[2]), argv[3], argv[4])
    elif argv[0] == "image-state":
        image_state(argv[1])
    elif argv[0] == "diff":
        extra, changed = diff(read_freeze(argv[1]))
        print(json.dumps({"beyond_image": extra, "changed_from_image": changed}, indent=1))
        if len(argv) > 2:  # the code dataset's record: nothing but its wheels may have come in
            record = json.load(open(argv[2], encoding="utf-8"))
            allowed = {norm(w["dist"]) for w in record["wheels"]} | {"shopee-pipeline"}
            other = [d for d in extra + changed if norm(d.split("==")[0]) not in allowed]
            if other:
                raise SystemExit(f"installed beyond the image and the code dataset's wheels: {other}")
            print("everything beyond the image is a wheel of the code dataset")
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])

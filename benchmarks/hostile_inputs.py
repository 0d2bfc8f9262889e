"""Every hostile case through the command line, as a new user would meet it; prints a table.

Each case runs ``python -m pipeline ...`` in a fresh process on tiny synthetic data (TF-IDF and
phash unless the case needs more) and is judged on three things: the exit code (2 for bad input,
0 where a warning is the answer), the error being one ``error:`` line with no traceback, and the
run folder holding nothing half-written or stale afterwards.

    python -m benchmarks.hostile_inputs [--work DIR] [--only SUBSTRING]

Takes about 3 to 5 minutes on 2 busy cores (most of it is starting Python).
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
TP = ["--modalities", "tfidf,phash", "folds.n_splits=2", "decision.cv_estimate=false"]


@dataclass
class Outcome:
    code: int
    err: str
    extra_ok: bool = True  # the case's own check of the folder afterwards
    note: str = ""

    @property
    def error_lines(self) -> list[str]:
        return [ln for ln in self.err.splitlines() if ln.startswith("error:")]

    @property
    def traceback(self) -> bool:
        return "Traceback (most recent call last)" in self.err


@dataclass
class Case:
    item: str
    name: str
    fn: Callable[[Path], Outcome]
    expect: str = ""  # the message must hold this (the key, file or what went wrong)
    want: int = 2  # exit code that is right
    warn: str | None = None  # with want 0: a stderr line that must appear
    results: list = field(default_factory=list)


def cli(*args: str, fsize: int | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}

    def limit() -> None:
        if fsize is not None:  # a "full disk": writes past fsize bytes fail with EFBIG
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))

    return subprocess.run(
        [sys.executable, "-m", "pipeline", *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        preexec_fn=limit,
        cwd=ROOT,
    )


def outcome(p: subprocess.CompletedProcess, extra_ok: bool = True, note: str = "") -> Outcome:
    return Outcome(p.returncode, p.stderr, extra_ok, note)


def synth(out: Path, groups: int = 20, seed: int = 0) -> Path:
    if not (out / "train.csv").exists():
        p = cli("synth", "--out", out, "--groups", groups, "--seed", seed, "--image-size", 48)
        assert p.returncode == 0, p.stderr
    return out


def copy_data(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def edit_csv(path: Path, fn: Callable[[pd.DataFrame], pd.DataFrame]) -> None:
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    fn(df).to_csv(path, index=False)


def leftovers(folder: Path) -> list[str]:
    """Temporary files an interrupted atomic write would leave (``.name.XXXX``)."""
    return (
        [str(p) for p in folder.rglob(".*") if p.is_file() and not p.name.endswith(".lock")] if folder.exists() else []
    )


def jpeg_bytes(size: int = 48) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (size, size), (120, 30, 200)).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def bomb_jpeg(side: int = 30000) -> bytes:
    """A small JPEG whose frame header claims ``side`` x ``side`` pixels (a decompression bomb)."""
    raw = bytearray(jpeg_bytes(16))
    i = raw.index(b"\xff\xc0")  # SOF0: length(2) precision(1) height(2) width(2)
    raw[i + 5 : i + 9] = struct.pack(">HH", side, side)
    return bytes(raw)


# ---- the cases ---------------------------------------------------------------------------------


def two_writers(w: Path) -> Outcome:
    data = synth(w / "big", groups=300, seed=3)
    out = w / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    # A: a run whose tuning lasts a while (a fine threshold grid), so that B starts while A writes.
    a = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pipeline",
            "run",
            "--data",
            data,
            "--out",
            out,
            "--modalities",
            "tfidf,phash",
            "folds.n_splits=2",
            "decision.n_thresholds=400",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
    )
    for line in a.stderr:  # start B once A has prepared the folder and is tuning
        if line.startswith("[tune] started"):
            break
    b = cli("run", "--data", data, "--out", out, "--modalities", "phash", "folds.n_splits=2")
    a_running = a.poll() is None
    a.communicate()

    mixed = "phash" in (out / "config.yaml").read_text() and "tfidf" not in (out / "config.yaml").read_text()
    note = "A still running when B ended" if a_running else "A had finished before B ended: inconclusive"
    return outcome(
        b, extra_ok=a.returncode == 0 and a_running and not mixed, note=note + ("; A's folder mixed" if mixed else "")
    )


def failed_rerun(w: Path) -> Outcome:
    d1, d2 = synth(w / "d1", seed=1), synth(w / "d2", seed=2)
    out = w / "run"
    assert cli("run", "--data", d1, "--out", out, *TP).returncode == 0
    # The second run, on other data, dies for lack of disk while tuning (its plot is the largest file).
    second = cli("run", "--data", d2, "--out", out, *TP, fsize=20_000)
    pred = cli("predict", "--run", out)
    stale = [n for n in ("thresholds.json", "report.json", "submission.csv") if (out / n).exists()]
    first = (Outcome(second.returncode, second.stderr).error_lines or ["(no error)"])[0]
    note = f"the re-run: {first[:90]}; left: {stale or 'nothing stale'}"
    return Outcome(
        pred.returncode, pred.stderr, extra_ok=second.returncode == 2 and not stale and not leftovers(out), note=note
    )


def outside_image(absolute: bool):
    def case(w: Path) -> Outcome:
        data = copy_data(synth(w / "d0"), w / "d")
        target = w / "outside.jpg"
        target.write_bytes(jpeg_bytes())
        value = str(target) if absolute else "../../outside.jpg"
        edit_csv(data / "train.csv", lambda df: df.assign(image=[value] + df["image"].tolist()[1:]))
        out = w / "run"
        return outcome(
            cli("prepare", "--data", data, "--out", out, *TP, "phash.source=image"), extra_ok=not out.exists()
        )

    return case


def empty_titles(w: Path) -> Outcome:
    data = copy_data(synth(w / "d0"), w / "d")
    edit_csv(data / "train.csv", lambda df: df.assign(title=""))
    out = w / "run"
    return outcome(cli("run", "--data", data, "--out", out, *TP), extra_ok=not out.exists())


def run_with(*overrides: str, stage: str = "run", modalities: str = "tfidf,phash", config: str | None = None):
    def case(w: Path) -> Outcome:
        data = synth(w / "d0")
        out = w / "run"
        cfg = ["--config", config] if config else []
        p = cli(
            stage,
            "--data",
            data,
            "--out",
            out,
            "--modalities",
            modalities,
            *cfg,
            "folds.n_splits=2",
            "decision.cv_estimate=false",
            *overrides,
        )
        return outcome(p, extra_ok=not out.exists())

    return case


def bad_image(kind: str, modalities: str, stage: str):
    def case(w: Path) -> Outcome:
        data = copy_data(synth(w / "d0"), w / "d")
        name = pd.read_csv(data / "train.csv")["image"].iloc[5]
        img = data / "train_images" / name
        # Truncated: the header and most of the scan are there, the end of the scan is not.
        img.write_bytes(bomb_jpeg() if kind == "bomb" else img.read_bytes()[: len(img.read_bytes()) * 4 // 5])
        out = w / "run"
        cfg = [] if "phash" in modalities else ["--config", "demo"]
        extra = ["phash.source=image"] if "phash" in modalities else ["image.train.epochs=1"]
        p = cli(
            stage,
            "--data",
            data,
            "--out",
            out,
            "--modalities",
            modalities,
            *cfg,
            "folds.n_splits=2",
            "decision.cv_estimate=false",
            *extra,
        )
        return outcome(p, extra_ok=not out.exists())

    return case


def full_disk(w: Path) -> Outcome:
    data = synth(w / "d0")
    out = w / "run"
    p = cli("run", "--data", data, "--out", out, *TP, fsize=20_000)
    tuned = [n for n in ("thresholds.json", "tune.json", "report.json", "submission.csv") if (out / n).exists()]
    return outcome(p, extra_ok=not tuned and not leftovers(out), note=f"left: {tuned or 'no tune output'}")


def score_case(kind: str):
    def case(w: Path) -> Outcome:
        data = synth(w / "d0")
        truth = pd.read_csv(data / "test_truth.csv", dtype=str)
        sub = pd.DataFrame({"posting_id": truth["posting_id"], "matches": truth["posting_id"]})
        truth_path = data / "test_truth.csv"
        if kind == "missing ids":
            sub = sub.iloc[3:]
        elif kind == "extra id":
            sub = pd.concat([sub, pd.DataFrame({"posting_id": ["stranger"], "matches": ["stranger"]})])
        elif kind == "duplicate id":
            sub = pd.concat([sub, sub.iloc[[0]]])
        elif kind == "missing truth":
            truth_path = w / "no_such_truth.csv"
        path = w / "sub.csv"
        if kind == "empty file":
            path.write_bytes(b"")
        else:
            sub.to_csv(path, index=False)
        return outcome(cli("score", "--submission", path, "--truth", truth_path))

    return case


def fold_out_of_range(w: Path) -> Outcome:
    data = synth(w / "d0")
    out = w / "run"
    assert (
        cli(
            "prepare",
            "--data",
            data,
            "--out",
            out,
            "--config",
            "demo",
            "--modalities",
            "image,tfidf",
            "image.train.epochs=1",
        ).returncode
        == 0
    )
    p = cli("train-image", "--run", out, "--fold", "7")
    return outcome(p, extra_ok=not (out / "models" / "image" / "fold7").exists())


def singletons(w: Path) -> Outcome:
    data = copy_data(synth(w / "d0"), w / "d")
    edit_csv(data / "train.csv", lambda df: df.assign(label_group=[str(1000 + i) for i in range(len(df))]))
    return outcome(cli("run", "--data", data, "--out", w / "run", *TP))


def multiline_title(w: Path) -> Outcome:
    data = copy_data(synth(w / "d0"), w / "d")

    def edit(df: pd.DataFrame) -> pd.DataFrame:
        df.loc[0, "title"] = "a title\nspanning\nthree lines"
        df.loc[4, "label_group"] = "notanumber"
        return df

    edit_csv(data / "train.csv", edit)
    p = cli("prepare", "--data", data, "--out", w / "run", *TP)
    # The bad label is on row 5, which the three-line title pushes to line 8 of the file.
    ok = "line 8" in p.stderr
    return outcome(p, extra_ok=ok, note="names line 8" if ok else "wrong line")


def missing_local_file(key: str):
    def case(w: Path) -> Outcome:
        data = synth(w / "d0")
        out = w / "run"
        mod = "image,tfidf" if key.startswith("image") else "text,tfidf"
        p = cli("prepare", "--data", data, "--out", out, "--modalities", mod, f"{key}={w / 'nowhere' / 'w.pth'}")
        return outcome(p, extra_ok=not out.exists())

    return case


CASES = [
    Case("1", "two runs into one --out at once (second)", two_writers, expect="pid"),
    Case("2", "re-run on other data dies part-way (disk full), then predict", failed_rerun, expect="tune"),
    Case("3/6", "image ../../outside.jpg", outside_image(False), expect="inside the images folder"),
    Case("3/6", "image absolute path", outside_image(True), expect="inside the images folder"),
    Case("4", "every train title empty (TF-IDF)", empty_titles, expect="title"),
    Case("4", "tfidf.min_df above the rows", run_with("tfidf.min_df=1000"), expect="tfidf.min_df"),
    Case(
        "4",
        "image.train.epochs=0",
        run_with("image.train.epochs=0", stage="prepare", modalities="image,tfidf", config="demo"),
        expect="image.train.epochs",
    ),
    Case(
        "4",
        "text.train.batch_size=0",
        run_with("text.train.batch_size=0", stage="prepare", modalities="text,tfidf"),
        expect="text.train.batch_size",
    ),
    Case("4", "search.batch_size=0", run_with("search.batch_size=0"), expect="search.batch_size"),
    Case("4", "decision.n_thresholds=0", run_with("decision.n_thresholds=0"), expect="decision.n_thresholds"),
    Case("4", "--resume --overwrite together", run_with("--resume", "--overwrite"), expect="--resume"),
    Case("4", "YAML typo in an override (search.k=[3)", run_with("search.k=[3"), expect="search.k"),
    Case("4", "decompression-bomb image (phash from images)", bad_image("bomb", "tfidf,phash", "run"), expect="pixels"),
    Case("4", "truncated image, phash.source=image", bad_image("truncated", "tfidf,phash", "run"), expect="truncated"),
    Case("4", "full disk during a run", full_disk, expect="disk full"),
    Case("4", "score: submission missing ids", score_case("missing ids"), expect="no row"),
    Case("4", "score: empty submission file", score_case("empty file"), expect="empty file"),
    Case("4", "score: truth file missing", score_case("missing truth"), expect="file not found"),
    Case(
        "5",
        "truncated JPEG at prepare (image modality)",
        bad_image("truncated", "image,tfidf", "prepare"),
        expect="truncated",
    ),
    Case(
        "5",
        "fusion_weights naming a modality that is off",
        run_with("fusion.weights={image: 1.0}"),
        expect="fusion_weights",
    ),
    Case("5", "inverted tfidf n-gram range", run_with("tfidf.ngram_min=3", "tfidf.ngram_max=1"), expect="ngram"),
    Case(
        "5",
        "negative learning rate",
        run_with("text.train.lr=-0.001", stage="prepare", modalities="text,tfidf"),
        expect="lr",
    ),
    Case("5", "train-image --fold 7 on a 2-fold run", fold_out_of_range, expect="--fold 7"),
    Case("5", "train data of all singleton groups", singletons, want=0, warn="single posting"),
    Case("5", "score: extra posting id", score_case("extra id"), expect="not a posting of"),
    Case("5", "score: duplicate posting id", score_case("duplicate id"), expect="twice"),
    Case("5", "row after a quoted 3-line title", multiline_title, expect="line 8"),
    Case("7", "threads=0", run_with("threads=0", stage="prepare"), expect="threads must"),
    Case("10", "image.weights names a missing file", missing_local_file("image.weights"), expect="image.weights"),
    Case("10", "text.model names a missing local folder", missing_local_file("text.model"), expect="text.model"),
]


def verdict(case: Case, o: Outcome) -> str:
    if o.traceback:
        return "FAIL: traceback"
    if o.code != case.want:
        return f"FAIL: exit {o.code}, want {case.want}"
    if case.want == 2 and len(o.error_lines) != 1:
        return f"FAIL: {len(o.error_lines)} error lines"
    if case.warn and case.warn not in o.err.lower():
        return "FAIL: no warning"
    if case.expect and case.expect not in message(o, case):
        return f"FAIL: message does not name {case.expect!r}"
    if not o.extra_ok:
        return "FAIL: " + (o.note or "folder left half-written")
    return "ok" + (f" ({o.note})" if o.note else "")


def message(o: Outcome, case: Case) -> str:
    if o.traceback:
        last = [ln for ln in o.err.strip().splitlines() if ln.strip()][-1]
        return f"traceback: {last.strip()}"
    if o.error_lines:
        return o.error_lines[0]
    if case.warn:
        hits = [ln for ln in o.err.splitlines() if case.warn in ln.lower()]
        if hits:
            return hits[0].strip()
    return "(no message)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    parser.add_argument("--only", default=None, help="run the cases whose name holds this")
    args = parser.parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="hostile_"))
    shared = synth(work / "shared")
    print("| # | case | exit | message | verdict |\n|---|---|---|---|---|")
    failures = 0
    for i, case in enumerate(CASES):
        if args.only and args.only not in case.name:
            continue
        w = work / f"case{i:02d}"
        shutil.rmtree(w, ignore_errors=True)
        w.mkdir(parents=True)
        shutil.copytree(shared, w / "d0")
        t0 = time.perf_counter()
        o = case.fn(w)
        v = verdict(case, o)
        failures += not v.startswith("ok")
        msg = message(o, case).replace("|", "\\|").replace(str(w), "…")
        print(f"| {case.item} | {case.name} | {o.code} | {msg[:220]} | {v} |", flush=True)
        print(f"  ({time.perf_counter() - t0:.0f}s)", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

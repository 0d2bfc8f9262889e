"""Property-based tests: the CSV reader, the config parser and ``score`` on random input.

Whatever the bytes, quoting or overrides, either the input is accepted or the command line exits
with code 2 and one ``error:`` line; never a traceback.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import os
import re
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from pipeline.cli import main
from pipeline.config import Config, ConfigError, load_config
from pipeline.data import DataError, read_postings

# capsys is function-scoped; each example reads (and so clears) it before and after its command.
FAST = settings(
    max_examples=int(os.environ.get("HYPOTHESIS_EXAMPLES", 60)),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
HEADER = "posting_id,image,image_phash,title,label_group"
pytestmark = pytest.mark.filterwarnings("ignore:.*empty title")


def cli(argv: list[str], capsys) -> tuple[int, list[str], str]:
    """Exit code, ``error:`` lines and stdout of one in-process command."""
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as e:  # argparse's own usage errors
        code = e.code
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, [ln for ln in err.splitlines() if ln.startswith("error:")], out


def accepted_or_one_line(path: Path) -> None:
    try:
        read_postings(path, labelled=True)
    except DataError as e:
        assert "\n" not in str(e) and str(path) in str(e)


# ---- the CSV reader ------------------------------------------------------------------------------


@FAST
@given(st.binary(max_size=400))
def test_random_bytes_after_a_header_are_read_or_refused_on_one_line(body):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "train.csv"
        path.write_bytes(HEADER.encode() + b"\n" + body)
        accepted_or_one_line(path)


@FAST
@given(st.binary(max_size=300))
def test_random_bytes_alone_are_read_or_refused_on_one_line(raw):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "train.csv"
        path.write_bytes(raw)
        accepted_or_one_line(path)


# Quotes, commas and line breaks are what CSV quoting exists for, so they come often.
titles = st.text(
    st.one_of(st.sampled_from('\n",; '), st.characters(codec="utf-8", exclude_characters="\r\x00")), max_size=30
)
rows = st.lists(st.tuples(titles, st.integers(0, 3)), min_size=1, max_size=8)


@FAST
@given(
    rows=rows,
    quoting=st.sampled_from([csv.QUOTE_MINIMAL, csv.QUOTE_ALL, csv.QUOTE_NONNUMERIC]),
    newline=st.sampled_from(["\n", "\r\n"]),
    bad=st.integers(0, 8),
)
@example(rows=[("two\nlines", 1), ("one", 2)], quoting=csv.QUOTE_MINIMAL, newline="\n", bad=1)
def test_any_quoting_round_trips_and_rows_are_named_by_their_first_line(rows, quoting, newline, bad):
    """Written by any CSV writer's quoting, valid rows come back as written; a bad label is named
    by the line its row starts on, however many lines the titles before it span."""
    buf = io.StringIO(newline="")
    writer = csv.writer(buf, quoting=quoting, lineterminator=newline)
    writer.writerow(HEADER.split(","))
    bad = min(bad, len(rows))  # len(rows): no bad row
    starts = []
    for i, (title, label) in enumerate(rows):
        starts.append(buf.getvalue().count("\n") + 1)
        writer.writerow([f"p{i}", f"{i}.jpg", f"{i:016x}", title, "x" if i == bad else label])
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "train.csv"
        path.write_bytes(buf.getvalue().encode("utf-8"))
        if bad < len(rows):
            with pytest.raises(DataError, match=rf"row {bad + 1} \(line {starts[bad]}\), column 'label_group'"):
                read_postings(path, labelled=True)
            return
        df = read_postings(path, labelled=True)
    assert df["label_group"].tolist() == [label for _, label in rows]
    assert df["title"].tolist() == [t if t.strip() else "" for t, _ in rows]


# ---- the config parser ---------------------------------------------------------------------------


def _keys(cls: type, prefix: str = "") -> list[str]:
    out = []
    for f in dataclasses.fields(cls):
        default = getattr(cls(), f.name)
        out += _keys(type(default), f"{prefix}{f.name}.") if dataclasses.is_dataclass(default) else [prefix + f.name]
    return out


KEYS = _keys(Config)
values = st.one_of(
    st.integers(-5, 10**6).map(str),
    st.floats(allow_nan=True).map(str),
    st.sampled_from(
        ["true", "no", "null", "~", "[a, b", "{x: 1}", "[text, tfidf]", "image", "", "'", "1e-3", ".inf", "- a"]
    ),
    st.text(max_size=12),
)
overrides = st.lists(
    st.one_of(st.builds(lambda k, v: f"{k}={v}", st.sampled_from(KEYS), values), st.text(max_size=20)), max_size=4
)


@FAST
@given(overrides)
def test_random_overrides_build_a_config_or_one_line_error(items):
    try:
        cfg = load_config(None, items)
    except ConfigError as e:
        assert "\n" not in str(e)
        return
    assert isinstance(cfg, Config)


@FAST
@given(items=overrides)
def test_random_overrides_through_the_command_line_exit_2_with_one_line(items, capsys):
    with tempfile.TemporaryDirectory() as tmp:
        code, errors, _ = cli(["prepare", "--data", f"{tmp}/nothing", "--out", f"{tmp}/run", "--", *items], capsys)
        assert code == 2 and len(errors) == 1  # the config is refused, or the missing data is
        assert not Path(tmp, "run").exists()


# ---- score ---------------------------------------------------------------------------------------

TRUTH = "posting_id,label_group\na,1\nb,1\nc,2\nd,3\n"
ids = st.sampled_from(["a", "b", "c", "d", "e", "", "a b", '"a"'])
submissions = st.one_of(
    st.binary(max_size=200).map(lambda b: b.decode("utf-8", "replace")),
    st.lists(st.tuples(ids, st.lists(ids, max_size=4)), max_size=6).map(
        lambda rs: "posting_id,matches\n" + "".join(f"{p},{' '.join(m)}\n" for p, m in rs)
    ),
)


@FAST
@given(text=submissions)
def test_score_accepts_a_whole_submission_or_exits_2_with_one_line(text, capsys):
    with tempfile.TemporaryDirectory() as tmp:
        sub, truth = Path(tmp) / "sub.csv", Path(tmp) / "truth.csv"
        sub.write_text(text, encoding="utf-8")
        truth.write_text(TRUTH)
        code, errors, out = cli(["score", "--submission", str(sub), "--truth", str(truth)], capsys)
    if code == 0:
        assert not errors and re.match(r'\{"f1": ', out)
    else:
        assert code == 2 and len(errors) == 1

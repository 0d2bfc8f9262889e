"""What report.md, compare and the error galleries tell a user, on a tiny tuned TF-IDF and phash run."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from pipeline import stages
from pipeline.cli import main
from pipeline.config import load_config
from pipeline.paths import RunPaths
from pipeline.reporting.compare import compare_runs, format_table
from pipeline.reporting.plots import TITLE_LINES, plot_pairs


@pytest.fixture(scope="module")
def run(tiny_synth, tmp_path_factory):
    root = tmp_path_factory.mktemp("reporting") / "run"
    cfg = load_config(None, ["modalities=[tfidf,phash]", "folds.n_splits=2", "decision.cv_estimate=false"])
    stages.run_all(tiny_synth["root"], root, cfg, progress=False)
    return root


def test_the_report_lists_the_figures_the_run_has_and_the_gallery_size_shift(run):
    report = json.loads(RunPaths(run).report.read_text())
    text = RunPaths(run).report_md.read_text()
    assert "training.png" not in text  # nothing was trained
    assert "`threshold_f1.png` (F1 against each threshold)" in text
    assert set(report["figures"]) == {p.name for p in RunPaths(run).plots.glob("*.png")}
    shift = report["gallery_size"]
    assert shift["tuned_size"] > 0 and set(shift["thresholds_at_test"]) == set(report["thresholds"]["thresholds"])
    # The thresholds predict applies to test.csv, not only the log line of the tune stage.
    assert "## Thresholds and the gallery's size" in text
    assert f"test.csv ({report['data']['test_rows']:,} postings" in text
    for name, value in shift["thresholds_at_test"].items():
        assert f"| {name} | {shift['per_doubling'].get(name, 0.0):+.4f} |" in text and f"{value:.4f} |" in text


def test_compare_says_its_signal_columns_are_same_rows_and_flags_a_score_from_an_earlier_tuning(run, capsys):
    assert main(["compare", str(run), "--lb", f"{run}=0.731"]) == 0
    out = capsys.readouterr().out
    header = out.splitlines()[0]
    assert "tfidf alone (same rows)" in header and "F1 (cross-validated)" in header and "f1 tfidf" not in header
    assert "0.7310" in out and "earlier tuning" not in out
    assert compare_runs([run])["lb_stale"].tolist() == [False]
    # A re-tune to other settings: the score belongs to the earlier ones, and compare says so.
    stages.tune_stage(run, progress=False, overrides=["modalities=[tfidf]"])  # phash dropped
    table = compare_runs([run])
    assert table["lb_stale"].tolist() == [True] and table["lb"].tolist() == [0.731]
    assert "0.7310 (earlier tuning)" in format_table(table)


def test_error_galleries_without_images_show_whole_titles_in_short_rows():
    long = "PROMO Sepatu Sneakers Pria Casual Import Kualitas Premium Original Size 39-44 Hitam Putih Free Ongkir"
    pairs = pd.DataFrame(
        {
            "query_title": [long, "kaos polos"],
            "match_title": ["sepatu sneakers pria casual import premium original", long * 3],
            "query_group": [1, 2],
            "match_group": [3, 4],
            "query_image": ["a.jpg"] * 2,
            "match_image": ["b.jpg"] * 2,
            "tfidf": [0.8, float("-inf")],
            "margin": [0.03, -0.01],
            "decided_by": ["tfidf", "tfidf"],
        }
    )
    fig = plot_pairs(pairs, None, "hardest false positives", ["tfidf"])
    assert fig.get_figheight() < 1.2 * len(pairs) + 0.6  # no image-sized rows of white space
    shown = [t.get_text() for ax in fig.axes for t in ax.texts]
    first = next(t for t in shown if t.startswith("PROMO"))
    assert " ".join(first.splitlines()[:-1]) == long  # whole, wrapped, not cut at 40 characters
    longest = next(t for t in shown if t.count("PROMO") > 1)
    assert len(longest.splitlines()) == TITLE_LINES + 1 and longest.splitlines()[-2].endswith("...")

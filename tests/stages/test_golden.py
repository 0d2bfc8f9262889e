"""A pinned submission: the same data, config, seed and libraries give the same bytes, across refactors.

When a change is meant to alter what the pipeline predicts, update the digest in the same commit and
say why in its message; an unexplained change here is a behaviour change nobody intended. The
digest also depends on the libraries that compute the similarities and the pair model's trees, so
their versions are pinned here and in requirements.txt alike.
"""

from __future__ import annotations

import hashlib
import importlib.metadata as md
import re
from pathlib import Path

import pytest

from pipeline import stages
from pipeline.config import load_config
from pipeline.data.synth import make_synthetic

# TF-IDF, phash, blending, the union, min-2 and the pair model on 30 synthetic groups.
PINNED_SHA256 = "81a2a805b930a2b76763cc4f8cd4afca64e3dab99f5d45efe903a487a198b36e"
# The libraries whose arithmetic the digest depends on, at the versions it was recorded with.
RECORDED_WITH = {
    "lightgbm": "4.7.0",
    "sparse_dot_topn": "1.2.0",
    "scikit-learn": "1.9.1",
    "faiss-cpu": "1.15.1",
    "numpy": "2.4.6",
    "scipy": "1.17.1",
    "rapidfuzz": "3.14.6",
}
REQUIREMENTS = Path(__file__).resolve().parents[2] / "requirements.txt"


def test_requirements_pin_the_libraries_the_digest_was_recorded_with():
    pins = dict(re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)", REQUIREMENTS.read_text(), flags=re.M))
    assert {name: pins.get(name) for name in RECORDED_WITH} == RECORDED_WITH


def test_the_pinned_run_reproduces_its_submission_byte_for_byte(tmp_path):
    installed = {name: md.version(name) for name in RECORDED_WITH}
    if installed != RECORDED_WITH:
        pytest.fail(
            f"the digest was recorded with {RECORDED_WITH}, but {installed} are installed: install "
            "requirements.txt, or re-pin the digest and these versions together"
        )
    make_synthetic(tmp_path / "data", n_groups=30, seed=21, image_size=32, progress=False)
    cfg = load_config(
        None, ["modalities=[tfidf,phash]", "folds.n_splits=3", "decision.cv_estimate=false", "search.k=20", "seed=5"]
    )
    report = stages.run_all(tmp_path / "data", tmp_path / "run", cfg, progress=False)
    assert "pair" in report["thresholds"]["thresholds"] or report["thresholds"]["min2_signal"] == "pair"
    assert hashlib.sha256((tmp_path / "run" / "submission.csv").read_bytes()).hexdigest() == PINNED_SHA256

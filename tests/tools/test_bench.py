import numpy as np

from pipeline.data.synth.postings import clustered_postings
from pipeline.tools.bench import run_bench


def test_clustered_postings_are_unit_vectors_in_groups():
    vectors, labels = clustered_postings(500, dim=16, seed=0)
    assert set(vectors) == {"image", "text", "phash"}
    np.testing.assert_allclose(np.linalg.norm(vectors["image"], axis=1), 1.0, atol=1e-5)
    assert vectors["phash"].shape == (500, 8) and vectors["phash"].dtype == np.uint8
    sizes = np.bincount(labels)
    assert sizes.max() <= 50 and (sizes[:-1] >= 2).all()


def test_bench_reports_every_step_and_memory():
    out = run_bench(n=800, dim=16, k=20)
    assert {
        "search_image",
        "search_text",
        "search_phash",
        "fuse_concat",
        "blend",
        "candidates",
        "decide",
        "build_submission",
        "write_submission",
    } <= set(out["seconds"])
    assert out["peak_rss_mb"] > 0 and out["predict_seconds"] > 0
    assert 0.3 < out["f1"] <= 1.0
    # What machine it ran on, and why auto searched as it did.
    assert out["machine"]["cores"] >= 1 and "blas_openmp" in out["machine"]
    assert any(line.startswith("[search] N=800") and "index flat" in line for line in out["search_choices"])


def test_bench_with_the_pair_model():
    out = run_bench(n=600, dim=16, k=10, pair=True, pair_fit_n=600)
    assert out["pair_model"] is True and out["seconds"]["pair_model"] > 0


def test_bench_with_tfidf_times_its_fit_search_and_blend():
    out = run_bench(n=600, dim=16, k=10, tfidf=True)
    assert {"fit_tfidf", "search_tfidf", "blend"} <= set(out["seconds"])
    assert out["tfidf"] is True and out["blend_method"] == "graph" and 0.3 < out["f1"] <= 1.0


def test_synthetic_titles_follow_the_labels():
    from pipeline.data.synth import synthetic_titles

    labels = np.array([0, 0, 1, 2, 2, 2])
    titles = synthetic_titles(labels, seed=3)
    assert len(titles) == 6 and titles == synthetic_titles(labels, seed=3)
    assert len(set(titles)) == 6  # each posting writes its own title
    words = [set(t.lower().split()) for t in titles]
    # Postings of one group share more words with each other than with another group.
    assert len(words[3] & words[4]) > len(words[3] & words[0])

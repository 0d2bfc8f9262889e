import numpy as np
import pytest

from pipeline.config import ConfigError, TfidfConfig
from pipeline.matching.signals import phash_codes, tfidf_vectors

TITLES = ["Kaos Polos Hitam XL", "kaos polos hitam ukuran xl", "Sepatu Lari Pria 42", "sepatu lari 42 pria murah", ""]


def test_tfidf_both_is_the_weighted_mean_of_word_and_char_cosines():
    word = tfidf_vectors(TITLES, TfidfConfig(analyzer="word")).toarray()
    char = tfidf_vectors(TITLES, TfidfConfig(analyzer="char_wb")).toarray()
    both = tfidf_vectors(TITLES, TfidfConfig(analyzer="both", char_weight=0.3)).toarray()
    full = [0, 1, 2, 3]  # the empty title has no vector to weigh
    np.testing.assert_allclose(
        (both @ both.T)[np.ix_(full, full)], (0.7 * word @ word.T + 0.3 * char @ char.T)[np.ix_(full, full)], atol=1e-5
    )
    assert not both[4].any()


def test_max_df_drops_common_terms_but_a_tiny_gallery_keeps_some():
    x_all = tfidf_vectors(TITLES, TfidfConfig(analyzer="word"))
    x_cut = tfidf_vectors(TITLES, TfidfConfig(analyzer="word", max_df=0.3))
    # 0.3 of 5 titles: a term may be in one title only; "ukuran" and "murah" are, the rest in two.
    assert x_all.shape[1] == 10 and x_cut.shape[1] == 2
    assert list(x_cut.getnnz(axis=1)) == [0, 1, 0, 1, 0]
    # A share under one title on a handful of titles means "in one title at most", not "nothing".
    tiny = tfidf_vectors(TITLES[:2], TfidfConfig(analyzer="word", max_df=0.01))
    assert tiny.nnz > 0
    with pytest.raises(ConfigError, match="max_df"):
        TfidfConfig(max_df=0.0)


def test_phash_codes_are_the_hash_bytes():
    codes = phash_codes(["94d8e2b2a5d35e0f", "0000000000000001"])
    assert codes.dtype == np.uint8 and codes.shape == (2, 8)
    assert codes[0, 0] == 0x94 and codes[1, 7] == 1


def test_tfidf_with_no_vocabulary_says_why():
    from pipeline.data import DataError

    with pytest.raises(DataError, match="all 3 titles are empty"):
        tfidf_vectors(["", "  ", "\\xf0\\x9f"], TfidfConfig())
    with pytest.raises(ConfigError, match=r"tfidf\.min_df=9"):
        tfidf_vectors(TITLES, TfidfConfig(min_df=9))
    with pytest.raises(ConfigError, match=r"tfidf\.min_df=3"):
        tfidf_vectors(TITLES, TfidfConfig(analyzer="word", min_df=3))  # no word is in 3 of these titles
    # One analyzer with no term is fine while the other has some.
    assert tfidf_vectors(["a b", "a c"], TfidfConfig(analyzer="both")).nnz > 0


def test_compute_phash_names_an_unreadable_image(tmp_path):
    from pipeline.data import DataError
    from pipeline.matching.signals import compute_phash

    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really")
    with pytest.raises(DataError, match=r"bad\.jpg: cannot compute its phash"):
        compute_phash([bad])

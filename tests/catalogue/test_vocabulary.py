"""The catalogue's frozen TF-IDF vocabulary: ``predict``'s vectors on the fitted titles, and the
two ways a term the fit never saw can weigh."""

import json

import numpy as np
import pytest

from pipeline.catalogue.vocabulary import TitleVocabulary
from pipeline.matching.signals import TfidfConfig, tfidf_vectors

TITLES = [
    "kaos polos hitam cotton combed 30s",
    "kaos polos putih cotton combed",
    "sepatu sneakers pria hitam",
    "tas ransel laptop 15 inch",
    "sepatu running wanita",
    "tas selempang kulit wanita",
]


def cosines(x):
    return (x @ x.T).toarray()


@pytest.mark.parametrize("unseen", ["hashed", "ignored"])
@pytest.mark.parametrize("analyzer", ["word", "char_wb", "both"])
def test_the_fitted_titles_get_the_cosines_predict_gives_them(unseen, analyzer):
    cfg = TfidfConfig(analyzer=analyzer)
    vocabulary = TitleVocabulary.fit(TITLES, cfg, unseen)
    got = cosines(vocabulary.transform(TITLES))
    np.testing.assert_allclose(got, cosines(tfidf_vectors(TITLES, cfg)), atol=1e-6)


def test_hashed_new_words_match_each_other_and_ignored_ones_weigh_nothing():
    queries = ["zorblax kaos hitam", "zorblax tas hitam", "kaos hitam", "qwzx vbnm"]
    hashed = TitleVocabulary.fit(TITLES, TfidfConfig(analyzer="word"), "hashed")
    ignored = TitleVocabulary.fit(TITLES, TfidfConfig(analyzer="word"), "ignored")
    h, i = cosines(hashed.transform(queries)), cosines(ignored.transform(queries))
    # The shared new word links the two titles, and weighs more than the known words they share.
    assert h[0, 1] > i[0, 1] > 0
    assert h[0, 1] > h[0, 2] > 0
    # A title of new words only has a vector under hashed, and none under ignored.
    assert h[3, 3] == pytest.approx(1.0) and i[3, 3] == 0.0
    assert h[3, :3].max() == 0.0
    # A new word takes the idf of a term in none of the fitted titles, above every fitted idf.
    assert hashed.unseen_idf > hashed.parts[0].vectoriser.idf_.max()


def test_a_term_the_fit_dropped_stays_dropped_when_new_terms_are_hashed():
    cfg = TfidfConfig(analyzer="word", max_df=0.3)  # words in more than 1 of the 6 titles go
    vocabulary = TitleVocabulary.fit(TITLES, cfg, "hashed")
    assert "kaos" in vocabulary.parts[0].dropped
    assert vocabulary.transform(["kaos polos"]).nnz == 0  # both words are frequent in the fit
    assert vocabulary.transform(["kaos zorblax"]).nnz == 1


def test_the_vocabulary_written_and_read_back_transforms_the_same():
    for unseen in ("hashed", "ignored"):
        vocabulary = TitleVocabulary.fit(TITLES, TfidfConfig(max_df=0.5), unseen)
        again = TitleVocabulary.from_dict(json.loads(json.dumps(vocabulary.to_dict())))
        queries = ["zorblax kaos hitam", "tas ransel 14 inch", ""]
        assert again.unseen == unseen and again.parts[0].dropped == vocabulary.parts[0].dropped
        assert abs(again.transform(queries) - vocabulary.transform(queries)).max() < 1e-6


def test_a_vocabulary_written_before_the_choice_keeps_ignoring_new_terms():
    d = TitleVocabulary.fit(TITLES, TfidfConfig(analyzer="word"), "hashed").to_dict()
    for key in ("unseen", "fitted_titles"):
        del d[key]
    for part in d["parts"]:
        del part["dropped"]
    old = TitleVocabulary.from_dict(d)
    assert old.unseen == "ignored"
    assert old.transform(["zorblax qwzx"]).nnz == 0


def test_an_unknown_choice_is_refused():
    with pytest.raises(Exception, match="unseen"):
        TitleVocabulary.fit(TITLES, TfidfConfig(), "grown")

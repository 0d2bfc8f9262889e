"""``catalogue init``: a new catalogue from a trained and tuned run.

Its first batch is the run's training postings, grouped by their ``label_group`` (known groups),
or any CSV in the data contract: grouped by its ``label_group`` when it has one, otherwise by the
run's rule, as an ``add`` into an empty catalogue would. The TF-IDF vocabulary is fitted on the
run's training titles either way; a term they never held is hashed or ignored (``unseen_terms``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.catalogue.adding import add_postings, embed
from pipeline.catalogue.catalogue import Catalogue, check_new_folder, create_catalogue
from pipeline.catalogue.indexes import IndexConfig
from pipeline.catalogue.rule import Rule, rule_of_run
from pipeline.catalogue.vocabulary import TitleVocabulary
from pipeline.data.contract import read_postings, read_table


def init_from_run(
    run_dir: str | Path,
    out: str | Path,
    postings: str | Path | None = None,
    images_dir: str | Path | None = None,
    index: IndexConfig | None = None,
    size: int = 0,
    threads: int = 1,
    unseen_terms: str = "hashed",
    **rule_options,
) -> tuple[Catalogue, pd.DataFrame]:
    """A catalogue at ``out`` applying the run's rule, holding its first batch; (catalogue, decisions).

    Args:
        postings: a CSV in the data contract (default: the run's train.csv).
        images_dir: the images of ``postings`` (default: the run's train_images when it is train.csv).
        size: the gallery size thresholds move to (0: the catalogue's live postings).
        unseen_terms: what a title term the run's titles never held weighs: ``hashed``, a term of its
            own at the highest idf, or ``ignored``, nothing (:mod:`pipeline.catalogue.vocabulary`).
        rule_options: other :class:`~pipeline.catalogue.rule.Rule` fields (``group``, ``group_cut``).
    """
    from pipeline.runs.folder import open_run

    check_new_folder(Path(out))  # before the embedding, which can take hours
    run = open_run(run_dir)
    rule = rule_of_run(run_dir, index or IndexConfig(), size, **rule_options)
    vocabulary = None
    if "tfidf" in rule.stored():
        vocabulary = TitleVocabulary.fit(run.train_df()["title"].tolist(), rule.tfidf, unseen_terms)
    needs_images = "image" in rule.learned() or rule.phash_source == "image"
    if postings is None:
        df = run.data.read("train", check_images=needs_images)
        images = run.data.images_dir("train")
        source = str(run.data.train_csv)
    else:
        images = Path(images_dir) if images_dir is not None else None
        if needs_images and images is None:
            from pipeline.catalogue.schema import CatalogueError

            raise CatalogueError("the run's rule reads the images: pass --images DIR with --postings")
        labelled = "label_group" in read_table(postings, None)[0].columns
        df = read_postings(postings, labelled=labelled, images_dir=images if needs_images else None)
        source = str(postings)
    labels = df["label_group"].to_numpy() if "label_group" in df.columns else None
    encoders: dict = {}
    vectors = embed(rule, vocabulary, df, images, encoders)
    return init_with_vectors(out, rule, df, vectors, vocabulary, labels, images, source, threads, encoders)


def init_with_vectors(
    out: str | Path,
    rule: Rule,
    df: pd.DataFrame,
    vectors: dict,
    vocabulary: TitleVocabulary | None = None,
    labels: np.ndarray | None = None,
    images_dir: Path | None = None,
    source: str = "",
    threads: int = 1,
    encoders: dict | None = None,
) -> tuple[Catalogue, pd.DataFrame]:
    """A catalogue at ``out`` whose first batch is ``df`` with the given vectors (any stored signal's rows)."""
    dims = {name: int(v.shape[1]) for name, v in vectors.items() if name in ("image", "text", "concat")}
    cat = create_catalogue(out, rule, dims, vocabulary, threads)
    cat.encoders = encoders or {}
    decisions = add_postings(cat, df, images_dir, vectors=vectors, source=source, labels=labels)
    return cat, decisions

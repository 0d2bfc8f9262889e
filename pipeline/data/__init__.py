"""Data: the input contract (read and validate), folds, torch datasets and synthetic data.

``pipeline.data`` itself exposes the contract, which every stage needs; the torch datasets
(:mod:`pipeline.data.datasets`) and the synthetic generators (:mod:`pipeline.data.synth`, development
tooling that the Kaggle wheel leaves out) are imported from their modules.
"""

import os

# albumentations (imported by pipeline.data.datasets) asks the internet for a newer release of itself
# when imported unless this is set: a connection from every stage that reads images, and, where the
# internet is off (a Kaggle notebook), up to 2 s and a warning. Nothing here uses the answer.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from pipeline.data.contract import (  # noqa: E402
    LEARNED_MODALITIES,
    MODALITIES,
    TEST_COLUMNS,
    TRAIN_COLUMNS,
    DataError,
    Dataset,
    check_images,
    encoder_inputs,
    read_postings,
    where,
)

__all__ = [
    "LEARNED_MODALITIES",
    "MODALITIES",
    "TEST_COLUMNS",
    "TRAIN_COLUMNS",
    "DataError",
    "Dataset",
    "check_images",
    "encoder_inputs",
    "read_postings",
    "where",
]

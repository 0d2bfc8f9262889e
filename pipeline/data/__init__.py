"""Data: the input contract (read and validate), folds, torch datasets and synthetic data.

``pipeline.data`` itself exposes the contract, which every stage needs; the torch datasets
(:mod:`pipeline.data.datasets`) and the synthetic generators (:mod:`pipeline.data.synth`, development
tooling that the Kaggle wheel leaves out) are imported from their modules.
"""

from pipeline.data.contract import (
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

"""Tensile's data: sharded token datasets, the generated default corpus and the global sample order."""

from .corpus import ByteTokenizer, generate_corpus, generate_text
from .sampler import GlobalSampler, epoch_permutation_seed
from .shards import (
    DATASET_FORMAT,
    DATASET_FORMAT_VERSION,
    INDEX_FILENAME,
    DatasetError,
    DatasetFormatError,
    DatasetIntegrityError,
    DatasetNotFoundError,
    TokenDataset,
    TokenShardWriter,
)

__all__ = [
    "DATASET_FORMAT",
    "DATASET_FORMAT_VERSION",
    "INDEX_FILENAME",
    "ByteTokenizer",
    "DatasetError",
    "DatasetFormatError",
    "DatasetIntegrityError",
    "DatasetNotFoundError",
    "GlobalSampler",
    "TokenDataset",
    "TokenShardWriter",
    "epoch_permutation_seed",
    "generate_corpus",
    "generate_text",
]

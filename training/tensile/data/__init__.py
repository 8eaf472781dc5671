"""Tensile's data: sharded token datasets (with loss masks), the generated default corpus, the
converter from other formats, the global sample order and the prefetching reader."""

from .corpus import ByteTokenizer, generate_corpus, generate_text
from .prefetch import PrefetchingReader, StepRequest, StepSamples, empty_batch
from .sampler import FeistelPermutation, GlobalSampler, epoch_permutation_seed
from .shards import (
    DATASET_FORMAT,
    DATASET_FORMAT_VERSION,
    INDEX_FILENAME,
    DatasetError,
    DatasetFormatError,
    DatasetIntegrityError,
    DatasetNotFoundError,
    SampleBatch,
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
    "FeistelPermutation",
    "GlobalSampler",
    "PrefetchingReader",
    "StepRequest",
    "StepSamples",
    "empty_batch",
    "SampleBatch",
    "TokenDataset",
    "TokenShardWriter",
    "epoch_permutation_seed",
    "generate_corpus",
    "generate_text",
]

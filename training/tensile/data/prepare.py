"""`tensile data prepare`: packs a pre-tokenised input's documents into samples of seq_len + 1
tokens with their loss masks, and writes a training dataset and a held-out one beside it.

Packing concatenates documents (each followed by the EOS id, if one is given) and cuts the stream
every seq_len + 1 tokens; attention crosses document boundaries within a sample, as in
generate_corpus and GPT-style pretraining. The last partial sample is dropped.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from tensile import contract

from .sampler import FeistelPermutation
from .shards import TokenDataset, TokenShardWriter, token_dtype_for_vocab
from .sources import Document, SourceError, SourceSpec, open_source

HELD_OUT_DIRECTORY = contract.HELD_OUT_DIRECTORY
"""The held-out split lives at DEST/heldout, a dataset of its own (DEST holds the training one)."""
SHARD_BYTES = 64 << 20
"""Default shard size: few enough files for a large dataset, small enough to verify one at a time."""
Progress = Callable[[str, int, int], None]
"""progress(phase, tokens done, tokens in all): phase is "scan" or "pack"."""


@dataclass(frozen=True, slots=True)
class HeldOut:
    """How much to hold out: a fraction of the samples (0 < f < 1) or a number of them."""

    fraction: float | None = None
    count: int | None = None

    @classmethod
    def parse(cls, text: str) -> HeldOut:
        try:
            value = float(text)
        except ValueError:
            raise SourceError(f"--held-out must be a fraction in [0, 1) or a sample count, got {text!r}") from None
        if value < 0 or (value >= 1 and value != int(value)):
            raise SourceError(f"--held-out must be a fraction in [0, 1) or a sample count, got {text!r}")
        return cls(fraction=value) if value < 1 else cls(count=int(value))

    def samples_of(self, num_samples: int) -> int:
        if self.count is not None:
            wanted = self.count
        else:
            wanted = round((self.fraction or 0.0) * num_samples)
            wanted = max(wanted, 1) if self.fraction else 0
        if wanted >= num_samples:
            raise SourceError(f"holding out {wanted} of {num_samples} samples leaves none to train on; "
                              "lower --held-out")
        return wanted


@dataclass(frozen=True, slots=True)
class PrepareResult:
    url: str
    held_out_url: str | None
    samples: int
    held_out_samples: int
    documents: int
    tokens: int
    """Tokens packed, EOS ids included."""
    dropped_tokens: int
    """The last partial sample's tokens."""
    vocab_size: int
    loss_mask: bool


@dataclass(slots=True)
class _Scan:
    documents: int = 0
    tokens: int = 0
    max_token: int = -1
    masked: bool = False


def _with_separators(documents: Iterator[Document], eos_id: int | None) -> Iterator[Document]:
    for document in documents:
        yield document
        if eos_id is not None and not document.continues:
            # The EOS is a target like any other: the model learns where documents end.
            yield Document(np.array([eos_id], dtype=np.int64),
                           None if document.loss_mask is None else np.ones(1, dtype=bool))


def _scan(spec: SourceSpec, eos_id: int | None, progress: Progress) -> _Scan:
    """One pass before packing: the sample count (for the held-out split), the vocabulary, masks."""
    scan = _Scan()
    documents, total = open_source(spec)
    for document in documents:
        separated = eos_id is not None and not document.continues
        scan.documents += 0 if document.continues else 1
        scan.tokens += len(document.tokens) + separated
        if len(document.tokens):
            low, high = int(document.tokens.min()), int(document.tokens.max())
            if low < 0:
                raise SourceError(f"{spec.path} holds the token id {low}; ids must be >= 0")
            scan.max_token = max(scan.max_token, high)
        scan.max_token = max(scan.max_token, eos_id) if separated else scan.max_token
        scan.masked |= document.loss_mask is not None
        progress("scan", scan.tokens - (scan.documents if eos_id is not None else 0), total)
    return scan


def _samples(spec: SourceSpec, eos_id: int | None, sample_length: int,
             progress: Progress, total: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(tokens [k, L], mask [k, L]) blocks of whole samples, in stream order."""
    documents, _ = open_source(spec)
    tokens, flags = np.empty(0, dtype=np.int64), np.empty(0, dtype=bool)
    done = 0
    for document in _with_separators(documents, eos_id):
        mask = document.loss_mask if document.loss_mask is not None else np.ones(len(document.tokens), dtype=bool)
        tokens, flags = np.concatenate([tokens, document.tokens]), np.concatenate([flags, mask])
        whole = len(tokens) // sample_length * sample_length
        if whole:
            yield tokens[:whole].reshape(-1, sample_length), flags[:whole].reshape(-1, sample_length)
            tokens, flags = tokens[whole:], flags[whole:]
        done += len(document.tokens)
        progress("pack", done, total)


def prepare(spec: SourceSpec, url: str, *, seq_len: int, vocab_size: int | None = None, eos_id: int | None = None,
            held_out: HeldOut = HeldOut(), seed: int = 0, samples_per_shard: int | None = None,
            progress: Progress = lambda phase, done, total: None) -> PrepareResult:
    """Converts the input at spec into a dataset at url (and url/heldout); returns what it wrote."""
    if seq_len < 1:
        raise SourceError(f"--seq-len must be a positive integer, got {seq_len}")
    sample_length = seq_len + 1
    scan = _scan(spec, eos_id, progress)
    if eos_id is not None and eos_id < 0:
        raise SourceError(f"--eos-id must be >= 0, got {eos_id}")
    vocab = vocab_size if vocab_size is not None else scan.max_token + 1
    if scan.max_token >= vocab:
        raise SourceError(f"the input holds the token id {scan.max_token}, outside --vocab-size {vocab}")
    num_samples = scan.tokens // sample_length
    if num_samples == 0:
        raise SourceError(f"the input holds {scan.tokens} tokens, fewer than one sample of seq_len + 1 = "
                          f"{sample_length}; lower --seq-len")
    held = held_out.samples_of(num_samples)
    # Held-out samples are spread over the whole input, chosen by a keyed bijection of the sample
    # index, so a sorted input (by source, by date) is not held out by its tail alone.
    chooser = FeistelPermutation(num_samples, seed, epoch=0)
    itemsize = np.dtype(token_dtype_for_vocab(vocab)).itemsize
    per_shard = samples_per_shard or max(1, SHARD_BYTES // (sample_length * itemsize))
    held_out_url = f"{url.rstrip('/')}/{HELD_OUT_DIRECTORY}" if held else None
    options = {"seq_len": seq_len, "vocab_size": vocab, "samples_per_shard": per_shard, "loss_mask": scan.masked}
    train = TokenShardWriter(url, **options)
    evaluation = TokenShardWriter(held_out_url, **options) if held_out_url else None
    index = 0
    try:
        for tokens, flags in _samples(spec, eos_id, sample_length, progress, scan.tokens):
            is_held = chooser(np.arange(index, index + len(tokens))) < held
            for row in range(len(tokens)):
                writer = evaluation if is_held[row] else train
                writer.write(tokens[row], flags[row] if scan.masked else None)
            index += len(tokens)
        if evaluation is not None:
            evaluation.close()
        train.close()
    except BaseException:
        train.abort()
        if evaluation is not None:
            evaluation.abort()
        raise
    TokenDataset(url)  # reads back what was written: the index parses and its version checks out
    return PrepareResult(url=url, held_out_url=held_out_url, samples=num_samples - held, held_out_samples=held,
                         documents=scan.documents, tokens=scan.tokens,
                         dropped_tokens=scan.tokens - num_samples * sample_length, vocab_size=vocab,
                         loss_mask=scan.masked)

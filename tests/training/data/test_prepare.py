"""`tensile data prepare`: every input format round-trips (the samples are the source's tokens,
packed), masks carry through, the held-out split is its own dataset, and the CLI reports it."""

import json
import struct

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from tensile.cli import app
from tensile.data import TokenDataset
from tensile.data.prepare import HeldOut, prepare
from tensile.data.sources import SourceError, SourceSpec, guess_format

pa = pytest.importorskip("pyarrow")
import pyarrow.parquet as pq  # noqa: E402

SEQ_LEN = 7


def _documents(count=40, seed=0, vocab=500):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, vocab, size=rng.integers(1, 30)) for _ in range(count)]


def _all_samples(url):
    """The training and held-out samples, in stream order (held-out ones are spread among them)."""
    train = TokenDataset(url)
    parts = [train.read(range(train.num_samples))]
    masks = [train.read_loss_mask(range(train.num_samples))]
    try:
        held = TokenDataset(f"{url}/heldout")
        parts.append(held.read(range(held.num_samples)))
        masks.append(held.read_loss_mask(range(held.num_samples)))
    except FileNotFoundError:
        pass
    return torch.cat(parts), torch.cat(masks)


def _packed(stream, sample_length=SEQ_LEN + 1):
    whole = len(stream) // sample_length * sample_length
    return np.asarray(stream[:whole]).reshape(-1, sample_length)


def _sorted_rows(array):
    return sorted(map(tuple, np.asarray(array).tolist()))


def test_prepare_npy_stream_packs_the_tokens_in_order(tmp_path):
    tokens = np.random.default_rng(1).integers(0, 70_000, size=1003).astype(np.uint32)
    np.save(tmp_path / "tokens.npy", tokens)

    result = prepare(SourceSpec(path=tmp_path / "tokens.npy", format="npy"), str(tmp_path / "out"), seq_len=SEQ_LEN)
    dataset = TokenDataset(str(tmp_path / "out"))

    assert (result.samples, result.dropped_tokens, result.vocab_size) == (125, 3, int(tokens.max()) + 1)
    assert dataset.read(range(125)).numpy().tolist() == _packed(tokens).tolist()
    assert not dataset.has_loss_mask and dataset.dtype.itemsize == 4


def test_prepare_raw_memmap_needs_its_dtype_and_reads_with_it(tmp_path):
    tokens = np.arange(100, dtype=np.uint16)
    tokens.tofile(tmp_path / "tokens.u16")
    spec = SourceSpec(path=tmp_path / "tokens.u16", format="raw")
    with pytest.raises(SourceError, match="--dtype"):
        prepare(spec, str(tmp_path / "out"), seq_len=SEQ_LEN)

    prepare(SourceSpec(path=tmp_path / "tokens.u16", format="raw", dtype="uint16"), str(tmp_path / "out"), seq_len=SEQ_LEN)
    assert TokenDataset(str(tmp_path / "out")).read(range(12)).numpy().tolist() == _packed(tokens).tolist()


def test_prepare_parquet_documents_with_eos_and_masks_carries_both_through(tmp_path):
    documents = _documents()
    masks = [np.random.default_rng(i).random(len(d)) < 0.7 for i, d in enumerate(documents)]
    table = pa.table({"input_ids": [d.tolist() for d in documents], "keep": [m.tolist() for m in masks]})
    pq.write_table(table, tmp_path / "part-0.parquet", row_group_size=7)  # batches cut mid-file

    result = prepare(SourceSpec(path=tmp_path / "part-0.parquet", format="parquet", mask_column="keep"),
                     str(tmp_path / "out"), seq_len=SEQ_LEN, eos_id=499, vocab_size=500)

    stream = np.concatenate([np.append(d, 499) for d in documents])
    flags = np.concatenate([np.append(m, True) for m in masks])
    tokens, loss_mask = _all_samples(str(tmp_path / "out"))
    assert result.documents == 40 and result.loss_mask
    assert tokens.numpy().tolist() == _packed(stream).tolist()
    assert loss_mask.numpy().astype(bool).tolist() == _packed(flags)[:, 1:].tolist()


def test_prepare_labels_with_an_ignore_index_mask_their_tokens(tmp_path):
    documents = _documents(10)
    labels = [np.where(np.arange(len(d)) < len(d) // 2, -100, d) for d in documents]  # a prompt, then an answer
    pq.write_table(pa.table({"input_ids": [d.tolist() for d in documents], "labels": [x.tolist() for x in labels]}),
                   tmp_path / "sft.parquet")

    prepare(SourceSpec(path=tmp_path / "sft.parquet", format="parquet", mask_column="labels", ignore_index=-100),
            str(tmp_path / "out"), seq_len=SEQ_LEN)

    _, loss_mask = _all_samples(str(tmp_path / "out"))
    flags = np.concatenate([x != -100 for x in labels])
    assert loss_mask.numpy().astype(bool).tolist() == _packed(flags)[:, 1:].tolist()


def test_prepare_reads_a_saved_hugging_face_dataset_without_the_datasets_package(tmp_path):
    # What datasets.Dataset.save_to_disk writes: arrow stream files named in state.json, per split
    # under a DatasetDict.
    documents = _documents(25, seed=2)
    split = tmp_path / "hf" / "train"
    split.mkdir(parents=True)
    halves = [documents[:12], documents[12:]]
    for number, half in enumerate(halves):
        table = pa.table({"input_ids": pa.array([d.tolist() for d in half], type=pa.list_(pa.int32())),
                          "text": ["x"] * len(half)})
        with pa.ipc.new_stream(split / f"data-0000{number}-of-00002.arrow", table.schema) as writer:
            writer.write_table(table)
    (split / "state.json").write_text(json.dumps({"_data_files": [
        {"filename": f"data-0000{n}-of-00002.arrow"} for n in range(2)]}))
    (tmp_path / "hf" / "dataset_dict.json").write_text(json.dumps({"splits": ["train"]}))

    assert guess_format(tmp_path / "hf") == "hf"
    prepare(SourceSpec(path=tmp_path / "hf", format="hf"), str(tmp_path / "out"), seq_len=SEQ_LEN, eos_id=0)
    tokens, _ = _all_samples(str(tmp_path / "out"))
    assert tokens.numpy().tolist() == _packed(np.concatenate([np.append(d, 0) for d in documents])).tolist()
    with pytest.raises(SourceError, match="splits"):
        prepare(SourceSpec(path=tmp_path / "hf", format="hf", split="test"), str(tmp_path / "x"), seq_len=SEQ_LEN)


def _write_megatron(prefix, documents, dtype=np.uint16):
    """Megatron-LM's MMIDIDX layout (megatron/core/datasets/indexed_dataset.py), one sequence per document."""
    lengths = np.array([len(d) for d in documents], dtype=np.int32)
    pointers = np.concatenate([[0], np.cumsum(lengths[:-1]) * np.dtype(dtype).itemsize]).astype(np.int64)
    np.concatenate(documents).astype(dtype).tofile(f"{prefix}.bin")
    with open(f"{prefix}.idx", "wb") as index:
        index.write(b"MMIDIDX\x00\x00" + struct.pack("<QB", 1, 8) + struct.pack("<QQ", len(documents), len(documents) + 1))
        index.write(lengths.tobytes() + pointers.tobytes() + np.arange(len(documents) + 1, dtype=np.int64).tobytes())


def test_prepare_reads_megatron_bin_idx(tmp_path):
    documents = _documents(30, seed=3)
    _write_megatron(tmp_path / "corpus_text_document", documents)

    assert guess_format(tmp_path / "corpus_text_document.bin") == "megatron"
    result = prepare(SourceSpec(path=tmp_path / "corpus_text_document.bin", format="megatron"), str(tmp_path / "out"),
                     seq_len=SEQ_LEN, eos_id=7)
    tokens, _ = _all_samples(str(tmp_path / "out"))
    assert result.documents == 30
    assert tokens.numpy().tolist() == _packed(np.concatenate([np.append(d, 7) for d in documents])).tolist()


@pytest.mark.parametrize(("held_out", "count"), [("0.1", 12), ("5", 5), ("0", 0)])
def test_prepare_holds_out_samples_as_a_dataset_of_their_own(tmp_path, held_out, count):
    tokens = np.arange(1000, dtype=np.uint16)
    np.save(tmp_path / "t.npy", tokens)
    result = prepare(SourceSpec(path=tmp_path / "t.npy", format="npy"), str(tmp_path / "out"), seq_len=SEQ_LEN,
                     held_out=HeldOut.parse(held_out))

    assert (result.samples, result.held_out_samples) == (125 - count, count)
    assert TokenDataset(str(tmp_path / "out")).num_samples == 125 - count
    if count:
        held = TokenDataset(str(tmp_path / "out" / "heldout"))
        assert held.num_samples == count and held.seq_len == SEQ_LEN
        # Spread over the input, not its tail; together the two are exactly the packed samples.
        positions = held.read(range(count))[:, 0] // (SEQ_LEN + 1)
        assert positions.min().item() < 125 - count
    else:
        assert not (tmp_path / "out" / "heldout").exists()
    together, _ = _all_samples(str(tmp_path / "out"))
    assert _sorted_rows(together) == _sorted_rows(_packed(tokens))


@pytest.mark.parametrize("text", ["-1", "1.5", "half"])
def test_held_out_refuses_what_is_neither_a_fraction_nor_a_count(text):
    with pytest.raises(SourceError, match="--held-out"):
        HeldOut.parse(text)


def test_prepare_refuses_ids_outside_the_vocabulary_and_inputs_too_short(tmp_path):
    np.save(tmp_path / "t.npy", np.arange(20, dtype=np.int32))
    spec = SourceSpec(path=tmp_path / "t.npy", format="npy")
    with pytest.raises(SourceError, match="token id 19, outside --vocab-size 10"):
        prepare(spec, str(tmp_path / "a"), seq_len=SEQ_LEN, vocab_size=10)
    with pytest.raises(SourceError, match="fewer than one sample"):
        prepare(spec, str(tmp_path / "b"), seq_len=40)


def test_data_prepare_command_converts_with_a_progress_bar_and_reports(tmp_path):
    np.save(tmp_path / "t.npy", np.arange(1000, dtype=np.uint16) % 300)
    result = CliRunner().invoke(app, ["data", "prepare", str(tmp_path / "t.npy"), str(tmp_path / "out"),
                                      "--seq-len", "15", "--held-out", "0.1"])

    assert result.exit_code == 0, result.output
    output = " ".join(result.output.split())  # rich wraps long lines
    assert "packing" in output and "56 samples" in output and "held out 6 samples" in output
    assert TokenDataset(str(tmp_path / "out" / "heldout")).num_samples == 6


def test_data_prepare_command_names_the_problem(tmp_path):
    (tmp_path / "t.xyz").write_bytes(b"\0" * 64)
    result = CliRunner().invoke(app, ["data", "prepare", str(tmp_path / "t.xyz"), str(tmp_path / "out"), "--seq-len", "4"])
    assert result.exit_code == 2 and "--format" in " ".join(result.output.split())

"""Shards: dtype by vocab size, exact document recovery, deterministic disjoint validation split."""

import json

import numpy as np
import pytest

from nanoseek.data.config import CorpusConfig, DataConfig
from nanoseek.data.packing import build_loader
from nanoseek.data.shards import TokenShards, is_val, prepare_dataset, shard_dtype, write_shards
from nanoseek.data.sources import DataError
from nanoseek.data.tokenizer import train_tokenizer

DOCS = [f"Document {i}: " + "some words about item %d and ünïcode 🙂 " % i * (1 + i % 7) for i in range(300)]


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(DOCS, vocab_size=320)


def test_shard_dtype():
    assert shard_dtype(320) == np.uint16 and shard_dtype(65536) == np.uint16 and shard_dtype(65537) == np.uint32


def test_round_trip_and_sidecars(tok, tmp_path):
    meta = write_shards(DOCS, tok, tmp_path, shard_tokens=2000, val_fraction=0.0, progress=False)
    assert meta["train"]["docs"] == len(DOCS) and meta["train"]["shards"] > 3 and meta["val"]["docs"] == 0
    sh = TokenShards(tmp_path / "train")
    assert len(sh) == len(DOCS) and sh.dtype == np.uint16 and sh.num_tokens == meta["train"]["tokens"]
    for i, text in enumerate(DOCS):
        d = sh[i]
        assert d[0] == tok.bos_id and d[-1] == tok.eos_id
        assert tok.decode(d[1:-1]) == text
    side = json.loads((tmp_path / "train" / "shard_00000.json").read_text())
    assert side["doc_offsets"][0] == 0 and side["doc_offsets"][-1] == side["num_tokens"]
    assert (tmp_path / "train" / "shard_00000.bin").stat().st_size == 2 * side["num_tokens"]
    assert (sh.doc_lengths() == [len(d) for d in sh]).all()
    with pytest.raises(IndexError):
        sh[len(DOCS)]


class _BigVocab:
    """Stand-in tokenizer with a > 65536 vocabulary, to exercise the uint32 path."""

    vocab_size, bos_id, eos_id = 100_000, 99_998, 99_999

    def encode_batch(self, texts, add_bos=False):
        return [([self.bos_id] if add_bos else []) + [70_000 + ord(c) % 1000 for c in t] for t in texts]


def test_uint32_shards(tmp_path):
    write_shards(["abc", "de"], _BigVocab(), tmp_path, progress=False)
    sh = TokenShards(tmp_path / "train")
    assert sh.dtype == np.uint32 and sh[0].tolist() == [99_998, 70_097, 70_098, 70_099, 99_999]


def test_validation_split_deterministic_and_disjoint(tok, tmp_path):
    docs = [f"doc {i}" for i in range(2000)]
    val = {d for d in docs if is_val(d, 0, 0.1)}
    assert val == {d for d in docs if is_val(d, 0, 0.1)} and 120 < len(val) < 280
    assert val != {d for d in docs if is_val(d, 1, 0.1)}
    assert {d for d in docs if is_val(d, 0, 0.05)} <= val  # a larger fraction only adds documents
    meta = write_shards(docs, tok, tmp_path, val_fraction=0.1, seed=0, progress=False)
    dec = lambda split: {tok.decode(x[1:-1]) for x in TokenShards(tmp_path / split)}
    train, v = dec("train"), dec("val")
    assert v == val and not train & v and train | v == set(docs)
    assert meta["val"]["docs"] == len(val)


def test_prepare_dataset_from_files(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    rows = [{"text": t} for t in DOCS] + [{"text": DOCS[0]}, {"text": "x"}]  # a duplicate and a too-short doc
    (src / "a.jsonl").write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows))
    cfg = DataConfig(sources=[str(src)], vocab_size=300, seq_len=64, val_fraction=0.05, shard_tokens=5000)
    meta = prepare_dataset(cfg, tmp_path / "out", progress=False)
    assert meta["filter"]["reasons"]["exact_dup"] == 1 and meta["filter"]["reasons"]["too_short"] == 1
    assert meta["train"]["docs"] + meta["val"]["docs"] == meta["filter"]["kept"]
    assert json.loads((tmp_path / "out" / "filter_report.json").read_text())["seen"] == len(rows)
    b = next(build_loader(cfg, tmp_path / "out", batch_size=2))
    assert b["input_ids"].shape == (2, 64)
    assert sum(x["input_ids"].numel() for x in build_loader(cfg, tmp_path / "out", "val", batch_size=2)) > 0
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "b.jsonl").write_text('{"text": "fine and long enough to pass the filter"}\n{oops}\n')
    with pytest.raises(DataError, match=r"b.jsonl:2"):
        prepare_dataset(cfg.replace(sources=[str(bad)]), tmp_path / "out2", progress=False)


def test_prepare_default_corpus(tmp_path):
    cfg = DataConfig(vocab_size=400, val_fraction=0.05, corpus=CorpusConfig(max_bytes=150_000))
    meta = prepare_dataset(cfg, tmp_path, progress=False)
    assert meta["train"]["tokens"] > 10_000 and meta["dtype"] == "uint16" and meta["eos_id"] == 1
    assert (tmp_path / "tokenizer.json").exists() and (tmp_path / "meta.json").exists()

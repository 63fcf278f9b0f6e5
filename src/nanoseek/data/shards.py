"""Tokenize a document stream into memory-mapped token shards with document indexes.

Layout of a prepared dataset folder:
    tokenizer.json, tokenizer_config.json   the tokenizer used
    meta.json                               counts, dtype, config, filter report
    filter_report.json                      what filtering removed and why (if enabled)
    train/shard_00000.bin + .json           raw tokens (uint16 if vocab <= 65536 else uint32)
    val/shard_00000.bin + .json             held-out documents
Each `.json` sidecar holds `doc_offsets` (num_docs + 1 token offsets), so any document can be
recovered exactly and the packer can resume mid-document. A shard holds whole documents only.
Training reads shards through `np.memmap`, so datasets larger than RAM cost only page cache.
"""

from __future__ import annotations

import bisect
import hashlib
import json
from collections.abc import Iterable, Iterator
from itertools import islice
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from nanoseek.data.config import DataConfig
from nanoseek.data.corpus import default_corpus
from nanoseek.data.filters import DocumentFilter
from nanoseek.data.sources import DataError, iter_sources
from nanoseek.data.tokenizer import Tokenizer, train_tokenizer

SPLITS = ("train", "val")


def shard_dtype(vocab_size: int) -> np.dtype:
    """Smallest unsigned dtype holding every id: halves disk and page cache for small vocabs."""
    return np.dtype(np.uint16) if vocab_size <= 65536 else np.dtype(np.uint32)


def is_val(text: str, seed: int, fraction: float) -> bool:
    """Held-out by a seeded hash of the content: reproducible, order-independent, and two copies
    of one document always land in the same split (no train/val leakage through duplicates)."""
    if fraction <= 0:
        return False
    h = hashlib.blake2b(text.encode("utf-8"), digest_size=8, key=seed.to_bytes(8, "little", signed=True))
    return int.from_bytes(h.digest(), "little") / 2**64 < fraction


class ShardWriter:
    """Buffers whole documents and flushes a shard (`.bin` memmap + `.json` sidecar) every ~N tokens."""

    def __init__(self, out_dir: str | Path, dtype: np.dtype, shard_tokens: int):
        self.dir = Path(out_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        for old in self.dir.glob("shard_*"):  # never mix with a previous run's shards
            old.unlink()
        self.dtype, self.shard_tokens = dtype, shard_tokens
        self.buf: list[np.ndarray] = []
        self.buffered = 0
        self.shards = 0
        self.docs = 0
        self.tokens = 0

    def add(self, ids: list[int]) -> None:
        self.buf.append(np.asarray(ids, dtype=self.dtype))
        self.buffered += len(ids)
        if self.buffered >= self.shard_tokens:
            self.flush()

    def flush(self) -> None:
        if not self.buf:
            return
        lengths = [len(a) for a in self.buf]
        name = self.dir / f"shard_{self.shards:05d}"
        mm = np.memmap(name.with_suffix(".bin"), dtype=self.dtype, mode="w+", shape=(self.buffered,))
        mm[:] = np.concatenate(self.buf)
        mm.flush()
        del mm
        side = {"num_tokens": self.buffered, "num_docs": len(lengths), "dtype": self.dtype.name,
                "doc_offsets": np.concatenate([[0], np.cumsum(lengths)]).tolist()}
        name.with_suffix(".json").write_text(json.dumps(side))
        self.shards += 1
        self.docs += len(lengths)
        self.tokens += self.buffered
        self.buf, self.buffered = [], 0

    def close(self) -> dict:
        self.flush()
        return {"docs": self.docs, "tokens": self.tokens, "shards": self.shards}


def write_shards(docs: Iterable[str], tok: Tokenizer, out_dir: str | Path, shard_tokens: int = 1 << 24,
                 val_fraction: float = 0.0, seed: int = 0, add_bos: bool = True, batch_docs: int = 256,
                 progress: bool = True) -> dict:
    """Stream-tokenize `docs` into `out_dir/{train,val}` shards; each doc is [bos] + ids + [eos].

    Returns {"train": {docs, tokens, shards}, "val": {...}, "dtype": ...}.
    """
    if tok.eos_id is None or (add_bos and tok.bos_id is None):
        raise DataError("tokenizer has no eos (or bos) token; cannot mark document boundaries")
    dtype = shard_dtype(tok.vocab_size)
    writers = {s: ShardWriter(Path(out_dir) / s, dtype, shard_tokens) for s in SPLITS}
    it, bar = iter(docs), tqdm(desc="tokenize", unit="doc", disable=not progress)
    while batch := list(islice(it, batch_docs)):
        for text, ids in zip(batch, tok.encode_batch(batch, add_bos=add_bos)):
            writers["val" if is_val(text, seed, val_fraction) else "train"].add(ids + [tok.eos_id])
        bar.update(len(batch))
        bar.set_postfix(tokens=sum(w.tokens + w.buffered for w in writers.values()), refresh=False)
    bar.close()
    out = {s: w.close() for s, w in writers.items()}
    if out["train"]["docs"] == 0:
        raise DataError("no documents to write (input empty or everything filtered out)")
    return {**out, "dtype": dtype.name}


class TokenShards:
    """Read-only view of one split: `len()` documents, `[i]` -> (L_i,) token array (a memmap view)."""

    def __init__(self, split_dir: str | Path):
        self.dir = Path(split_dir)
        sides = sorted(self.dir.glob("shard_*.json"))
        if not sides:
            raise DataError(f"{self.dir}: no token shards (run data preparation first)")
        self._meta = [json.loads(p.read_text()) for p in sides]
        self._bins = [p.with_suffix(".bin") for p in sides]
        self._mm: list[np.memmap | None] = [None] * len(sides)
        self.dtype = np.dtype(self._meta[0]["dtype"])
        self._offsets = [np.asarray(m["doc_offsets"], dtype=np.int64) for m in self._meta]
        self._first_doc = np.cumsum([0] + [m["num_docs"] for m in self._meta]).tolist()  # (n_shards + 1,)

    def __len__(self) -> int:
        return self._first_doc[-1]

    @property
    def num_tokens(self) -> int:
        return sum(m["num_tokens"] for m in self._meta)

    def doc_lengths(self) -> np.ndarray:
        """(num_docs,) tokens per document, from the sidecars alone (no token reads)."""
        return np.concatenate([np.diff(o) for o in self._offsets])

    def _shard(self, k: int) -> np.memmap:
        if self._mm[k] is None:  # opened lazily: a run touches few shards at a time
            self._mm[k] = np.memmap(self._bins[k], dtype=self.dtype, mode="r")
        return self._mm[k]

    def __getitem__(self, i: int) -> np.ndarray:
        if not 0 <= i < len(self):
            raise IndexError(f"document {i} out of range (0..{len(self) - 1})")
        k = bisect.bisect_right(self._first_doc, i) - 1
        j = i - self._first_doc[k]
        o = self._offsets[k]
        return self._shard(k)[o[j]:o[j + 1]]

    def __iter__(self) -> Iterator[np.ndarray]:
        return (self[i] for i in range(len(self)))


def _documents(cfg: DataConfig) -> Iterator[str]:
    return iter_sources(cfg.sources, cfg.text_field, cfg.extensions) if cfg.sources \
        else default_corpus(cfg.corpus, cfg.seed)


def _take_bytes(docs: Iterable[str], max_bytes: int) -> Iterator[str]:
    total = 0
    for d in docs:
        if total >= max_bytes:
            return
        total += len(d.encode("utf-8"))
        yield d


def prepare_dataset(cfg: DataConfig, out_dir: str | Path, tokenizer: Tokenizer | None = None,
                    progress: bool = True) -> dict:
    """Sources (or the built-in corpus) -> filter -> tokenizer -> train/val shards + meta.json."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = tokenizer or (Tokenizer.load(cfg.tokenizer) if cfg.tokenizer else train_tokenizer(
        _take_bytes(_documents(cfg), cfg.tokenizer_train_bytes), cfg.vocab_size,
        digit_group=cfg.digit_group, show_progress=progress))
    tok.save(out)
    docs, flt = _documents(cfg), None
    if cfg.filter.enabled:
        flt = DocumentFilter(cfg.filter, cfg.seed)
        docs = flt(docs)
    meta = write_shards(docs, tok, out, cfg.shard_tokens, cfg.val_fraction, cfg.seed, cfg.add_bos,
                        progress=progress)
    meta.update(version=1, vocab_size=tok.vocab_size, bos_id=tok.bos_id, eos_id=tok.eos_id,
                pad_id=tok.pad_id, config=cfg.to_dict())
    if flt is not None:
        flt.report.save(out / "filter_report.json")
        meta["filter"] = {k: v for k, v in flt.report.to_dict().items() if k != "reasons"} | {
            "reasons": {r: d["count"] for r, d in flt.report.to_dict()["reasons"].items()}}
    (out / "meta.json").write_text(json.dumps(meta, ensure_ascii=False, indent=2))
    return meta

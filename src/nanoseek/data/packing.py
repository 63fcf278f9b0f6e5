"""Batches from token shards: packed (no padding, no cross-document attention) or pad-to-longest.

Packing (claim C5: "dynamic sequence length, -20% compute"): documents, each `[bos] … [eos]`, are
laid end to end and cut into rows of exactly S tokens; a document longer than the room left is
split and continues in the next row. Every row comes with
    input_ids    (S,)  tokens
    labels       (S,)  next-token targets; -100 at each document's last token, so no loss term
                       asks the model to predict the next document from this one
    position_ids (S,)  0, 1, 2, … restarting at every segment start (a document's start, or the
                       continuation of a split document at the start of a row), so RoPE positions
                       stay in [0, S) and match what the model would see for that segment alone
    doc_ids      (S,)  0, 1, 2, … one id per segment in the row; the model builds a
                       block-diagonal causal mask from them (attend iff same doc_id and j <= i)
All are int64 tensors of shape (B, S) per batch.

Shuffling: the unit is a *piece*, a document cut into spans of at most `piece` tokens (seq_len by
default). A 50K-token source file would otherwise fill ~25 consecutive batches of 8 × 256 and
the loss would swing with each file; its pieces are instead spread over the epoch. Positions and
masks are unchanged (a row already restarts positions at a split), and a piece's last label is the
document's next token, so no target is lost.

Determinism and resume: the piece order of epoch e is a permutation fixed by (seed, e) (or the
curriculum's document order for epoch 0, each document's pieces in turn), and a row is a pure
function of the position (epoch, cursor, offset) where it starts. `state_dict()` is that position, so a killed run resumes exactly.
Data parallel: every rank walks the same global stream and keeps rows rank, rank+W, …
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from nanoseek.data.config import DataConfig
from nanoseek.data.curriculum import Curriculum, Scorer

IGNORE_INDEX = -100
KEYS = ("input_ids", "labels", "position_ids", "doc_ids")


def _pieces(lengths: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cut documents of `lengths` (N,) into pieces of <= size tokens (size <= 0: whole documents).
    Returns doc (P,), start (P,) of every piece in document order, and the first piece of each doc (N,)."""
    lengths = np.asarray(lengths, dtype=np.int64)
    n = np.maximum(1, -(-lengths // size)) if size > 0 else np.ones_like(lengths)  # (N,) pieces per doc
    first = np.cumsum(n) - n
    doc = np.repeat(np.arange(len(lengths)), n)
    start = (np.arange(int(n.sum())) - first[doc]) * max(size, 0)
    return doc, start, first


class _DocCursor:
    """Walks document pieces in per-epoch order and hands out token spans; its state is 3 integers."""

    def __init__(self, docs: Sequence, seed: int, shuffle: bool, curriculum: Curriculum | None, wrap: bool,
                 piece: int = 0):
        if len(docs) == 0:
            raise ValueError("no documents to batch")
        self.docs, self.seed, self.shuffle, self.curriculum, self.wrap = docs, seed, shuffle, curriculum, wrap
        self.piece = piece
        lengths = docs.doc_lengths() if hasattr(docs, "doc_lengths") else np.array([len(d) for d in docs])
        self.p_doc, self.p_start, self.p_first = _pieces(lengths, piece)
        self.epoch = self.cursor = self.offset = 0
        self._order_epoch, self._order = -1, None

    def order(self) -> np.ndarray:
        """(P,) piece order of the current epoch (cached)."""
        if self._order_epoch != self.epoch:
            o = self.curriculum.order(self.epoch, self.seed) if self.curriculum else None
            if o is not None:  # a document order: each document's pieces in turn
                o = np.asarray(o, dtype=np.int64)
                counts = np.bincount(self.p_doc, minlength=len(self.docs))[o]
                o = np.repeat(self.p_first[o], counts) + np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts, counts)
            else:
                n = len(self.p_doc)
                o = np.random.default_rng([self.seed, self.epoch]).permutation(n) if self.shuffle else np.arange(n)
            self._order, self._order_epoch = o, self.epoch
        return self._order

    def take(self, n: int) -> tuple[np.ndarray, int, int] | None:
        """Up to n tokens of the current piece: (doc, start, end). None at the end if not wrapping."""
        if self.cursor == len(self.p_doc):
            if not self.wrap:
                return None
            self.epoch, self.cursor, self.offset = self.epoch + 1, 0, 0
        p = int(self.order()[self.cursor])
        doc = self.docs[int(self.p_doc[p])]
        p_start = int(self.p_start[p])
        p_end = min(p_start + self.piece, len(doc)) if self.piece > 0 else len(doc)
        start = p_start + self.offset
        end = min(start + n, p_end)
        if end == p_end:
            self.cursor, self.offset = self.cursor + 1, 0
        else:
            self.offset = end - p_start
        return doc, start, end

    def state(self) -> dict:
        return {"epoch": self.epoch, "cursor": self.cursor, "offset": self.offset, "piece_tokens": self.piece}


def _segment(doc: np.ndarray, start: int, end: int) -> tuple[np.ndarray, np.ndarray]:
    """(tokens, labels) of doc[start:end]; the last label is the next token, or -100 at the doc end."""
    x = np.asarray(doc[start:end], dtype=np.int64)
    y = np.empty_like(x)
    y[:-1] = x[1:]
    y[-1] = int(doc[end]) if end < len(doc) else IGNORE_INDEX
    return x, y


def _row(segments: list[tuple[np.ndarray, np.ndarray]], width: int, pad_id: int) -> dict[str, np.ndarray]:
    """Concatenate segments into one row of `width` (padding, if any: labels -100, its own doc id)."""
    xs, ys = [s[0] for s in segments], [s[1] for s in segments]
    pos = [np.arange(len(x)) for x in xs]
    ids = [np.full(len(x), i) for i, x in enumerate(xs)]
    pad = width - sum(len(x) for x in xs)
    if pad:
        for a, fill in ((xs, pad_id), (ys, IGNORE_INDEX), (pos, 0), (ids, len(segments))):
            a.append(np.full(pad, fill))
    return dict(zip(KEYS, (np.concatenate(a).astype(np.int64) for a in (xs, ys, pos, ids))))


class _Batcher:
    """Shared iterator / state / accounting of the packed and padded batchers."""

    kind = ""

    def __init__(self, docs: Sequence, seq_len: int, batch_size: int, seed: int = 0, shuffle: bool = True,
                 curriculum: Curriculum | None = None, rank: int = 0, world_size: int = 1, pad_id: int = 2,
                 wrap: bool = True, piece_tokens: int = 0):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} not in 0..{world_size - 1}")
        self.S, self.B, self.rank, self.world, self.pad_id = seq_len, batch_size, rank, world_size, pad_id
        # piece_tokens: 0 = seq_len, -1 = whole documents (see the module docstring)
        self.cur = _DocCursor(docs, seed, shuffle, curriculum, wrap, seq_len if piece_tokens == 0 else piece_tokens)
        self.useful = self.total = self.batches = 0

    def _next_row(self) -> dict[str, np.ndarray] | None:
        raise NotImplementedError

    def _stack(self, rows: list[dict[str, np.ndarray]]) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        rows = [self._next_row() for _ in range(self.B * self.world)]  # the global batch
        rows = [r for r in rows if r is not None]
        mine = rows[self.rank::self.world]
        if not mine:
            raise StopIteration
        batch = self._stack(mine)  # each (B, S) int64
        self.useful += int((batch["labels"] != IGNORE_INDEX).sum())
        self.total += batch["labels"].numel()
        self.batches += 1
        return batch

    @property
    def useful_fraction(self) -> float:
        """Positions that carry a loss term / positions computed, over everything yielded so far."""
        return self.useful / max(self.total, 1)

    @property
    def epoch(self) -> int:
        return self.cur.epoch

    def state_dict(self) -> dict:
        return {"kind": self.kind, **self.cur.state(), "seed": self.cur.seed, "num_docs": len(self.cur.docs),
                "seq_len": self.S, "batch_size": self.B, "world_size": self.world,
                "useful": self.useful, "total": self.total, "batches": self.batches}

    def load_state_dict(self, sd: dict) -> None:
        """Resume at the exact data position; the dataset and batch geometry must be the same."""
        for k, v in (("kind", self.kind), ("seed", self.cur.seed), ("num_docs", len(self.cur.docs)),
                     ("seq_len", self.S), ("batch_size", self.B), ("world_size", self.world)):
            if sd[k] != v:
                raise ValueError(f"cannot resume: state has {k}={sd[k]!r}, this loader has {v!r}")
        if sd.get("piece_tokens") != self.cur.piece:
            raise ValueError(f"cannot resume: the data position was saved with piece_tokens={sd.get('piece_tokens')!r} "
                             f"(None: an older loader that shuffled whole documents), this loader has {self.cur.piece}")
        self.cur.epoch, self.cur.cursor, self.cur.offset = sd["epoch"], sd["cursor"], sd["offset"]
        self.useful, self.total, self.batches = sd["useful"], sd["total"], sd["batches"]


class PackedDataset(_Batcher):
    """(B, S) packed batches from `docs` (a `TokenShards` or any sequence of token arrays)."""

    kind = "packed"

    def _next_row(self) -> dict[str, np.ndarray] | None:
        segs, need = [], self.S
        while need > 0 and (span := self.cur.take(need)) is not None:
            segs.append(_segment(*span))
            need -= len(segs[-1][0])
        return _row(segs, self.S, self.pad_id) if segs else None  # padded only at the end of a non-wrapping pass

    def _stack(self, rows: list[dict[str, np.ndarray]]) -> dict[str, torch.Tensor]:
        return {k: torch.from_numpy(np.stack([r[k] for r in rows])) for k in KEYS}


class PaddedBatcher(_Batcher):
    """Baseline: one document (chunk of <= S tokens) per row, padded to the longest row of the batch."""

    kind = "padded"

    def _next_row(self) -> dict[str, np.ndarray] | None:
        span = self.cur.take(self.S)
        return None if span is None else _row([_segment(*span)], span[2] - span[1], self.pad_id)

    def _stack(self, rows: list[dict[str, np.ndarray]]) -> dict[str, torch.Tensor]:
        width = max(len(r["input_ids"]) for r in rows)
        out = {}
        for k, fill in zip(KEYS, (self.pad_id, IGNORE_INDEX, 0, 1)):
            out[k] = torch.from_numpy(np.stack([np.pad(r[k], (0, width - len(r[k])), constant_values=fill)
                                                for r in rows]))
        return out


def eval_batches(docs: Sequence, seq_len: int, batch_size: int, pad_id: int = 2) -> Iterator[dict[str, torch.Tensor]]:
    """One packed pass over `docs` in stored order (validation): every token exactly once,
    the final row padded with label -100 and the final batch possibly smaller."""
    return PackedDataset(docs, seq_len, batch_size, shuffle=False, pad_id=pad_id, wrap=False)


def build_loader(cfg: DataConfig, data_dir: str | Path, split: str = "train", batch_size: int = 8,
                 rank: int = 0, world_size: int = 1, scorer: Scorer | None = None) -> _Batcher:
    """The training (or validation) loader a prepared dataset folder and a DataConfig describe."""
    from nanoseek.data.shards import TokenShards

    docs = TokenShards(Path(data_dir) / split)
    meta_path = Path(data_dir) / "meta.json"
    pad_id = json.loads(meta_path.read_text()).get("pad_id") if meta_path.exists() else None
    pad_id = 2 if pad_id is None else pad_id
    if split != "train":
        return eval_batches(docs, cfg.seq_len, batch_size, pad_id)
    cur = Curriculum.from_docs(docs, cfg.curriculum, scorer) if cfg.curriculum.enabled else None
    cls = PackedDataset if cfg.packing == "packed" else PaddedBatcher
    return cls(docs, cfg.seq_len, batch_size, cfg.seed, True, cur, rank, world_size, pad_id,
               piece_tokens=cfg.piece_tokens)

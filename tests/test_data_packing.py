"""Packing: positions restart, -100 at boundaries, no padding, full coverage, exact resume."""

import json

import numpy as np
import pytest
import torch

from nanoseek.data.config import CurriculumConfig
from nanoseek.data.curriculum import Curriculum
from nanoseek.data.packing import IGNORE_INDEX, KEYS, PackedDataset, PaddedBatcher, eval_batches

S, B = 32, 3


def _docs(n=60, seed=0):
    """Token t of document d is 1000*(d+1) + t: every token identifies its document and place."""
    lens = np.random.default_rng(seed).integers(2, 3 * S, n)  # some longer than a row
    return [np.arange(L, dtype=np.int64) + 1000 * (d + 1) for d, L in enumerate(lens)]


def _check_row(x, y, pos, ids, docs):
    doc_of = x // 1000 - 1
    assert ids[0] == 0 and set(np.diff(ids)) <= {0, 1}  # one id per segment, increasing
    starts = np.r_[True, np.diff(ids) == 1]
    assert (pos[starts] == 0).all() and (np.diff(pos)[~starts[1:]] == 1).all()  # restart at each segment
    assert (doc_of[1:][~starts[1:]] == doc_of[:-1][~starts[1:]]).all()  # a segment is one document
    for i in range(len(x)):
        d = docs[doc_of[i]]
        t = x[i] - 1000 * (doc_of[i] + 1)
        assert y[i] == (d[t + 1] if t + 1 < len(d) else IGNORE_INDEX)  # -100 exactly at document ends


def test_packed_rows_are_correct_and_unpadded():
    docs = _docs()
    ds = PackedDataset(docs, S, B, seed=1)
    for _ in range(20):
        b = next(ds)
        assert all(b[k].shape == (B, S) and b[k].dtype == torch.int64 for k in KEYS)
        for r in range(B):
            _check_row(*(b[k][r].numpy() for k in KEYS), docs)
    n_ends = sum(int((next(ds)["labels"] == IGNORE_INDEX).sum()) for _ in range(5))
    assert 0 < ds.useful_fraction < 1 and n_ends > 0


def test_every_token_once_per_epoch():
    docs = _docs()
    ds = PackedDataset(docs, S, B, seed=2)
    order = ds.cur.order().copy()
    seen = []
    while ds.epoch == 0:
        seen.append(next(ds)["input_ids"].reshape(-1))
    stream = torch.cat(seen).numpy()
    c = ds.cur  # the shuffle unit is a piece: <= S tokens of one document
    expected = np.concatenate([docs[c.p_doc[p]][c.p_start[p]: c.p_start[p] + S] for p in order])
    assert (stream[:len(expected)] == expected).all()  # in epoch order, no token skipped or repeated
    assert sorted(stream[:len(expected)].tolist()) == sorted(np.concatenate(docs).tolist())
    assert (stream[len(expected):] // 1000 - 1 < len(docs)).all()  # then epoch 1 continues seamlessly


@pytest.mark.parametrize("cls", [PackedDataset, PaddedBatcher])
def test_resume_gives_identical_batches(cls):
    docs = _docs()
    cur = Curriculum.from_docs(docs, CurriculumConfig(enabled=True))
    a = cls(docs, S, B, seed=5, curriculum=cur)
    n = 0
    while a.epoch == 0:
        next(a)
        n += 1
    a = cls(docs, S, B, seed=5, curriculum=cur)
    for _ in range(n - 3):  # stop 3 batches before the epoch boundary, so the resumed part crosses it
        next(a)
    state = json.loads(json.dumps(a.state_dict()))  # must survive a JSON checkpoint
    want = [next(a) for _ in range(25)]
    b = cls(docs, S, B, seed=5, curriculum=cur)
    b.load_state_dict(state)
    for w in want:
        g = next(b)
        assert all(torch.equal(w[k], g[k]) for k in KEYS)
    assert b.useful_fraction == a.useful_fraction
    with pytest.raises(ValueError, match="seq_len"):
        cls(docs, S + 1, B, seed=5).load_state_dict(state)


def test_long_documents_are_shuffled_in_pieces():
    """A document of 30 rows does not fill 30 consecutive rows: its pieces are spread over the epoch
    (piece_tokens=-1 restores whole-document shuffling, where it does)."""
    docs = _docs(200) + [np.arange(30 * S, dtype=np.int64) + 1000 * 201]
    def rows_of_long_doc(ds):
        rows = []
        while ds.epoch == 0:
            rows += [bool(((r // 1000) == 201).any()) for r in next(ds)["input_ids"].numpy()]
        hit = np.flatnonzero(rows)
        return hit, hit.max() - hit.min() + 1  # rows touching it, and the span they cover
    hit, span = rows_of_long_doc(PackedDataset(docs, S, B, seed=4))
    assert len(hit) >= 30 and span > 3 * len(hit)  # scattered
    hit, span = rows_of_long_doc(PackedDataset(docs, S, B, seed=4, piece_tokens=-1))
    assert span <= len(hit) + 1  # consecutive: the old behaviour
    ds = PackedDataset(docs, S, B, seed=4)
    with pytest.raises(ValueError, match="piece_tokens"):
        PackedDataset(docs, S, B, seed=4, piece_tokens=-1).load_state_dict(ds.state_dict())


def test_deterministic_and_seed_dependent():
    docs = _docs()
    x = next(PackedDataset(docs, S, B, seed=7))["input_ids"]
    assert torch.equal(x, next(PackedDataset(docs, S, B, seed=7))["input_ids"])
    assert not torch.equal(x, next(PackedDataset(docs, S, B, seed=8))["input_ids"])


def test_data_parallel_ranks_split_the_global_batch():
    docs = _docs()
    full = next(PackedDataset(docs, S, 2 * B, seed=3))
    parts = [next(PackedDataset(docs, S, B, seed=3, rank=r, world_size=2)) for r in range(2)]
    for k in KEYS:
        assert torch.equal(parts[0][k], full[k][0::2]) and torch.equal(parts[1][k], full[k][1::2])


def test_padded_baseline_interface_and_accounting():
    docs = _docs()
    pb, pk = PaddedBatcher(docs, S, B, seed=1), PackedDataset(docs, S, B, seed=1)
    for _ in range(30):
        b = next(pb)
        next(pk)
        assert set(b) == set(KEYS) and b["input_ids"].shape[1] <= S
        for r in range(B):
            real = b["doc_ids"][r] == 0
            assert (b["labels"][r][~real] == IGNORE_INDEX).all() and (b["input_ids"][r][~real] == 2).all()
            assert (b["position_ids"][r][real] == torch.arange(int(real.sum()))).all()
    assert pb.useful_fraction < pk.useful_fraction


def test_eval_batches_cover_everything_once():
    docs = _docs(25)
    batches = list(eval_batches(docs, S, B))
    x = torch.cat([b["input_ids"].reshape(-1) for b in batches])
    y = torch.cat([b["labels"].reshape(-1) for b in batches])
    n = sum(len(d) for d in docs)
    assert (x[:n].numpy() == np.concatenate(docs)).all() and (y[n:] == IGNORE_INDEX).all()
    assert len(x) - n < S  # only the final row is padded

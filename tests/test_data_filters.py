"""Dedup (exact + MinHash-LSH), heuristic filters, the FilterReport, curriculum and DataConfig."""

import json
import random

import numpy as np
import pytest

from nanoseek.data.config import ConfigError, CurriculumConfig, DataConfig, FilterConfig
from nanoseek.data.curriculum import Curriculum, curriculum_order, difficulty_scores, pool_fraction
from nanoseek.data.filters import (DocumentFilter, FilterReport, MinHashLSH, dup_line_fraction, dup_ngram_fraction,
                                   heuristic_reason, lsh_bands, ngram_hashes, word_hashes)
from nanoseek.data.packing import PackedDataset

WORDS = ("apple river stone cloud quiet engine garden number window silver market planet yellow "
         "simple forest bridge coffee pencil rocket summer violin winter orange dragon castle").split()


def _doc(rng, n=300):
    sents = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 12))).capitalize() + "." for _ in range(n // 8)]
    return "\n".join(sents)


def test_exact_and_near_dedup():
    rng = random.Random(0)
    distinct = [_doc(rng) for _ in range(30)]
    base = distinct[0].split(" ")
    near = " ".join(w if i != 40 else "zebra" for i, w in enumerate(base))  # one word changed
    docs = distinct + [distinct[3], "  " + distinct[5] + "\n", near]
    for shingle in ("word", "char"):
        flt = DocumentFilter(FilterConfig(shingle=shingle, shingle_size=5 if shingle == "word" else 8))
        kept = list(flt(docs))
        assert kept == distinct
        assert flt.report.removed == {"exact_dup": 2, "near_dup": 1}


def test_minhash_estimates_jaccard():
    lsh = MinHashLSH(num_perm=256, threshold=0.5, seed=0)
    a, b = np.arange(0, 1000, dtype=np.uint64), np.arange(500, 1500, dtype=np.uint64)  # J = 1/3
    est = np.mean(lsh.signature(a) == lsh.signature(b))
    assert abs(est - 1 / 3) < 0.08
    assert not lsh.seen_before(a) and lsh.seen_before(a) and not lsh.seen_before(b)
    b_, r_ = lsh_bands(128, 0.8)
    assert b_ * r_ <= 128 and abs((1 / b_) ** (1 / r_) - 0.8) < 0.05


@pytest.mark.parametrize("text,reason", [
    ("tiny", "too_short"),
    ("word " * 10_000, "too_long"),
    ("!!!! #### $$$$ %%%% &&&& **** ((((" * 5, "low_alnum"),
    ("a+b=c; d*e/f; {g:h} [i-j] (k,l) <m> |n| " * 5, "high_symbols"),
    ("buy now\n" * 20 + "other line\n", "dup_lines"),
    ("the same words again and " * 40, "dup_ngrams"),
])
def test_each_heuristic(text, reason):
    cfg = FilterConfig(max_chars=20_000, max_dup_ngram_frac=0.5)
    assert heuristic_reason(text, cfg) == reason
    assert heuristic_reason(_doc(random.Random(1)), cfg) is None


def test_repetition_metrics():
    assert dup_line_fraction("a\nb\na\na\n\n") == pytest.approx(0.5)
    assert dup_ngram_fraction("one two three four five six", 5) == 0.0
    assert dup_ngram_fraction("x y " * 50, 2) > 0.9
    assert len(ngram_hashes(word_hashes("a b c"), 5)) == 1  # short docs still get one shingle
    assert (word_hashes("Hello hello") == word_hashes("hello HELLO")).all()


def test_filter_report_json(tmp_path):
    docs = ["ok document number %d with enough text to pass the filters" % i for i in range(6)]
    docs += ["x", "y", "z", "w", docs[0], docs[0]]
    flt = DocumentFilter(FilterConfig(near_dedup=False, examples=2))
    assert len(list(flt(docs))) == 6
    flt.report.save(tmp_path / "r.json")
    d = json.loads((tmp_path / "r.json").read_text())
    assert d["seen"] == 12 and d["kept"] == 6 and d["removed_fraction"] == pytest.approx(0.5)
    assert d["reasons"]["too_short"]["count"] == 4 and d["reasons"]["too_short"]["examples"] == ["x", "y"]
    assert d["reasons"]["exact_dup"]["fraction"] == pytest.approx(2 / 12)
    assert "too_short" in flt.report.summary()
    assert FilterReport().removed_fraction == 0.0


# ---------------------------------------------------------------------- curriculum
def test_curriculum_orders_easy_to_hard():
    rng = np.random.default_rng(0)
    scores = rng.random(2000)
    for sched in ("linear", "step", "sorted"):
        cfg = CurriculumConfig(enabled=True, schedule=sched, start_frac=0.2, ramp_frac=0.5)
        order = curriculum_order(scores, cfg, seed=3)
        assert sorted(order.tolist()) == list(range(2000))  # each document exactly once
        s = scores[order]
        assert s[:400].mean() < s[-400:].mean()
        assert (order == curriculum_order(scores, cfg, seed=3)).all()
        if sched == "sorted":
            assert (np.diff(s) >= 0).all()
        else:  # the first draws come only from the easiest start_frac of the corpus
            assert s[:50].max() <= np.quantile(scores, 0.2 + 0.8 * 50 / 2000 / 0.5) + 1e-9
    base = CurriculumConfig(start_frac=0.2, ramp_frac=0.5, steps=4)
    assert pool_fraction(0.0, base) == pytest.approx(0.2) and pool_fraction(0.5, base) == 1.0
    assert pool_fraction(0.2, CurriculumConfig(schedule="step", start_frac=0.2, ramp_frac=0.5, steps=4)) == pytest.approx(0.4)


def test_curriculum_scorers_and_packed_order():
    docs = [np.arange(n) for n in np.random.default_rng(1).integers(2, 200, 300)]
    assert (difficulty_scores(docs) == [len(d) for d in docs]).all()
    assert (difficulty_scores(docs, "numpy:max") == [d.max() for d in docs]).all()  # "module:function"
    assert (difficulty_scores(docs, lambda d: -len(d)) == [-len(d) for d in docs]).all()
    with pytest.raises(ValueError):
        difficulty_scores(docs, "nonsense")
    cur = Curriculum.from_docs(docs, CurriculumConfig(enabled=True, schedule="sorted"))
    assert cur.order(1, 0) is None  # later epochs are plain shuffles
    ds = PackedDataset(docs, 64, 2, seed=0, curriculum=cur)
    first, shortest = next(ds), min(len(d) for d in docs)
    assert first["position_ids"][0, shortest - 1] == shortest - 1 and first["position_ids"][0, shortest] == 0


def test_data_config_validation():
    cfg = DataConfig.from_dict({"vocab_size": 512, "filter": {"near_threshold": 0.7}, "curriculum": {"enabled": True}})
    assert isinstance(cfg.filter, FilterConfig) and cfg.filter.near_threshold == 0.7 and cfg.curriculum.enabled
    assert DataConfig.from_dict(cfg.to_dict()) == cfg
    for bad in ({"vocab_sise": 512}, {"filter": {"treshold": 0.5}}, {"seq_len": "1024"}, {"vocab_size": 100},
                {"packing": "dense"}, {"curriculum": {"schedule": "cosine"}}, {"val_fraction": 1.0},
                {"corpus": {"ops": ["/"]}}):
        with pytest.raises(ConfigError):
            DataConfig.from_dict(bad)

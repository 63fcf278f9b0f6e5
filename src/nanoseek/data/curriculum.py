"""Curriculum: present documents from easy to hard over the first epoch (claim C6).

A difficulty score per document (its token length by default, or any user scorer such as a small
reference model's loss) ranks the corpus. At progress t in [0, 1] through the first epoch only the
easiest `pool_fraction(t)` of documents may be drawn; the next document is drawn uniformly from the
unused documents of that pool. The pool grows from `start_frac` to everything over `ramp_frac` of
the epoch (linearly or in `steps` stages), so every document is still seen exactly once per epoch
and later epochs are plain shuffles. `schedule="sorted"` is the strict easy->hard order.
"""

from __future__ import annotations

import heapq
import importlib
import math
from collections.abc import Callable, Sequence

import numpy as np

from nanoseek.data.config import CurriculumConfig

Scorer = Callable[[np.ndarray], float]  # (L,) tokens of one document -> difficulty


def load_scorer(spec: str | Scorer) -> Scorer | None:
    """'length' -> None (use the cheap length path); 'pkg.module:function' -> that function."""
    if callable(spec):
        return spec
    if spec == "length":
        return None
    mod, _, name = spec.partition(":")
    if not name:
        raise ValueError(f"curriculum scorer must be 'length' or 'module:function', got {spec!r}")
    return getattr(importlib.import_module(mod), name)


def difficulty_scores(docs: Sequence, scorer: str | Scorer = "length") -> np.ndarray:
    """(N,) float difficulty per document; `docs[i]` is a token array (e.g. `TokenShards`)."""
    fn = load_scorer(scorer)
    if fn is None:
        lengths = getattr(docs, "doc_lengths", None)  # TokenShards knows lengths from its index
        return (lengths() if lengths else np.array([len(d) for d in docs])).astype(np.float64)
    return np.array([float(fn(np.asarray(d))) for d in docs], dtype=np.float64)


def pool_fraction(t: float, cfg: CurriculumConfig) -> float:
    """Fraction of documents (easiest first) available at epoch progress t in [0, 1]."""
    if cfg.schedule == "sorted":
        return 1.0
    ramp = min(t / cfg.ramp_frac, 1.0)
    if cfg.schedule == "step":
        ramp = math.floor(ramp * cfg.steps) / cfg.steps
    return cfg.start_frac + (1.0 - cfg.start_frac) * ramp


def curriculum_order(scores: np.ndarray, cfg: CurriculumConfig, seed: int = 0) -> np.ndarray:
    """(N,) permutation of document indices: easy first, each document exactly once."""
    n = len(scores)
    rng = np.random.default_rng(seed)
    by_rank = np.lexsort((rng.random(n), scores))  # easiest first; ties broken at random
    if cfg.schedule == "sorted":
        return by_rank
    keys = rng.random(n)  # a uniform draw from the pool = pop the smallest random key
    heap: list[tuple[float, int]] = []
    admitted, out = 0, np.empty(n, dtype=np.int64)
    for k in range(n):
        limit = max(math.ceil(pool_fraction(k / n, cfg) * n), admitted + (not heap))
        for d in by_rank[admitted:limit]:
            heapq.heappush(heap, (keys[d], int(d)))
        admitted = max(admitted, limit)
        out[k] = heapq.heappop(heap)[1]
    return out


class Curriculum:
    """Holds the scores; gives the first epoch's order (later epochs: None = plain shuffle)."""

    def __init__(self, scores: np.ndarray, cfg: CurriculumConfig):
        self.scores, self.cfg = np.asarray(scores, dtype=np.float64), cfg

    @classmethod
    def from_docs(cls, docs: Sequence, cfg: CurriculumConfig, scorer: str | Scorer | None = None) -> "Curriculum":
        return cls(difficulty_scores(docs, scorer or cfg.scorer), cfg)

    def order(self, epoch: int, seed: int) -> np.ndarray | None:
        return curriculum_order(self.scores, self.cfg, seed) if epoch == 0 else None

"""Quality filtering: heuristics, exact dedup, MinHash-LSH near-dedup, and a report of removals.

Claim C11 says filtering cut "invalid data from 15% to 3%"; the honest small-scale version is to
report what each rule removed (`FilterReport`) and measure the loss effect. Rules run cheapest
first (length, character ratios, repetition, then exact hash, then MinHash), and the first rule
that fires is the reason recorded. Dedup keeps the first occurrence, so results depend on input
order, which is deterministic here.

Near-dedup (Broder 1997; as in Gopher / RefinedWeb): a document becomes a set of shingles
(word or char n-grams), a MinHash signature estimates Jaccard similarity, and LSH banding finds
candidate pairs in O(1) per document; a candidate is a duplicate when the signatures agree on at
least `near_threshold` of their entries.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from nanoseek.data.config import FilterConfig

_WORD = re.compile(r"\w+")
_NOT_ALNUM = re.compile(r"[\W_]+")  # \w minus underscore = letters and digits (any script)
_WORD_OR_SPACE = re.compile(r"[\w\s]+")
_P = np.uint64(0x100000001B3)  # FNV prime: the n-gram rolling-hash base
_U64 = np.uint64


# ---------------------------------------------------------------------- heuristic metrics
def alnum_ratio(text: str) -> float:
    """Letters and digits / all characters (low for markup soup, tables of symbols, binary junk)."""
    return len(_NOT_ALNUM.sub("", text)) / max(len(text), 1)


def symbol_ratio(text: str) -> float:
    """Characters that are neither word characters nor whitespace / all characters."""
    return len(_WORD_OR_SPACE.sub("", text)) / max(len(text), 1)


def dup_line_fraction(text: str) -> float:
    """Fraction of non-blank lines that repeat an earlier line (boilerplate, spam, loops)."""
    lines = [s for s in (ln.strip() for ln in text.splitlines()) if s]
    return 1.0 - len(set(lines)) / len(lines) if lines else 0.0


def dup_ngram_fraction(text: str, n: int = 5) -> float:
    """Fraction of word n-grams that repeat an earlier n-gram (Gopher's repetition signal)."""
    h = ngram_hashes(word_hashes(text), n)
    return 1.0 - len(np.unique(h)) / len(h) if len(h) > 1 else 0.0


def heuristic_reason(text: str, cfg: FilterConfig) -> str | None:
    """The first heuristic rule `text` fails, or None."""
    if len(text) < cfg.min_chars:
        return "too_short"
    if len(text) > cfg.max_chars:
        return "too_long"
    if alnum_ratio(text) < cfg.min_alnum_ratio:
        return "low_alnum"
    if symbol_ratio(text) > cfg.max_symbol_ratio:
        return "high_symbols"
    if dup_line_fraction(text) > cfg.max_dup_line_frac:
        return "dup_lines"
    if dup_ngram_fraction(text, cfg.ngram_size) > cfg.max_dup_ngram_frac:
        return "dup_ngrams"
    return None


# ---------------------------------------------------------------------- stable hashing
_word_cache: dict[str, int] = {}


def _stable_hash(s: str) -> int:
    """64-bit hash that is the same in every process (Python's hash() is salted per process)."""
    h = _word_cache.get(s)
    if h is None:
        h = int.from_bytes(hashlib.blake2b(s.encode("utf-8"), digest_size=8).digest(), "little")
        if len(_word_cache) < 1_000_000:
            _word_cache[s] = h
    return h


def word_hashes(text: str) -> np.ndarray:
    """(W,) uint64 hash per lower-cased word."""
    return np.fromiter((_stable_hash(w) for w in _WORD.findall(text.lower())), dtype=_U64)


def char_hashes(text: str) -> np.ndarray:
    """(C,) uint64 per code point, spread over 64 bits by an odd multiplier."""
    codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32).astype(_U64)
    return (codes + _U64(1)) * _U64(0x9E3779B97F4A7C15)


def ngram_hashes(h: np.ndarray, n: int) -> np.ndarray:
    """(len-n+1,) polynomial hash of each window of n items (uint64 wrap-around); one item if shorter."""
    if len(h) < n:
        n = max(len(h), 1)
        if len(h) == 0:
            return h
    m = len(h) - n + 1
    out = h[:m].copy()
    for j in range(1, n):
        out = out * _P + h[j:j + m]
    return out


def _fmix64(x: np.ndarray) -> np.ndarray:
    """MurmurHash3 finaliser: makes every output bit depend on every input bit."""
    x = x ^ (x >> _U64(33))
    x = x * _U64(0xFF51AFD7ED558CCD)
    x = x ^ (x >> _U64(33))
    x = x * _U64(0xC4CEB9FE1A85EC53)
    return x ^ (x >> _U64(33))


# ---------------------------------------------------------------------- MinHash + LSH
def lsh_bands(num_perm: int, threshold: float) -> tuple[int, int]:
    """(bands, rows) with bands*rows <= num_perm whose S-curve midpoint (1/b)^(1/r) is nearest threshold."""
    best = min(((b, num_perm // b) for b in range(1, num_perm + 1)),
               key=lambda br: (abs((1 / br[0]) ** (1 / br[1]) - threshold), -br[0] * br[1]))
    return best


class MinHashLSH:
    """Streaming near-duplicate index: `seen_before(shingles)` answers and then remembers."""

    def __init__(self, num_perm: int = 128, threshold: float = 0.8, seed: int = 0):
        rng = np.random.default_rng(seed)
        # h_k(x) = (a_k x + b_k) mod 2^64, a_k odd: a bijection on 64-bit ints; its high 32 bits are the hash
        self.a = (rng.integers(0, 2**63, num_perm, dtype=np.uint64) << _U64(1)) | _U64(1)  # (K,)
        self.b = rng.integers(0, 2**63, num_perm, dtype=np.uint64)  # (K,)
        self.threshold = threshold
        self.bands, self.rows = lsh_bands(num_perm, threshold)
        self.tables: list[dict[bytes, list[int]]] = [{} for _ in range(self.bands)]
        self.sigs: list[np.ndarray] = []  # kept signatures, to verify LSH candidates

    def signature(self, shingles: np.ndarray) -> np.ndarray:
        """(K,) uint32 MinHash of a set of uint64 shingle hashes."""
        x = _fmix64(np.unique(shingles))
        sig = np.full(len(self.a), np.iinfo(np.uint64).max, dtype=np.uint64)
        for i in range(0, len(x), 4096):  # chunks bound memory at (K, 4096)
            hv = self.a[:, None] * x[None, i:i + 4096] + self.b[:, None]  # (K, n)
            sig = np.minimum(sig, hv.min(axis=1))
        return (sig >> _U64(32)).astype(np.uint32)

    def seen_before(self, shingles: np.ndarray) -> bool:
        """True if a stored document's estimated Jaccard >= threshold; otherwise store this one."""
        sig = self.signature(shingles)
        keys = [sig[i * self.rows:(i + 1) * self.rows].tobytes() for i in range(self.bands)]
        for table, key in zip(self.tables, keys):
            for j in table.get(key, ()):
                if np.mean(self.sigs[j] == sig) >= self.threshold:
                    return True
        idx = len(self.sigs)
        self.sigs.append(sig)
        for table, key in zip(self.tables, keys):
            table.setdefault(key, []).append(idx)
        return False


# ---------------------------------------------------------------------- report + driver
@dataclass
class FilterReport:
    """What the filter removed and why: counts, fractions (by documents and by chars), examples."""

    seen: int = 0
    kept: int = 0
    seen_chars: int = 0
    removed: dict[str, int] = field(default_factory=dict)
    removed_chars: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[str]] = field(default_factory=dict)
    max_examples: int = 3

    def add(self, text: str, reason: str | None) -> None:
        self.seen += 1
        self.seen_chars += len(text)
        if reason is None:
            self.kept += 1
            return
        self.removed[reason] = self.removed.get(reason, 0) + 1
        self.removed_chars[reason] = self.removed_chars.get(reason, 0) + len(text)
        ex = self.examples.setdefault(reason, [])
        if len(ex) < self.max_examples:
            ex.append(text[:200])

    @property
    def removed_fraction(self) -> float:
        return (self.seen - self.kept) / max(self.seen, 1)

    def to_dict(self) -> dict:
        reasons = {r: {"count": n, "fraction": n / max(self.seen, 1),
                       "char_fraction": self.removed_chars[r] / max(self.seen_chars, 1),
                       "examples": self.examples.get(r, [])}
                   for r, n in sorted(self.removed.items(), key=lambda kv: -kv[1])}
        return {"seen": self.seen, "kept": self.kept, "removed": self.seen - self.kept,
                "removed_fraction": self.removed_fraction, "seen_chars": self.seen_chars, "reasons": reasons}

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), ensure_ascii=False, indent=2))

    def summary(self) -> str:
        lines = [f"filter: kept {self.kept}/{self.seen} documents ({self.removed_fraction:.1%} removed)"]
        for r, d in self.to_dict()["reasons"].items():
            lines.append(f"  {r:<14} {d['count']:>8}  {d['fraction']:6.1%} of docs  {d['char_fraction']:6.1%} of chars")
        return "\n".join(lines)


class DocumentFilter:
    """Stateful filter (dedup remembers what it kept); call it on a document stream."""

    def __init__(self, cfg: FilterConfig | None = None, seed: int = 0):
        self.cfg = cfg or FilterConfig()
        self.report = FilterReport(max_examples=self.cfg.examples)
        self._exact: set[bytes] = set()
        self._lsh = MinHashLSH(self.cfg.num_perm, self.cfg.near_threshold, seed) if self.cfg.near_dedup else None

    def shingles(self, text: str) -> np.ndarray:
        h = word_hashes(text) if self.cfg.shingle == "word" else char_hashes(text)
        return ngram_hashes(h, self.cfg.shingle_size)

    def reason(self, text: str) -> str | None:
        """Why `text` is removed (None = keep). Kept documents are remembered for dedup."""
        r = heuristic_reason(text, self.cfg)
        if r is not None:
            return r
        if self.cfg.exact_dedup:
            key = hashlib.blake2b(text.strip().encode("utf-8"), digest_size=16).digest()
            if key in self._exact:
                return "exact_dup"
            self._exact.add(key)
        if self._lsh is not None:
            sh = self.shingles(text)
            if len(sh) and self._lsh.seen_before(sh):
                return "near_dup"
        return None

    def __call__(self, docs: Iterable[str]) -> Iterator[str]:
        for text in docs:
            r = self.reason(text)
            self.report.add(text, r)
            if r is None:
                yield text

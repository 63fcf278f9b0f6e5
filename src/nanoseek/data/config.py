"""DataConfig: sources, tokenizer, sharding, filtering and curriculum, typed and validated.

One nested dataclass per component (torchtitan style). `from_dict` rejects unknown keys at every
level, so a typo in a YAML/JSON preset is an error instead of a silently ignored setting.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from typing import Any

from nanoseek.model.config import ConfigError


@dataclass
class CorpusConfig:
    """The built-in offline corpus: Python stdlib sources mixed with worked arithmetic."""

    stdlib_weight: float = 0.5  # share of bytes from the stdlib sources
    arithmetic_weight: float = 0.5  # share of bytes from generated arithmetic chats
    max_bytes: int = 16_000_000  # total corpus size (the stdlib alone is ~10-30 MB)
    stdlib_max_bytes: int = 12_000_000  # cap on the stdlib part
    min_digits: int = 1  # arithmetic difficulty: operand length is drawn in [min, max]
    max_digits: int = 5
    ops: list[str] = field(default_factory=lambda: ["+", "-", "*"])


@dataclass
class FilterConfig:
    """Quality filters (C11). Defaults are loose enough to keep the built-in corpus intact."""

    enabled: bool = True
    exact_dedup: bool = True
    near_dedup: bool = True
    near_threshold: float = 0.8  # estimated Jaccard similarity at which a doc is a near-duplicate
    num_perm: int = 128  # MinHash signature length
    shingle: str = "word"  # "word" or "char" shingles
    shingle_size: int = 5  # words (or chars) per shingle
    min_chars: int = 32
    max_chars: int = 2_000_000
    max_symbol_ratio: float = 0.35  # chars that are neither alphanumeric nor whitespace
    min_alnum_ratio: float = 0.25  # alphanumeric chars / all chars
    max_dup_line_frac: float = 0.5  # fraction of non-blank lines that repeat an earlier line
    max_dup_ngram_frac: float = 0.9  # fraction of word 5-grams that repeat an earlier 5-gram
    ngram_size: int = 5
    examples: int = 3  # examples kept per removal reason in the FilterReport


@dataclass
class CurriculumConfig:
    """Easy-to-hard ordering of the first epoch (C6)."""

    enabled: bool = False
    scorer: str = "length"  # "length" (tokens per document) or "module:function" taking a token array
    schedule: str = "linear"  # "linear", "step", or "sorted" (strict easy -> hard, no sampling)
    start_frac: float = 0.2  # easiest fraction of documents available at the start
    ramp_frac: float = 0.5  # fraction of the first epoch over which the pool grows to all documents
    steps: int = 4  # number of stages for schedule="step"


@dataclass
class DataConfig:
    sources: list[str] = field(default_factory=list)  # files / folders; empty = built-in corpus
    text_field: str = "text"  # JSONL key / parquet column
    extensions: list[str] = field(default_factory=lambda: [".txt", ".md", ".rst", ".py"])
    tokenizer: str | None = None  # an existing tokenizer.json (or its folder); None = train one
    vocab_size: int = 8192
    tokenizer_train_bytes: int = 8_000_000  # text used to train the tokenizer (first bytes of the stream)
    digit_group: int = 1  # max digits per pre-token (1 = one token per digit)
    add_bos: bool = True  # every document is [bos] + text + [eos]
    seq_len: int = 1024
    packing: str = "packed"  # "packed" (no padding, C5) or "padded" (pad-to-longest baseline)
    # shuffle unit: documents are cut into pieces of at most this many tokens and the pieces are
    # shuffled, so one long file does not fill many consecutive batches (0 = seq_len; -1 = whole docs)
    piece_tokens: int = 0
    val_fraction: float = 0.01  # share of documents held out, chosen by a seeded content hash
    shard_tokens: int = 1 << 24  # tokens per shard file (a shard holds whole documents)
    seed: int = 0
    corpus: CorpusConfig = field(default_factory=CorpusConfig)
    filter: FilterConfig = field(default_factory=FilterConfig)
    curriculum: CurriculumConfig = field(default_factory=CurriculumConfig)

    def __post_init__(self) -> None:
        for name, sub in (("corpus", CorpusConfig), ("filter", FilterConfig), ("curriculum", CurriculumConfig)):
            if isinstance(getattr(self, name), dict):
                setattr(self, name, _from_dict(sub, getattr(self, name), f"DataConfig.{name}"))
        self.validate()

    def validate(self) -> None:
        for obj, prefix in ((self, "DataConfig"), (self.corpus, "DataConfig.corpus"),
                            (self.filter, "DataConfig.filter"), (self.curriculum, "DataConfig.curriculum")):
            for f in fields(obj):
                _check_type(f"{prefix}.{f.name}", getattr(obj, f.name), f.type)
        c, fl, cu = self.corpus, self.filter, self.curriculum
        checks = [
            (self.vocab_size >= 265, "vocab_size", "must be >= 265 (9 special tokens + 256 bytes)"),
            (self.seq_len >= 2, "seq_len", "must be >= 2"),
            (self.piece_tokens == -1 or self.piece_tokens >= 0, "piece_tokens", "must be >= 0, or -1 for whole documents"),
            (0.0 <= self.val_fraction < 1.0, "val_fraction", "must be in [0, 1)"),
            (self.shard_tokens > 0, "shard_tokens", "must be > 0"),
            (self.digit_group >= 1, "digit_group", "must be >= 1"),
            (self.packing in ("packed", "padded"), "packing", "must be 'packed' or 'padded'"),
            (c.stdlib_weight >= 0 and c.arithmetic_weight >= 0 and c.stdlib_weight + c.arithmetic_weight > 0,
             "corpus.stdlib_weight", "weights must be >= 0 and not both 0"),
            (1 <= c.min_digits <= c.max_digits, "corpus.min_digits", "need 1 <= min_digits <= max_digits"),
            (bool(c.ops) and set(c.ops) <= {"+", "-", "*"}, "corpus.ops", "must be a non-empty subset of +, -, *"),
            (0.0 < fl.near_threshold <= 1.0, "filter.near_threshold", "must be in (0, 1]"),
            (fl.shingle in ("word", "char"), "filter.shingle", "must be 'word' or 'char'"),
            (fl.num_perm >= 8 and fl.shingle_size >= 1 and fl.ngram_size >= 1, "filter.num_perm",
             "num_perm >= 8, shingle_size >= 1 and ngram_size >= 1"),
            (0 <= fl.min_chars <= fl.max_chars, "filter.min_chars", "need 0 <= min_chars <= max_chars"),
            (cu.schedule in ("linear", "step", "sorted"), "curriculum.schedule", "must be 'linear', 'step' or 'sorted'"),
            (0.0 < cu.start_frac <= 1.0 and 0.0 < cu.ramp_frac <= 1.0, "curriculum.start_frac",
             "start_frac and ramp_frac must be in (0, 1]"),
            (cu.steps >= 1, "curriculum.steps", "must be >= 1"),
        ]
        for ok, name, msg in checks:
            if not ok:
                raise ConfigError(f"DataConfig.{name}: {msg}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "DataConfig":
        return _from_dict(cls, d, "DataConfig")

    def replace(self, **kw: Any) -> "DataConfig":
        return dataclasses.replace(self, **kw)


def _from_dict(cls: type, d: dict[str, Any], where: str) -> Any:
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ConfigError(f"unknown {where} field(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    return cls(**d)


def _check_type(name: str, value: Any, annot: Any) -> None:
    allowed = {"int": (int,), "float": (int, float), "bool": (bool,), "str": (str,),
               "str | None": (str, type(None)), "list[str]": (list,)}.get(str(annot))
    if allowed is None:
        return
    ok = isinstance(value, allowed) and not (isinstance(value, bool) and str(annot) != "bool")
    if ok and str(annot) == "list[str]":
        ok = all(isinstance(v, str) for v in value)
    if not ok:
        raise ConfigError(f"{name}: expected {annot}, got {type(value).__name__} {value!r}")

"""Data pipeline: sources -> filter -> tokenizer -> memmapped shards -> packed batches.

See docs/data.md. Import the submodules directly for the full API; the names most callers need
are re-exported here.
"""

from nanoseek.data.config import CorpusConfig, CurriculumConfig, DataConfig, FilterConfig
from nanoseek.data.corpus import arithmetic_problem, default_corpus
from nanoseek.data.curriculum import Curriculum
from nanoseek.data.filters import DocumentFilter, FilterReport
from nanoseek.data.packing import IGNORE_INDEX, PackedDataset, PaddedBatcher, build_loader, eval_batches
from nanoseek.data.shards import TokenShards, prepare_dataset, write_shards
from nanoseek.data.sources import DataError, iter_sources
from nanoseek.data.tokenizer import SPECIAL_TOKENS, Tokenizer, apply_chat_template, assistant_mask, train_tokenizer

__all__ = [
    "CorpusConfig", "CurriculumConfig", "DataConfig", "FilterConfig", "arithmetic_problem", "default_corpus",
    "Curriculum", "DocumentFilter", "FilterReport", "IGNORE_INDEX", "PackedDataset", "PaddedBatcher",
    "build_loader", "eval_batches", "TokenShards", "prepare_dataset", "write_shards", "DataError",
    "iter_sources", "SPECIAL_TOKENS", "Tokenizer", "apply_chat_template", "assistant_mask", "train_tokenizer",
]

"""Read documents from plain-text files, folders, JSONL and parquet, failing loudly on bad input.

Every reader is a generator of `str` documents, so arbitrarily large inputs stream through
tokenization without being held in memory. Bad input (an empty file, binary bytes, a malformed
JSON line, a missing field) raises `DataError` naming the file and line: silently skipping it
would hide a broken data pipeline behind a slightly smaller dataset.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

TEXT_EXTENSIONS = (".txt", ".md", ".rst", ".py")
JSONL_EXTENSIONS = (".jsonl", ".ndjson")
PARQUET_EXTENSIONS = (".parquet",)


class DataError(ValueError):
    """Input data is unusable; the message says which file and line (or row)."""


def _decode(raw: bytes, path: Path, first_line: int = 1) -> str:
    """UTF-8 decode, rejecting NUL bytes (binary files) with the offending line number."""
    nul = raw.find(b"\x00")
    if nul >= 0:
        line = first_line + raw.count(b"\n", 0, nul)
        raise DataError(f"{path}:{line}: binary data (NUL byte); expected UTF-8 text")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = first_line + raw.count(b"\n", 0, e.start)
        raise DataError(f"{path}:{line}: not valid UTF-8 ({e.reason} at byte {e.start})") from None


def read_text_file(path: str | Path, allow_empty: bool = False) -> Iterator[str]:
    """One document per file (a source file or an article is the natural unit).

    allow_empty: skip a blank file instead of failing (folders of code hold empty `__init__.py`s).
    """
    path = Path(path)
    raw = path.read_bytes()
    if not raw.strip():
        if allow_empty:
            return
        raise DataError(f"{path}:1: file is empty")
    yield _decode(raw, path)


def read_jsonl(path: str | Path, field: str = "text") -> Iterator[str]:
    """One document per line, taken from `field`; blank lines are allowed and skipped."""
    path = Path(path)
    n = 0
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            line = _decode(raw, path, lineno)
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{lineno}: malformed JSON ({e.msg}, column {e.colno})") from None
            if not isinstance(obj, dict) or field not in obj:
                raise DataError(f"{path}:{lineno}: missing field {field!r}")
            if not isinstance(obj[field], str):
                raise DataError(f"{path}:{lineno}: field {field!r} is {type(obj[field]).__name__}, expected a string")
            n += 1
            yield obj[field]
    if n == 0:
        raise DataError(f"{path}:1: file is empty (no JSON lines)")


def read_parquet(path: str | Path, column: str = "text", batch_rows: int = 4096) -> Iterator[str]:
    """One document per row of `column`, read in record batches (row numbers are 1-based)."""
    import pyarrow.parquet as pq

    path = Path(path)
    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises several types for a corrupt file
        raise DataError(f"{path}:1: not a readable parquet file ({e})") from None
    if column not in pf.schema_arrow.names:
        raise DataError(f"{path}:1: missing column {column!r} (columns: {', '.join(pf.schema_arrow.names)})")
    if pf.metadata.num_rows == 0:
        raise DataError(f"{path}:1: file is empty (no rows)")
    row = 0
    for batch in pf.iter_batches(batch_size=batch_rows, columns=[column]):
        for v in batch.column(0).to_pylist():
            row += 1
            if not isinstance(v, str):
                raise DataError(f"{path}:row {row}: column {column!r} is {type(v).__name__}, expected a string")
            yield v


def list_files(path: str | Path, extensions: Sequence[str] = TEXT_EXTENSIONS) -> list[Path]:
    """A file, or every file under a folder (recursive) whose name ends in a known extension.

    Sorted so that the document order, hence the shards and the validation split, is reproducible.
    """
    p = Path(path)
    if p.is_file():
        return [p]
    if not p.is_dir():
        raise DataError(f"{p}: no such file or directory")
    exts = tuple(extensions) + JSONL_EXTENSIONS + PARQUET_EXTENSIONS
    out = []
    for root, dirs, files in os.walk(p):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        out += [Path(root) / f for f in sorted(files) if f.endswith(exts)]
    if not out:
        raise DataError(f"{p}: no files with extensions {', '.join(exts)}")
    return out


def read_file(path: str | Path, text_field: str = "text", allow_empty: bool = False) -> Iterator[str]:
    """Dispatch on the extension: JSONL, parquet, else plain text."""
    name = str(path)
    if name.endswith(JSONL_EXTENSIONS):
        return read_jsonl(path, text_field)
    if name.endswith(PARQUET_EXTENSIONS):
        return read_parquet(path, text_field)
    return read_text_file(path, allow_empty)


def iter_sources(sources: Sequence[str | Path], text_field: str = "text",
                 extensions: Sequence[str] = TEXT_EXTENSIONS) -> Iterator[str]:
    """All documents of all sources, in order (files sorted inside each folder).

    A blank text file named directly is an error; inside a folder it is skipped, but a folder
    that yields no document at all is an error.
    """
    if not sources:
        raise DataError("no data sources given (DataConfig.sources is empty)")
    for src in sources:
        in_dir, n = Path(src).is_dir(), 0
        for f in list_files(src, extensions):
            for doc in read_file(f, text_field, allow_empty=in_dir):
                n += 1
                yield doc
        if n == 0:
            raise DataError(f"{src}: no documents (all files are empty)")

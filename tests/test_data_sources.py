"""Readers (text folders, JSONL, parquet), clear errors on bad input, and the built-in corpus."""

import random
import re

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from nanoseek.data.config import CorpusConfig
from nanoseek.data.corpus import arithmetic_document, arithmetic_problem, default_corpus, stdlib_files
from nanoseek.data.sources import DataError, iter_sources, list_files, read_jsonl, read_parquet


def test_folder_recursive_by_extension(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "a.txt").write_text("alpha")
    (tmp_path / "b" / "c.md").write_text("gamma")
    (tmp_path / "b" / "skip.bin").write_bytes(b"\x00\x01")
    (tmp_path / "b" / "__init__.py").write_text("")  # empty files inside folders are skipped
    (tmp_path / "d.jsonl").write_text('{"text": "delta"}\n\n{"text": "epsilon"}\n')
    assert [p.name for p in list_files(tmp_path)] == ["a.txt", "d.jsonl", "__init__.py", "c.md"]
    assert list(iter_sources([tmp_path])) == ["alpha", "delta", "epsilon", "gamma"]
    assert list(iter_sources([tmp_path], extensions=[".md"])) == ["delta", "epsilon", "gamma"]


def test_jsonl_and_parquet_custom_field(tmp_path):
    (tmp_path / "x.jsonl").write_text('{"body": "one", "id": 1}\n{"body": "two"}\n')
    assert list(read_jsonl(tmp_path / "x.jsonl", "body")) == ["one", "two"]
    pq.write_table(pa.table({"content": ["p", "q", "r"], "n": [1, 2, 3]}), tmp_path / "y.parquet")
    assert list(iter_sources([tmp_path / "y.parquet"], text_field="content")) == ["p", "q", "r"]


@pytest.mark.parametrize("name,data,where,what", [
    ("empty.txt", b"", ":1:", "empty"),
    ("blank.txt", b"  \n\n", ":1:", "empty"),
    ("bin.txt", b"line one\nline two\nbad\x00bytes\n", ":3:", "binary"),
    ("latin.txt", b"ok\n\xe9t\xe9\n", ":2:", "UTF-8"),
    ("bad.jsonl", b'{"text": "fine"}\n{"text": broken}\n', ":2:", "malformed JSON"),
    ("miss.jsonl", b'{"text": "a"}\n{"text": "b"}\n{"other": "c"}\n', ":3:", "missing field 'text'"),
    ("type.jsonl", b'{"text": 5}\n', ":1:", "expected a string"),
    ("nul.jsonl", b'{"text": "a"}\n{"text": "\x00"}\n', ":2:", "binary"),
    ("empty.jsonl", b"\n\n", ":1:", "empty"),
])
def test_bad_input_names_file_and_line(tmp_path, name, data, where, what):
    p = tmp_path / name
    p.write_bytes(data)
    with pytest.raises(DataError) as e:
        list(iter_sources([p]))
    assert f"{p}{where}" in str(e.value) and what in str(e.value)
    assert isinstance(e.value, ValueError)


def test_other_errors(tmp_path):
    pq.write_table(pa.table({"text": ["a", None]}), tmp_path / "n.parquet")
    with pytest.raises(DataError, match=r"n.parquet:row 2"):
        list(read_parquet(tmp_path / "n.parquet"))
    with pytest.raises(DataError, match="missing column 'body'"):
        list(read_parquet(tmp_path / "n.parquet", "body"))
    (tmp_path / "junk.parquet").write_bytes(b"not parquet")
    with pytest.raises(DataError, match="junk.parquet:1"):
        list(read_parquet(tmp_path / "junk.parquet"))
    with pytest.raises(DataError, match="no such file"):
        list(iter_sources([tmp_path / "missing"]))
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "e.txt").write_text("")
    with pytest.raises(DataError, match="no documents"):
        list(iter_sources([tmp_path / "d"]))
    with pytest.raises(DataError):
        list(iter_sources([]))


# ---------------------------------------------------------------------- built-in corpus
_OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "×": lambda a, b: a * b}


def test_arithmetic_answers_and_steps_are_right():
    rng = random.Random(0)
    for i in range(600):
        op, digits = "+-*"[i % 3], 1 + i % 7
        q, work, ans = arithmetic_problem(rng, digits, op)
        a, sym, b = re.search(r"(\d+) ([+\-×]) (\d+)", q).groups()
        truth = _OPS[sym](int(a), int(b))
        assert int(ans) == truth and {"+": "+", "-": "-", "*": "×"}[op] == sym
        assert max(len(a), len(b)) == digits
        assert int(re.search(r"= (-?\d+)\.$", work).group(1)) == truth  # the worked solution's result
        # every intermediate equation in the trace is true arithmetic
        for x, y, c, s in re.findall(r"(\d+) \+ (\d+) \+ carry (\d) = (\d+)", work):
            assert int(x) + int(y) + int(c) == int(s)
        for x, y, s in re.findall(r"(\d+) × (\d) = (\d+)", work):
            assert int(x) * int(y) == int(s)
        for x, y, s in re.findall(r"^(\d+) \+ (\d+) = (\d+)$", work, re.M):
            assert int(x) + int(y) == int(s)
        for x, br, y, s in re.findall(r"(\d) - borrow (\d) - (\d) = (\d), write", work):
            assert int(x) - int(br) - int(y) == int(s)
        for x, y, s in re.findall(r"borrow 10: (\d+) - (\d) = (\d)", work):
            assert int(x) - int(y) == int(s)
    doc = arithmetic_document(random.Random(1), 3, "*")
    assert doc.startswith("<｜begin▁of▁sentence｜><｜User｜>") and doc.endswith("</answer><｜end▁of▁sentence｜>")
    assert "<｜Assistant｜><think>\n" in doc and "</think>\n<answer>" in doc
    with pytest.raises(ValueError):
        arithmetic_problem(rng, 2, "/")


def test_default_corpus_mix_and_determinism():
    cfg = CorpusConfig(max_bytes=300_000, stdlib_weight=0.3, arithmetic_weight=0.7)
    docs = list(default_corpus(cfg, seed=1))
    assert docs == list(default_corpus(cfg, seed=1))
    assert docs != list(default_corpus(cfg, seed=2))
    arith = sum(len(d.encode()) for d in docs if d.startswith("<｜begin▁of▁sentence｜><｜User｜>"))
    total = sum(len(d.encode()) for d in docs)
    assert 300_000 <= total < 300_000 + max(len(d.encode()) for d in docs)
    assert abs(arith / total - 0.7) < 0.1
    only = list(default_corpus(CorpusConfig(max_bytes=20_000, stdlib_weight=0.0, min_digits=2, max_digits=2)))
    assert all("<answer>" in d for d in only)


def test_stdlib_files_skip_tests_and_are_capped():
    files = stdlib_files(2_000_000)
    assert files == stdlib_files(2_000_000) and files
    assert sum(f.stat().st_size for f in files) <= 2_000_000
    for f in files:
        assert f.suffix == ".py" and "site-packages" not in f.parts
        assert not any(p in ("test", "tests", "idle_test") for p in f.parts)

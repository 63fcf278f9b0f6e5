"""The built-in corpus, available offline on any machine: stdlib sources + worked arithmetic.

(a) The running interpreter's own standard library (`*.py`, tests and site-packages skipped) is
real, varied, well-formed text that is always on disk. (b) Procedurally generated arithmetic,
worked column by column inside `<think>…</think>` with the result in `<answer>…</answer>`, in the
R1 chat format: it teaches the format the RL stage rewards, its difficulty is a dial (digits),
and it is exactly checkable, so `arithmetic_problem` is reused by the RL reward.
"""

from __future__ import annotations

import hashlib
import os
import random
import sysconfig
from collections.abc import Iterator, Sequence
from pathlib import Path

from nanoseek.data.config import CorpusConfig
from nanoseek.data.tokenizer import apply_chat_template

_SKIP_DIRS = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"}
_PLACES = ["ones", "tens", "hundreds", "thousands", "ten-thousands", "hundred-thousands", "millions"]
OP_SYMBOL = {"+": "+", "-": "-", "*": "×"}  # how questions and worked solutions write each op
_QUESTIONS = ["What is {a} {op} {b}?", "Compute {a} {op} {b}.", "Calculate {a} {op} {b}.",
              "Work out {a} {op} {b} step by step.", "{a} {op} {b} = ?"]


# ---------------------------------------------------------------------- (a) stdlib sources
def stdlib_files(max_bytes: int | None = None) -> list[Path]:
    """The interpreter's stdlib `.py` files, capped by total size, in a reproducible shuffled order.

    Ordered by a hash of the relative path rather than alphabetically, so a byte cap keeps a
    spread of modules instead of only `a*`..`e*`; the order is the same on every run and machine.
    """
    root = Path(sysconfig.get_paths()["stdlib"])
    found = []
    for d, dirs, files in os.walk(root):
        dirs[:] = sorted(x for x in dirs if x not in _SKIP_DIRS and not x.startswith(("test", ".")))
        found += [Path(d) / f for f in files if f.endswith(".py") and not f.startswith("test_")]
    key = lambda p: hashlib.blake2b(p.relative_to(root).as_posix().encode(), digest_size=8).digest()
    out, total = [], 0
    for p in sorted(found, key=key):
        size = p.stat().st_size
        if max_bytes is not None and total + size > max_bytes:
            continue  # skip files that overflow the cap; smaller ones may still fit
        out.append(p)
        total += size
    return out


def iter_stdlib(max_bytes: int | None = None) -> Iterator[str]:
    """One document per stdlib file; undecodable or blank files are skipped (not user data)."""
    for p in stdlib_files(max_bytes):
        try:
            text = p.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        if text.strip() and "\x00" not in text:
            yield text


# ---------------------------------------------------------------------- (b) arithmetic
EVAL_BUCKETS = 20  # 1 problem in 20 (by hash of the problem) is held out for evaluation


def held_out(task: str, key: str) -> bool:
    """Is this problem in the R1 tasks' held-out evaluation set? (`r1.tasks.is_eval_problem`)

    Decided by a hash of the problem itself, so every generator can skip it: the RL train streams,
    the cold-start SFT data and this corpus never contain an evaluation question.
    """
    return int(hashlib.sha256(f"{task}|{key}".encode()).hexdigest()[:8], 16) % EVAL_BUCKETS == 0


def _is_task_eval_problem(a: int, op: str, b: int) -> bool:
    """`a op b` as the arithmetic task would ask it (both operands with the same number of
    digits, key "a*b" with the ASCII op) and held out there; for + and × also `b op a`, the same
    question with the operands swapped."""
    if len(str(a)) != len(str(b)):
        return False
    keys = [f"{a}{op}{b}"] + ([f"{b}{op}{a}"] if op in "+*" else [])
    return any(held_out("arithmetic", k) for k in keys)


def _place(k: int) -> str:
    return _PLACES[k] if k < len(_PLACES) else f"10^{k}"


def _rand_int(rng: random.Random, digits: int) -> int:
    """A number with exactly `digits` digits (0..9 when digits == 1)."""
    return rng.randint(0, 9) if digits == 1 else rng.randint(10 ** (digits - 1), 10 ** digits - 1)


def _add_steps(a: int, b: int) -> list[str]:
    """Column addition, least significant digit first, with the carry written out."""
    da, db = str(a)[::-1], str(b)[::-1]
    lines, carry, digits = [f"Add {a} and {b} column by column, starting from the ones."], 0, []
    for k in range(max(len(da), len(db))):
        x = int(da[k]) if k < len(da) else 0
        y = int(db[k]) if k < len(db) else 0
        s = x + y + carry
        lines.append(f"{_place(k)}: {x} + {y} + carry {carry} = {s}, write {s % 10}, carry {s // 10}")
        digits.append(str(s % 10))
        carry = s // 10
    if carry:
        lines.append(f"final carry: write {carry}")
        digits.append(str(carry))
    lines.append(f"Reading the written digits from the top: {int(''.join(reversed(digits)))}.")
    return lines


def _sub_steps(a: int, b: int) -> list[str]:
    """Column subtraction with borrows; a smaller minuend is handled by swapping and negating."""
    lines = []
    if a < b:
        lines.append(f"{a} is smaller than {b}, so compute {b} - {a} and make the result negative.")
        a, b, sign = b, a, "-"
    else:
        sign = ""
    da, db = str(a)[::-1], str(b)[::-1]
    lines.append(f"Subtract {b} from {a} column by column, starting from the ones.")
    borrow, digits = 0, []
    for k in range(len(da)):
        x, y = int(da[k]), int(db[k]) if k < len(db) else 0
        top = x - borrow
        if top < y:
            lines.append(f"{_place(k)}: {x} - borrow {borrow} = {top} is less than {y}, borrow 10: "
                         f"{top + 10} - {y} = {top + 10 - y}, write {top + 10 - y}, borrow 1")
            digits.append(str(top + 10 - y))
            borrow = 1
        else:
            lines.append(f"{_place(k)}: {x} - borrow {borrow} - {y} = {top - y}, write {top - y}, borrow 0")
            digits.append(str(top - y))
            borrow = 0
    lines.append(f"Reading the written digits from the top: {sign}{int(''.join(reversed(digits)))}.")
    return lines


def _mul_steps(a: int, b: int) -> list[str]:
    """Long multiplication: one partial product per digit of b, shifted, then a running sum."""
    lines = [f"Multiply {a} by each digit of {b}, shift by its place, then add the partial products."]
    partials = []
    for k, d in enumerate(str(b)[::-1]):
        p = a * int(d) * 10 ** k
        lines.append(f"{_place(k)} digit {d}: {a} × {d} = {a * int(d)}, times 10^{k} = {p}")
        partials.append(p)
    total = partials[0]
    for p in partials[1:]:
        lines.append(f"{total} + {p} = {total + p}")
        total += p
    lines.append(f"The sum of the partial products is {total}.")
    return lines


def arithmetic_problem(rng: random.Random, digits: int, op: str) -> tuple[str, str, str]:
    """(question, worked_solution, answer) for `a op b`, a with `digits` digits, b with 1..digits.

    worked_solution is the reasoning text (put inside <think>); its last line states the result.
    answer is the exact integer as a string, e.g. "-1234". Never one of the arithmetic task's
    held-out questions (the same a, op, b, or b op a for + and ×), so pretraining and SFT data
    cannot leak them; facts inside worked solutions (7 × 8 as a step of 37 × 8) are not filtered.
    """
    if op not in OP_SYMBOL:
        raise ValueError(f"op must be one of + - *, got {op!r}")
    while True:  # redraw the task's held-out questions (~5% of the same-length ones)
        a, b = _rand_int(rng, digits), _rand_int(rng, rng.randint(1, digits))
        if rng.random() < 0.5 and op != "-":
            a, b = b, a  # the longer operand is not always first
        if not _is_task_eval_problem(a, op, b):
            break
    question = rng.choice(_QUESTIONS).format(a=a, op=OP_SYMBOL[op], b=b)
    steps = {"+": _add_steps, "-": _sub_steps, "*": _mul_steps}[op](a, b)
    answer = {"+": a + b, "-": a - b, "*": a * b}[op]
    steps.append(f"So {a} {OP_SYMBOL[op]} {b} = {answer}.")
    return question, "\n".join(steps), str(answer)


def arithmetic_document(rng: random.Random, digits: int, op: str) -> str:
    """One chat-formatted training document (bos/eos tokens come from the template text)."""
    q, work, ans = arithmetic_problem(rng, digits, op)
    return apply_chat_template([{"role": "user", "content": q},
                                {"role": "assistant", "content": ans, "reasoning": work}])


def iter_arithmetic(seed: int, min_digits: int = 1, max_digits: int = 5,
                    ops: Sequence[str] = ("+", "-", "*")) -> Iterator[str]:
    """Endless deterministic stream of arithmetic documents for a seed."""
    rng = random.Random(seed)
    while True:
        yield arithmetic_document(rng, rng.randint(min_digits, max_digits), rng.choice(list(ops)))


# ---------------------------------------------------------------------- the mixture
def mix_by_bytes(streams: Sequence[Iterator[str]], weights: Sequence[float], max_bytes: int) -> Iterator[str]:
    """Interleave streams so each one's share of bytes tracks its weight (deficit round robin).

    Deterministic (no RNG): always draw from the stream furthest below its target share. A stream
    that runs dry drops out; the mix stops at max_bytes.
    """
    live = [i for i, w in enumerate(weights) if w > 0]
    sent = [0] * len(streams)
    total = 0
    while live and total < max_bytes:
        i = min(live, key=lambda j: (sent[j] / weights[j], j))
        doc = next(streams[i], None)
        if doc is None:
            live.remove(i)
            continue
        n = len(doc.encode("utf-8"))
        sent[i] += n
        total += n
        yield doc


def default_corpus(cfg: CorpusConfig | None = None, seed: int = 0) -> Iterator[str]:
    """The built-in corpus as an iterator of documents, reproducible for a (config, seed)."""
    cfg = cfg or CorpusConfig()
    streams = [iter_stdlib(cfg.stdlib_max_bytes),
               iter_arithmetic(seed, cfg.min_digits, cfg.max_digits, cfg.ops)]
    return mix_by_bytes(streams, [cfg.stdlib_weight, cfg.arithmetic_weight], cfg.max_bytes)

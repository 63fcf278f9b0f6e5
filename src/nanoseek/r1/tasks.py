"""Verifiable tasks for R1-style RL: built-in generators and benchmark/user JSONL loaders.

Every example is a dict `{"prompt": str, "answer": str, "task": str, "level": int}` (countdown
adds `numbers`, `target` and one `solution`); the extra keys become reward columns
(`rewards.countdown` reads `numbers` and `target`).

Built-in tasks need no downloads and are deterministic for a seed. The held-out split is chosen
by hashing the *problem* (not the seed or position), so no train stream with any seed ever
yields an evaluation problem, and the pretraining corpus and cold-start SFT generator
(`data.corpus.arithmetic_problem`) skip them too (`data.corpus.held_out`). R1.md §5 recommends
such tiny tasks for from-scratch claims; countdown follows TinyZero (R1.md §4).
"""

from __future__ import annotations

import itertools
import json
import random
import re
from collections.abc import Callable, Iterator, Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any

from ..data.corpus import OP_SYMBOL, held_out
from ..data.sources import DataError
from ..model.config import ConfigError

# R1 Table 1, quoted (R1.md §1.2).
R1_TEMPLATE = (
    "A conversation between User and Assistant. The user asks a question, and the Assistant "
    "solves it. The assistant first thinks about the reasoning process in the mind and then "
    "provides the user with the answer. The reasoning process and answer are enclosed within "
    "<think> </think> and <answer> </answer> tags, respectively, i.e., <think> reasoning "
    "process here </think> <answer> answer here </answer>. User: {prompt} Assistant:"
)


def make_prompt(question: str, think_prefill: bool = False) -> str:
    """Wrap a question in the R1-Zero template; `think_prefill` ends the prompt with `<think>`
    (the R1-distill habit; `rewards.format_reward` accepts it when given `prompts`)."""
    q = question.strip()
    q = q if q[-1:] in ".?!" else q + "."
    return R1_TEMPLATE.format(prompt=q) + (" <think>" if think_prefill else "")


def _example(task: str, level: int, question: str, answer: Any, **extra: Any) -> dict:
    return {"prompt": make_prompt(question), "answer": str(answer), "task": task,
            "level": int(level), **extra}


# ----------------------------------------------------------------------------- generators


def _digits(rng: random.Random, d: int) -> int:
    """A d-digit number (level 1 includes 0)."""
    return rng.randint(0 if d == 1 else 10 ** (d - 1), 10 ** d - 1)


def arithmetic_problem(rng: random.Random, level: int) -> dict:
    """`a op b` with `level`-digit operands, op in + - * (results may be negative).

    The question writes multiplication as × (`corpus.OP_SYMBOL`), as the pretraining corpus and
    the cold-start SFT data do, so the prompt is in the distribution the model was trained on.
    The held-out key keeps the ASCII op, so the split is the same as before that change."""
    a, b, op = _digits(rng, level), _digits(rng, level), rng.choice("+-*")
    value = {"+": a + b, "-": a - b, "*": a * b}[op]
    return _example("arithmetic", level, f"What is {a} {OP_SYMBOL[op]} {b}?", value, key=f"{a}{op}{b}")


def _combine(rng: random.Random, x: tuple[Fraction, str], y: tuple[Fraction, str]):
    """Join two (value, expression) pairs with a random op that keeps values positive integers."""
    (a, ea), (b, eb) = x, y
    ops = [("+", a + b), ("*", a * b)]
    if a > b:
        ops.append(("-", a - b))
    if b != 0 and a % b == 0 and b != 1:
        ops.append(("/", a / b))
    op, value = rng.choice(ops)
    return value, f"({ea} {op} {eb})"


def countdown_problem(rng: random.Random, level: int, max_number: int = 99,
                      max_target: int = 999) -> dict:
    """`level` numbers in 1..max_number and a target reached by a random expression using each
    number exactly once, so every problem is solvable by construction."""
    if level < 2:
        raise ValueError("countdown needs at least 2 numbers")
    while True:
        numbers = [rng.randint(1, max_number) for _ in range(level)]
        pool = [(Fraction(n), str(n)) for n in numbers]
        while len(pool) > 1:
            i, j = rng.sample(range(len(pool)), 2)
            merged = _combine(rng, pool[i], pool[j])
            pool = [p for k, p in enumerate(pool) if k not in (i, j)] + [merged]
        target, expr = pool[0]
        if 1 <= target <= max_target and target not in numbers:
            break
    solution = expr[1:-1] if expr.startswith("(") else expr
    question = (f"Using the numbers {numbers}, create an equation that equals {target}. "
                "You can use + - * / and parentheses, and each number must be used exactly "
                "once. Give the equation in <answer> </answer>, e.g. <answer> (1 + 2) / 3 "
                "</answer>.")
    key = f"{sorted(numbers)}={target}"
    return _example("countdown", level, question, int(target), numbers=numbers,
                    target=int(target), solution=solution, key=key)


GENERATORS: dict[str, Callable[[random.Random, int], dict]] = {
    "arithmetic": arithmetic_problem,
    "countdown": countdown_problem,
}


def is_eval_problem(example: dict) -> bool:
    """Held-out membership from a hash of the problem itself (task + canonical key)."""
    return held_out(example["task"], example.get("key", example["prompt"]))


def _stream(task: str, level: int | Sequence[int], seed: int, want_eval: bool) -> Iterator[dict]:
    if task not in GENERATORS:
        raise ConfigError(f"unknown task {task!r}; built-in: {sorted(GENERATORS)}, or a .jsonl file")
    rng, gen = random.Random(f"{task}|{seed}|{want_eval}"), GENERATORS[task]
    levels = [level] if isinstance(level, int) else list(level)
    while True:
        ex = gen(rng, rng.choice(levels))
        if is_eval_problem(ex) == want_eval:
            ex.pop("key")
            yield ex


def train_stream(task: str, level: int | Sequence[int] = 1, seed: int = 0) -> Iterator[dict]:
    """Endless training problems (repeats possible), never an evaluation problem. A list of
    levels mixes difficulties uniformly (a simple curriculum)."""
    return _stream(task, level, seed, want_eval=False)


def train_set(task: str, n: int, level: int | Sequence[int] = 1, seed: int = 0) -> list[dict]:
    """The first `n` problems of `train_stream`."""
    return list(itertools.islice(train_stream(task, level, seed), n))


def eval_set(task: str, n: int, level: int | Sequence[int] = 1, seed: int = 0) -> list[dict]:
    """Up to `n` distinct held-out problems (fewer when the level has fewer: 1-digit arithmetic
    has only 300 problems, about 15 of them held out)."""
    seen: dict[str, dict] = {}
    stale = 0  # draws since the last new problem: the space is exhausted when this grows
    for ex in _stream(task, level, seed, want_eval=True):
        stale = stale + 1 if ex["prompt"] in seen else 0
        seen.setdefault(ex["prompt"], ex)
        if len(seen) >= n or stale > 1000:
            break
    return list(seen.values())


# ----------------------------------------------------------------------------- JSONL loaders


def _boxed(text: str) -> str | None:
    from .rewards import last_boxed

    return last_boxed(text)


def _level(value: Any) -> int:
    """MATH's `"Level 3"` or an int; 0 when absent."""
    if value is None:
        return 0
    m = re.search(r"\d+", str(value))
    return int(m.group()) if m else 0


def record_to_example(rec: dict, task: str, wrap_prompt: bool = False) -> dict:
    """One JSON object in any supported layout -> an example dict; ValueError if it fits none.

    Layouts: user `{prompt, answer}` (prompt kept verbatim unless `wrap_prompt`); GSM8K
    `{question, answer: "... #### N"}`; MATH-500 `{problem, answer | solution with \\boxed}`;
    AIME `{problem | question, answer}`. Benchmark questions get `make_prompt`.
    """
    if not isinstance(rec, dict):
        raise ValueError("expected a JSON object")
    if "prompt" in rec:
        prompt = rec["prompt"]
        prompt = make_prompt(prompt) if wrap_prompt and isinstance(prompt, str) else prompt
    elif "problem" in rec or "question" in rec:
        q = rec.get("problem", rec.get("question"))
        prompt = make_prompt(q) if isinstance(q, str) else q
    else:
        raise ValueError("no 'prompt', 'problem' or 'question' field")
    answer = rec.get("answer")
    if isinstance(answer, str) and "####" in answer:  # GSM8K: reasoning, then "#### 1,234"
        answer = answer.rsplit("####", 1)[1].strip().replace(",", "")
    if answer is None and isinstance(rec.get("solution"), str):
        answer = _boxed(rec["solution"])
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError("empty or non-string prompt")
    if answer is None or isinstance(answer, (dict, list)) or not str(answer).strip():
        raise ValueError("no usable 'answer' (or 'solution' with \\boxed{})")
    return {"prompt": prompt, "answer": str(answer).strip(), "task": str(rec.get("task", task)),
            "level": _level(rec.get("level"))}


def is_task_file(name: str) -> bool:
    """A task given as a JSONL file rather than a built-in generator name (a file wins)."""
    return Path(name).suffix == ".jsonl" or Path(name).is_file()


def check_task(name: str) -> None:
    """Fail now, with a message, unless `name` is a built-in task or a readable task JSONL file
    (its lines are parsed, so a malformed file is reported before any run directory is made)."""
    if is_task_file(name):
        load_jsonl(name)
        return
    if name in GENERATORS:
        return
    raise ConfigError(f"unknown task {name!r}; built-in: {sorted(GENERATORS)}, or a .jsonl file")


def load_jsonl(path: str | Path, task: str | None = None, wrap_prompt: bool = False) -> list[dict]:
    """Load a task file (one JSON object per line; blank lines skipped). The task name defaults
    to the file stem. A missing or empty file, or a malformed line, raises DataError (a ValueError)
    naming `file:line`."""
    path = Path(path)
    task = task or path.stem
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    out = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                out.append(record_to_example(json.loads(line), task, wrap_prompt))
            except ValueError as exc:  # json.JSONDecodeError is a ValueError
                raise DataError(f"{path}:{lineno}: {exc}") from None
    if not out:
        raise DataError(f"{path}: no examples in it")
    return out

"""Rule-based rewards for R1-style RL (R1.md §1.2 "Rewards", §1.3 step 2, §7 "Reward hacking").

Every reward is a plain function `(completions: list[str], **columns) -> list[float]` (the TRL
convention, R1.md §4): `columns` are per-sample lists from the dataset (`answer=[...]`,
`prompts=[...]`, `completion_lengths=[...]`) and unknown columns are ignored. Rewards are found by
registry name (`"accuracy"`) or import path (`"pkg.module:func"`), and `RewardSet` combines them
with weights, keeping each function's scores so each can be logged on its own. A function that
raises scores 0 for that batch and is counted as an error: one bad reward must not kill a run.

Nothing here calls `eval`: answers are parsed by small recursive-descent parsers.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import logging
import math
import re
import signal
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from fractions import Fraction
from typing import Any

from ..model.config import ConfigError

log = logging.getLogger(__name__)

RewardFn = Callable[..., list[float]]
REWARDS: dict[str, RewardFn] = {}


# ----------------------------------------------------------------------------- registry


def register_reward(name: str) -> Callable[[RewardFn], RewardFn]:
    """Decorator: make a reward findable by `name` (a config file names rewards as strings)."""

    def deco(fn: RewardFn) -> RewardFn:
        REWARDS[name] = fn
        return fn

    return deco


def get_reward(spec: str | RewardFn, **params: Any) -> RewardFn:
    """Resolve a registry name, an import path `"pkg.module:func"`, or a callable.

    `params` are bound as keyword defaults (`get_reward("length_penalty", max_len=4096)`), so
    configurable rewards need no factory classes.
    """
    if callable(spec):
        fn = spec
    elif spec in REWARDS:
        fn = REWARDS[spec]
    elif ":" in spec:
        mod, _, attr = spec.partition(":")
        try:
            fn = getattr(importlib.import_module(mod), attr)
        except (ImportError, AttributeError) as e:
            raise ConfigError(f"reward {spec!r}: cannot import it ({e})") from None
    else:
        raise ConfigError(f"unknown reward {spec!r}; registered: {sorted(REWARDS)}; "
                          "or give an import path 'pkg.module:func'")
    return functools.partial(fn, **params) if params else fn


def _reward_name(spec: str | RewardFn) -> str:
    if isinstance(spec, str):
        return spec.rsplit(":", 1)[-1]
    fn = spec.func if isinstance(spec, functools.partial) else spec
    for name, reg in REWARDS.items():
        if reg is fn:
            return name
    return getattr(fn, "__name__", type(fn).__name__)


class RewardSet:
    """Weighted sum of reward functions; each function's per-sample scores are kept for logging.

    `funcs`: a mapping `{spec: weight}` or a sequence of `spec` / `(spec, weight)`; a spec is
    anything `get_reward` takes. Call it like a reward: `total, info = rs(completions, **cols)`,
    where `info = {"per_func": {name: [float]*n}, "errors": {name: int}}`.
    """

    def __init__(self, funcs: Mapping[Any, float] | Sequence[Any]):
        items = funcs.items() if isinstance(funcs, Mapping) else [
            f if isinstance(f, tuple) else (f, 1.0) for f in funcs]
        self.funcs: list[tuple[str, RewardFn, float]] = []
        for spec, weight in items:
            name = _reward_name(spec)
            while name in [n for n, _, _ in self.funcs]:
                name += "_"  # same function twice (e.g. two weights): keep both logs apart
            self.funcs.append((name, get_reward(spec), float(weight)))
        self.error_counts = {name: 0 for name, _, _ in self.funcs}  # over the whole run

    def __call__(self, completions: list[str], **columns: Any) -> tuple[list[float], dict]:
        n = len(completions)
        total = [0.0] * n
        info: dict[str, dict] = {"per_func": {}, "errors": {}}
        for name, fn, weight in self.funcs:
            try:
                scores = _check_scores(fn(completions, **columns), n)
                info["errors"][name] = 0
            except Exception as exc:  # noqa: BLE001 - any user bug: report, score 0, go on
                log.warning("reward %r raised %s: %s; scoring 0 for this batch",
                            name, type(exc).__name__, exc)
                scores = [0.0] * n
                info["errors"][name] = 1
                self.error_counts[name] += 1
            info["per_func"][name] = scores
            total = [t + weight * s for t, s in zip(total, scores)]
        return total, info


def _check_scores(scores: Iterable[Any], n: int) -> list[float]:
    """Validate a reward's output: n finite floats (`None` = no opinion, counts as 0)."""
    out = [0.0 if s is None else float(s) for s in scores]
    if len(out) != n:
        raise ValueError(f"returned {len(out)} scores for {n} completions")
    if not all(math.isfinite(s) for s in out):
        raise ValueError("returned a non-finite score")
    return out


def combine_rewards(funcs_with_weights: Mapping[Any, float] | Sequence[Any],
                    completions: list[str], **columns: Any) -> tuple[list[float], dict]:
    """One-shot `RewardSet(funcs_with_weights)(completions, **columns)`."""
    return RewardSet(funcs_with_weights)(completions, **columns)


def reward_metrics(info: dict) -> dict[str, float]:
    """Flatten `RewardSet` info into log keys `rewards/<name>/mean|std|errors` (TRL naming)."""
    out = {}
    for name, s in info["per_func"].items():
        mean = sum(s) / max(len(s), 1)
        out[f"rewards/{name}/mean"] = mean
        out[f"rewards/{name}/std"] = math.sqrt(sum((x - mean) ** 2 for x in s) / max(len(s), 1))
        out[f"rewards/{name}/errors"] = float(info["errors"][name])
    return out


def _column(columns: Mapping[str, Any], n: int, *names: str) -> list:
    for name in names:
        if columns.get(name) is not None:
            col = list(columns[name])
            if len(col) != n:
                raise ValueError(f"column {name!r} has {len(col)} rows for {n} completions")
            return col
    raise KeyError(f"reward needs one of the columns {names}")


# ----------------------------------------------------------------------------- answer extraction


def _braced(text: str, start: int) -> tuple[str, int] | None:
    """Content of the `{...}` group opening at `text[start]`, brace-matched; and the end index."""
    if start >= len(text) or text[start] != "{":
        return None
    depth = 0
    for i in range(start, len(text)):
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        if depth == 0:
            return text[start + 1:i], i + 1
    return None


def last_boxed(text: str) -> str | None:
    """Content of the last `\\boxed{...}` (or `\\fbox{...}`), nested braces allowed."""
    i = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    m = re.compile(r"\\(boxed|fbox)\s*").match(text, i) if i >= 0 else None
    got = _braced(text, m.end()) if m else None
    return got[0] if got else None


def extract_answer(completion: str) -> str | None:
    """The final answer: the content of the LAST `<answer>...</answer>` (a `\\boxed{}` inside it
    wins), else the last `\\boxed{}` anywhere; None when neither exists.

    "Last" defeats reward hacking by listing several candidate answers early (R1.md §7); taking
    the innermost `<answer>` before the last `</answer>` makes nested tags harmless.
    """
    end = completion.rfind("</answer>")
    start = completion.rfind("<answer>", 0, max(end, 0))
    if start >= 0:
        inner = completion[start + len("<answer>"):completion.find("</answer>", start)]
        return last_boxed(inner) or inner.strip()
    return last_boxed(completion)


# ----------------------------------------------------------------------------- normalisation

_LATEX_DROP = re.compile(r"\\left|\\right|\\displaystyle|\\[,;:! ]|\\quad|\\qquad|\$|\^\\circ|°")
_THOUSANDS = re.compile(r"^[-+]?\d{1,3}(,\d{3})+(\.\d+)?$")
_LHS = re.compile(r"^[a-zA-Z]\w*\s*=(?!=)")


def _unwrap(text: str, cmd: str, repl: Callable[[str], str]) -> str:
    """Replace every `\\cmd{X}` by `repl(X)`, brace-matched, innermost handled by recursion."""
    while (i := text.find(cmd + "{")) >= 0:
        got = _braced(text, i + len(cmd))
        if got is None:
            break
        text = text[:i] + repl(_unwrap(got[0], cmd, repl)) + text[got[1]:]
    return text


def _frac_to_plain(text: str) -> str:
    """`\\frac{a}{b}` -> `((a)/(b))`; also the `\\frac34` shorthand."""
    text = re.sub(r"\\[dt]frac", r"\\frac", text)
    text = re.sub(r"\\frac\s*(\d)\s*(\d)", r"((\1)/(\2))", text)
    while (i := text.find("\\frac{")) >= 0:
        num = _braced(text, i + 5)
        den = _braced(text, num[1]) if num else None
        if den is None:
            break
        text = text[:i] + f"(({_frac_to_plain(num[0])})/({_frac_to_plain(den[0])}))" + text[den[1]:]
    return text


def normalize_answer(text: str) -> str:
    """Canonical string form: no `$`/`\\boxed`/`\\text`/spacing commands/whitespace, no trailing
    period, no `x =` prefix, no thousands separators (`1,000` -> `1000`)."""
    text = last_boxed(text) or text
    text = _unwrap(text, "\\text", str)
    text = _unwrap(text, "\\mathrm", str).replace("\\%", "%")
    text = _LATEX_DROP.sub("", text).strip().rstrip(".").strip()
    text = _LHS.sub("", text).strip()
    text = re.sub(r"\s+", "", text)
    if _THOUSANDS.match(text):
        text = text.replace(",", "")
    return text


def latex_to_plain(text: str) -> str:
    """Normalised LaTeX -> plain infix text that `parse_math` reads."""
    text = _frac_to_plain(text)
    text = re.sub(r"\\sqrt\[([^\]]*)\]", r"\\root(\1)", text)  # n-th root, finished below
    text = _unwrap(text, "\\sqrt", lambda x: f"sqrt({x})")
    text = re.sub(r"\\root\(([^)]*)\)\{([^}]*)\}", r"((\2)^(1/(\1)))", text)
    text = re.sub(r"\\?(sin|cos|tan)\^\{?(\d+)\}?\s*\(([^()]*)\)", r"(\1(\3))^\2", text)  # sin^2(x)
    for a, b in (("\\cdot", "*"), ("\\times", "*"), ("\\div", "/"), ("\\pi", "pi"),
                 ("{", "("), ("}", ")"), ("\\", "")):
        text = text.replace(a, b)
    return text


def parse_number(text: str) -> Fraction | None:
    """Exact rational value of a plain number (`-3`, `0.5`, `1/2`, `-3.0`), else None."""
    with contextlib.suppress(ValueError, ZeroDivisionError):
        if re.fullmatch(r"[-+]?(\d+(\.\d*)?|\.\d+)(/\d+)?", text):
            return Fraction(text)
    return None


# ----------------------------------------------------------------------------- safe math parser

_TOKEN = re.compile(r"\s*(\d+\.\d*|\.\d+|\d+|[a-zA-Z]+|\*\*|[-+*/^()])")
_FUNCS = ("sqrt", "sin", "cos", "tan", "log", "ln", "exp")
MAX_EXPR_CHARS = 200  # long answers are not symbolic answers; bounds the parser and sympy work


class ParseError(ValueError):
    """The text is not a small arithmetic/algebraic expression."""


def tokenize(text: str) -> list[str]:
    """Split into numbers, names, operators; anything else (quotes, `_`, `.` after names) fails."""
    out, pos, text = [], 0, text.rstrip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m:
            raise ParseError(f"bad character at {pos} in {text!r}")
        out.append(m.group(1))
        pos = m.end()
    return out


class _Parser:
    """Recursive descent over `tokenize` output; builds values through `ops` (sympy or Fraction).

    Grammar: expr := term (('+'|'-') term)* ; term := unary (('*'|'/'|implicit) unary)* ;
    unary := ('-'|'+') unary | power ; power := atom (('^'|'**') unary)? ;
    atom := number | name ['(' expr ')'] | '(' expr ')'.
    """

    def __init__(self, tokens: list[str], ops: Any):
        self.toks, self.i, self.ops = tokens, 0, ops

    def peek(self) -> str | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def take(self, want: str | None = None) -> str:
        tok = self.peek()
        if tok is None or (want is not None and tok != want):
            raise ParseError(f"expected {want or 'more input'}, got {tok!r}")
        self.i += 1
        return tok

    def parse(self) -> Any:
        val = self.expr()
        if self.peek() is not None:
            raise ParseError(f"unexpected {self.peek()!r}")
        return val

    def expr(self) -> Any:
        val = self.term()
        while self.peek() in ("+", "-"):
            op = self.take()
            val = self.ops.add(val, self.term()) if op == "+" else self.ops.sub(val, self.term())
        return val

    def term(self) -> Any:
        val = self.unary()
        while True:
            tok = self.peek()
            if tok in ("*", "/"):
                self.take()
                rhs = self.unary()
                val = self.ops.mul(val, rhs) if tok == "*" else self.ops.div(val, rhs)
            elif self.ops.implicit_mul and tok is not None and (tok == "(" or tok[0].isalnum()
                                                                 or tok[0] == "."):
                val = self.ops.mul(val, self.unary())  # 2x, 2(x+1), x y
            else:
                return val

    def unary(self) -> Any:
        if self.peek() in ("-", "+"):
            if not self.ops.unary:
                raise ParseError("unary sign not allowed")
            return self.ops.neg(self.unary()) if self.take() == "-" else self.unary()
        return self.power()

    def power(self) -> Any:
        base = self.atom()
        if self.peek() in ("^", "**"):
            self.take()
            return self.ops.pow(base, self.unary())
        return base

    def atom(self) -> Any:
        tok = self.take()
        if tok == "(":
            val = self.expr()
            self.take(")")
            return val
        if tok[0].isdigit() or tok[0] == ".":
            return self.ops.num(tok)
        if tok.isalpha():
            if tok in _FUNCS and self.peek() == "(":
                self.take("(")
                arg = self.expr()
                self.take(")")
                return self.ops.func(tok, arg)
            return self.ops.name(tok)
        raise ParseError(f"unexpected {tok!r}")


class _Ops:
    """+ - * shared by the expression back-ends; each adds its own div / neg / pow."""

    def add(self, a, b):
        return a + b

    def sub(self, a, b):
        return a - b

    def mul(self, a, b):
        return a * b


class _SympyOps(_Ops):
    """Builds sympy objects directly (never `sympify`/`parse_expr`, which call eval)."""

    implicit_mul = unary = True

    def __init__(self):
        self.sp = _sympy()  # torch depends on sympy, so it is always there with torch

    def num(self, tok: str) -> Any:
        return self.sp.Rational(tok)  # exact: 0.5 == 1/2

    def name(self, tok: str) -> Any:
        consts = {"pi": self.sp.pi, "e": self.sp.E, "i": self.sp.I, "infty": self.sp.oo}
        if tok in consts:
            return consts[tok]
        if len(tok) != 1:
            raise ParseError(f"unknown name {tok!r}")
        return self.sp.Symbol(tok)

    def func(self, name: str, arg: Any) -> Any:
        sp = self.sp
        return {"sqrt": sp.sqrt, "sin": sp.sin, "cos": sp.cos, "tan": sp.tan, "log": sp.log,
                "ln": sp.log, "exp": sp.exp}[name](arg)

    def div(self, a, b):
        return a / b

    def neg(self, a):
        return -a

    def pow(self, a, b):
        # 9^9^9 would hang sympy's eager integer power: bound digits(a) * |b| first.
        if a.is_Rational and b.is_Number and a not in (0, 1, -1):
            if abs(float(b)) * (len(str(abs(a.p))) + len(str(a.q))) > 5000:
                raise ParseError("power too large")
        return a ** b


def parse_math(text: str) -> Any:
    """Plain infix text -> sympy expression, or ParseError. Safe on untrusted model output."""
    if len(text) > MAX_EXPR_CHARS:
        raise ParseError("expression too long")
    return _Parser(tokenize(text.replace("**", "^")), _SympyOps()).parse()


@contextlib.contextmanager
def _time_limit(seconds: float):
    """Raise TimeoutError after `seconds` (SIGALRM; a no-op off the main thread or on Windows,
    where the size limits in `parse_math` are the only guard)."""
    main = threading.current_thread() is threading.main_thread()
    if not hasattr(signal, "setitimer") or not main:
        yield
        return

    def on_alarm(signum, frame):
        raise TimeoutError("symbolic comparison timed out")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def symbolic_equal(a: str, b: str, timeout: float = 2.0) -> bool:
    """True when sympy proves `a - b == 0`; False on parse failure or timeout."""
    try:
        _sympy()
        with _time_limit(timeout):
            ea, eb = parse_math(latex_to_plain(a)), parse_math(latex_to_plain(b))
            return bool(ea == eb or _is_zero(ea - eb))
    except Exception:  # noqa: BLE001 - parse errors, timeouts, sympy internals: not equal
        return False


@functools.cache
def _sympy() -> Any:
    """Import sympy and run `simplify` once, *outside* any time limit: sympy imports modules
    lazily (`sympy.physics.units` inside `simplify`), and an alarm that interrupts an import
    leaves a half-initialised module that breaks every later call."""
    import sympy

    x = sympy.Symbol("x")
    sympy.simplify(sympy.sin(x) ** 2 + sympy.cos(x) ** 2 + sympy.sqrt(8) * sympy.log(x) - 1)
    return sympy


def _is_zero(expr: Any) -> bool:
    """`expand` settles polynomials cheaply; `simplify` (slow) only for what is left."""
    sympy = _sympy()
    return sympy.expand(expr) == 0 or sympy.simplify(expr) == 0


def answers_match(pred: str | None, gold: str, timeout: float = 2.0) -> bool:
    """Exact string, then exact numeric, then symbolic equivalence of two final answers.

    Lists (`1, 2`) compare element-wise in order. Cheap checks first: the sympy path costs
    milliseconds to seconds and only runs when both sides are short formulas.
    """
    if pred is None:
        return False
    p, g = normalize_answer(pred), normalize_answer(gold)
    if not p or not g:
        return False
    if p == g:
        return True
    ps, gs = p.split(","), g.split(",")
    if len(ps) != len(gs):
        return False
    return all(_scalar_match(x, y, timeout) for x, y in zip(ps, gs))


def _scalar_match(p: str, g: str, timeout: float) -> bool:
    if p == g:
        return True
    pn, gn = parse_number(p.rstrip("%")), parse_number(g.rstrip("%"))
    if pn is not None and gn is not None:
        return pn == gn
    return symbolic_equal(p, g, timeout)


# ----------------------------------------------------------------------------- rewards


@register_reward("accuracy")
def accuracy(completions: list[str], answer: list[str] | None = None,
             solution: list[str] | None = None, timeout: float = 2.0, numeric: bool = False,
             **_: Any) -> list[float]:
    """1.0 when the final answer (`extract_answer`) equals the reference (`answer` column, or a
    `solution` column holding `\\boxed{}`), else 0.0 (R1 §2.2.2 "accuracy rewards").

    `numeric` accepts only a plain number: on arithmetic, copying the question (`3 + 5`) would
    otherwise pass as symbolically equal to `8`."""
    gold = _column({"answer": answer, "solution": solution}, len(completions), "answer", "solution")
    preds = [extract_answer(c) for c in completions]
    return [float(answers_match(p, str(g), timeout)
                  and (not numeric or parse_number(normalize_answer(p)) is not None))
            for p, g in zip(preds, gold)]


_INTEGER = re.compile(r"[-+]?\d+")


@register_reward("digit_match")
def digit_match(completions: list[str], answer: list[str] | None = None, **_: Any) -> list[float]:
    """Partial credit for integer answers: the fraction of the gold answer's digit positions the
    predicted answer gets right, aligned from the least significant digit; a wrong length or sign
    costs like a wrong digit (positions = the longer of the two). 1.0 only for the exact answer.

    The dense reward R1.md §5 found necessary for RL from scratch on tiny models: with exact match
    alone almost every group scores all 0 and carries no advantage. Integers only ("+5" and "05"
    count as 5); anything else, "7.0" included, scores 0 (use `accuracy` for those)."""
    gold = _column({"answer": answer}, len(completions), "answer")
    out = []
    for c, g in zip(completions, gold):
        p = extract_answer(c)
        p = normalize_answer(p).replace(",", "") if p is not None else ""
        g = str(g).strip().replace(",", "")
        if not (_INTEGER.fullmatch(p) and _INTEGER.fullmatch(g)):
            out.append(0.0)
            continue
        # digit strings, not int(): a runaway answer can exceed int()'s 4300-digit limit
        pneg, pd = p.startswith("-"), p.lstrip("+-").lstrip("0") or "0"
        gneg, gd = g.startswith("-"), g.lstrip("+-").lstrip("0") or "0"
        pneg, gneg = pneg and pd != "0", gneg and gd != "0"  # -0 is 0
        a, b = pd[::-1], gd[::-1]  # ones digit first
        signed = pneg or gneg  # the sign is one more position when either is negative
        n = max(len(a), len(b)) + signed
        hits = sum(x == y for x, y in zip(a, b)) + (signed and pneg == gneg)
        out.append(hits / n)
    return out


_STRICT_FORMAT = re.compile(
    r"\s*<think>((?:(?!</?think>|</?answer>).)*)</think>"
    r"\s*<answer>((?:(?!</?think>|</?answer>).)*)</answer>\s*", re.DOTALL)


def _with_prefill(completion: str, prompt: str | None) -> str:
    """Re-attach a `<think>` that the chat template put at the end of the prompt (R1.md §6.5)."""
    if prompt is not None and str(prompt).rstrip().endswith("<think>") \
            and not completion.lstrip().startswith("<think>"):
        return "<think>" + completion
    return completion


@register_reward("format")
def format_reward(completions: list[str], prompts: list[str] | None = None,
                  nonempty_answer: bool = False, **_: Any) -> list[float]:
    """1.0 for exactly `<think>…</think><answer>…</answer>` with only whitespace around, else 0.

    Tags may not repeat or nest (the loose-regex hack of R1.md §7). When a prompt ends with
    `<think>` (R1-distill templates prefill it), the completion may start inside the thought.
    `nonempty_answer` also requires text inside `<answer>`: an RL policy that cannot yet answer
    otherwise settles on `<answer></answer>`, which earns the format reward and never accuracy.
    """
    prompts = prompts if prompts is not None else [None] * len(completions)
    out = []
    for c, p in zip(completions, prompts):
        m = _STRICT_FORMAT.fullmatch(_with_prefill(c, p))
        out.append(float(m is not None and (not nonempty_answer or bool(m.group(2).strip()))))
    return out


@register_reward("tag_count")
def tag_count(completions: list[str], prompts: list[str] | None = None,
              **_: Any) -> list[float]:
    """0.25 for each of the four tags that occurs exactly once (open-r1's dense format signal)."""
    prompts = prompts if prompts is not None else [None] * len(completions)
    tags = ("<think>", "</think>", "<answer>", "</answer>")
    return [0.25 * sum(_with_prefill(c, p).count(t) == 1 for t in tags)
            for c, p in zip(completions, prompts)]


_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff"
_SCRIPTS = {"latin": "A-Za-z\u00c0-\u024f", "cjk": _CJK, "cyrillic": "\u0400-\u04ff"}
_LANG_SCRIPT = {"en": "latin", "fr": "latin", "de": "latin", "es": "latin", "it": "latin",
                "pt": "latin", "zh": "cjk", "ja": "cjk", "ko": "cjk", "ru": "cyrillic"}
# A word is one CJK character (no spaces between CJK words) or a run of other letters.
_WORD = re.compile(rf"[{_CJK}]|[^\W\d_{_CJK}]+")


def _think_text(completion: str) -> str:
    """The chain of thought (R1 scores the CoT); the whole text if no `<think>` block."""
    m = re.search(r"<think>(.*?)(</think>|$)", completion, re.DOTALL)
    return m.group(1) if m else completion


@register_reward("language_consistency")
def language_consistency(completions: list[str], language: str | list[str] = "en",
                         **_: Any) -> list[float]:
    """Fraction of CoT words written in the target language's script (R1 §2.3.2).

    `language` is a code (`en`, `zh`, …) or a script (`latin`, `cjk`, `cyrillic`), one for all
    or a per-sample column. Digits and symbols are neutral; no words at all scores 0.
    """
    langs = [language] * len(completions) if isinstance(language, str) else list(language)
    out = []
    for c, lang in zip(completions, langs):
        script = _SCRIPTS[_LANG_SCRIPT.get(lang, lang)]
        words = _WORD.findall(_think_text(c))
        hits = sum(bool(re.match(f"[{script}]", w)) for w in words)
        out.append(hits / len(words) if words else 0.0)
    return out


def soft_overlong(length: int, max_len: int, cache_len: int) -> float:
    """DAPO eq. 13: 0 up to max_len - cache_len, linear to -1 at max_len, -1 beyond."""
    start = max_len - cache_len
    if length <= start:
        return 0.0
    if length <= max_len:
        return (start - length) / cache_len
    return -1.0


@register_reward("length_penalty")
def length_penalty(completions: list[str], completion_lengths: list[int] | None = None,
                   completion_ids: list[list[int]] | None = None, max_len: int = 1024,
                   cache_len: int = 256, **_: Any) -> list[float]:
    """Soft overlong punishment on token lengths (R1.md §7 "Truncation"): shapes long answers
    smoothly instead of scoring a cut-off answer as plainly wrong. Bind `max_len` to the
    generation cap and `cache_len` to the soft zone (`get_reward(..., max_len=..)`)."""
    if completion_lengths is None and completion_ids is not None:
        completion_lengths = [len(ids) for ids in completion_ids]
    lengths = _column({"completion_lengths": completion_lengths}, len(completions),
                      "completion_lengths")
    return [soft_overlong(int(n), max_len, cache_len) for n in lengths]


REWARDS["soft_overlong"] = length_penalty


# ----------------------------------------------------------------------------- countdown


class _FractionOps(_Ops):
    """Exact arithmetic for countdown equations; records every literal used."""

    implicit_mul = unary = False

    def __init__(self):
        self.used: list[int] = []

    def num(self, tok: str) -> Fraction:
        if not tok.isdigit():
            raise ParseError("countdown uses whole numbers only")
        self.used.append(int(tok))
        return Fraction(int(tok))

    def name(self, tok: str):
        raise ParseError(f"names not allowed: {tok!r}")

    func = name

    def div(self, a, b):
        if b == 0:
            raise ParseError("division by zero")
        return a / b

    def neg(self, a):
        raise ParseError("unary minus not allowed")

    def pow(self, a, b):
        raise ParseError("powers not allowed")


def eval_countdown(equation: str) -> tuple[Fraction, list[int]]:
    """Value and literals of a `+ - * /` equation; a trailing `= N` is ignored. ParseError if
    it is anything else (letters, powers, unary minus, division by zero)."""
    expr = equation.split("=")[0].replace("×", "*").replace("÷", "/").replace("\\times", "*")
    if len(expr) > MAX_EXPR_CHARS:
        raise ParseError("expression too long")
    ops = _FractionOps()
    return _Parser(tokenize(expr), ops).parse(), ops.used


def countdown_score(equation: str | None, numbers: Sequence[int], target: int) -> bool:
    """Each given number used exactly once, nothing else, and the value equals the target."""
    if equation is None:
        return False
    try:
        value, used = eval_countdown(equation)
    except (ParseError, RecursionError):
        return False
    return sorted(used) == sorted(int(x) for x in numbers) and value == int(target)


@register_reward("countdown")
def countdown(completions: list[str], numbers: list[list[int]] | None = None,
              target: list[int] | None = None, answer: list[str] | None = None,
              format_score: float = 0.0, **_: Any) -> list[float]:
    """1.0 for a valid countdown equation in the final `<answer>`; `format_score` (TinyZero used
    0.1) when an answer is present but wrong; 0 with no answer. `target` falls back to `answer`."""
    n = len(completions)
    nums = _column({"numbers": numbers}, n, "numbers")
    goal = _column({"target": target, "answer": answer}, n, "target", "answer")
    out = []
    for c, ns, t in zip(completions, nums, goal):
        eq = extract_answer(c)
        out.append(1.0 if countdown_score(eq, ns, int(t)) else (format_score if eq else 0.0))
    return out

"""Evaluation with the R1 protocol (R1.md §1.4, §7 "Evaluation variance"): k samples per problem
at temperature 0.6 / top-p 0.95, pass@1 = mean correctness (the unbiased pass@k estimator at
k=1), cons@k = majority vote over extracted answers, plus format rate and completion length.

Works on any "generator": a nanoseek `DeepSeekV3`, a `transformers` causal LM (via
`generate_ids`), or any object with nanoseek's `generate(prompts, **sampling)` (tests use fakes).
Prompts are rendered like the RL rollouts (`rollout.render_prompt`), so eval, rejection sampling
and GRPO see the same format.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
from collections import Counter
from pathlib import Path

import torch

from ..data.tokenizer import Tokenizer
from .rewards import extract_answer, get_reward, normalize_answer
from .rollout import encode_prompt, precision_ctx, render_prompt
from .tasks import eval_set, is_task_file, load_jsonl, train_set

# ----------------------------------------------------------------------------- models


def is_hf(model) -> bool:
    """A `transformers` model (HF generate / forward signatures) rather than a nanoseek one."""
    return type(model).__module__.startswith("transformers.")


def resolve_model_dir(path: str | Path) -> Path:
    """A run directory means its `model/`; a model directory is itself."""
    p = Path(path)
    return p / "model" if (p / "model" / "config.json").exists() else p


@contextlib.contextmanager
def quiet_hf():
    """No transformers progress bars while loading / saving small local models (log noise)."""
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()


def load_model(path: str | Path, device: str = "auto", dtype: torch.dtype | None = None):
    """(model, tokenizer) from a run dir, a nanoseek/HF DeepSeek-V3 dir, or any HF causal-LM dir
    (loaded with `AutoModelForCausalLM`; a dir with only config.json gets random weights).
    The directory must hold a `tokenizer.json`. fp32 on CPU, bf16 on CUDA unless `dtype`."""
    from ..model import DeepSeekV3
    from ..model.hf import CheckpointError

    p = resolve_model_dir(path)
    if not (p / "config.json").exists():
        raise CheckpointError(f"{p}: no config.json (expected a run directory or a model directory)")
    if not (p / "tokenizer.json").exists():
        raise CheckpointError(f"{p}: no tokenizer.json beside the model")
    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else ("cpu" if device == "auto" else device))
    dtype = dtype or (torch.bfloat16 if dev.type == "cuda" else torch.float32)
    model_type = json.loads((p / "config.json").read_text()).get("model_type", "deepseek_v3")
    if model_type == "deepseek_v3":
        model = DeepSeekV3.from_pretrained(p, dtype=dtype, device=dev)
    else:
        from transformers import AutoConfig, AutoModelForCausalLM

        if any(p.glob("*.safetensors")) or any(p.glob("*.bin")):
            with quiet_hf():
                model = AutoModelForCausalLM.from_pretrained(p, dtype=dtype).to(dev)
        else:
            model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(p)).to(dev, dtype)
    tok = Tokenizer.load(p)
    vocab = model.config.vocab_size
    if tok.vocab_size > vocab:
        raise CheckpointError(f"{p}: tokenizer has {tok.vocab_size} tokens but the model's vocab_size is {vocab}")
    return model.eval(), tok


@torch.no_grad()
def generate_ids(model, prompts: list[list[int]], *, max_new_tokens: int, temperature: float = 0.0,
                 top_k: int = 0, top_p: float = 1.0, stop_tokens: tuple = (), pad_id: int = 0,
                 seed: int | None = None) -> list[list[int]]:
    """New tokens per prompt (stop token excluded), for nanoseek and HF models alike."""
    if not is_hf(model):
        params = getattr(model, "parameters", None)
        dev = next(params()).device if params else torch.device("cpu")
        with precision_ctx(dev):  # fp32 master weights (mid-training) sample in bf16 on CUDA
            return model.generate(prompts, max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k,
                                  top_p=top_p, stop_tokens=stop_tokens, pad_id=pad_id, seed=seed)
    dev = next(model.parameters()).device
    P = max(map(len, prompts))
    ids = torch.tensor([[pad_id] * (P - len(p)) + list(p) for p in prompts], device=dev)
    att = torch.tensor([[0] * (P - len(p)) + [1] * len(p) for p in prompts], device=dev)
    kw = dict(do_sample=True, temperature=temperature, top_k=top_k or None, top_p=top_p) if temperature > 0 else dict(do_sample=False)
    with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
        torch.manual_seed(0 if seed is None else seed)
        out = model.generate(ids, attention_mask=att, max_new_tokens=max_new_tokens, pad_token_id=pad_id,
                             eos_token_id=list(stop_tokens) or None, **kw)
    stops = set(stop_tokens)
    rows = []
    for r in out[:, P:].tolist():
        cut = next((i for i, t in enumerate(r) if t in stops), len(r))
        rows.append(r[:cut])
    return rows


# ----------------------------------------------------------------------------- sampling + scoring


def sample(model, tok: Tokenizer, examples: list[dict], k: int, *, temperature: float = 0.6,
           top_p: float = 0.95, top_k: int = 0, max_new_tokens: int = 256, batch_size: int = 64,
           seed: int = 0, prompt_format: str = "chat") -> dict:
    """k completions per example, prompts x k flattened (rows i*k..i*k+k-1 share example i) and
    generated `batch_size` rows at a time. Returns prompts, completion_ids, completions (text,
    with a prefilled `<think>` re-attached, so the text is the whole assistant turn), truncated."""
    texts = [render_prompt(ex, prompt_format) for ex in examples]
    prefill = [t.rstrip().endswith("<think>") for t in texts]
    ids = [encode_prompt(tok, t) for t in texts]
    flat = [i for i in range(len(examples)) for _ in range(k)]
    was_training = getattr(model, "training", False)
    if hasattr(model, "eval"):
        model.eval()
    outs: list[list[int]] = []
    for c, start in enumerate(range(0, len(flat), batch_size)):
        chunk = [ids[i] for i in flat[start:start + batch_size]]
        outs += generate_ids(model, chunk, max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k,
                             top_p=top_p, stop_tokens=(tok.eos_id,), pad_id=tok.pad_id or 0, seed=seed + c)
    if was_training:
        model.train()
    comps = [("<think>" if prefill[i] else "") + tok.decode(o) for i, o in zip(flat, outs)]
    return {"index": flat, "prompts": [texts[i] for i in flat], "completion_ids": outs, "completions": comps,
            "truncated": [len(o) >= max_new_tokens for o in outs]}


def score(examples: list[dict], completions: list[str]) -> tuple[list[float], list[float]]:
    """(accuracy, format) per completion: the countdown reward for examples with numbers/target,
    else `accuracy` against `answer`; `format` is R1's strict think-then-answer shape."""
    acc_fn, cd_fn = get_reward("accuracy"), get_reward("countdown")
    acc = []
    for ex, c in zip(examples, completions):
        if "numbers" in ex and "target" in ex:
            acc.append(cd_fn([c], numbers=[ex["numbers"]], target=[ex["target"]])[0])
        else:
            acc.append(acc_fn([c], answer=[ex["answer"]])[0])
    return acc, get_reward("format")(completions)


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples with c correct (Chen et al. 2021): 1 - C(n-c,k)/C(n,k)."""
    if k > n:
        raise ValueError(f"pass@{k} needs at least {k} samples, got {n}")
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def majority_vote(completions: list[str], correct: list[float]) -> tuple[str | None, bool]:
    """(voted answer, is it correct): the most frequent normalised extracted answer (ties: the
    earliest); samples without an answer do not vote. The vote is correct when its samples are."""
    keys = [extract_answer(c) for c in completions]
    keys = [normalize_answer(a) if a is not None else None for a in keys]
    counts = Counter(a for a in keys if a)
    if not counts:
        return None, False
    best = max(counts, key=lambda a: (counts[a], -keys.index(a)))
    return best, any(ok > 0 for a, ok in zip(keys, correct) if a == best)


def answer_prior(examples: list[dict], completions: list[str], p1: list[float]) -> dict:
    """What a collapsed policy could score, next to what this one does (R1.md §5-§7).

    constant: the single answer most of these problems share and the pass@1 that always giving
    it would score (on 1-digit arithmetic, `0` scores ~0.1-0.35); pass@1_other: pass@1 on the
    problems whose answer is NOT that one, i.e. what the model solves beyond the prior.
    top_share: how often the model's single most frequent extracted answer appears among all its
    samples (1.0 = it says the same thing to every problem); distinct: distinct answers given.
    Tasks without a plain `answer` (countdown) report only the model side.
    """
    keys = [extract_answer(c) for c in completions]
    keys = [normalize_answer(a) for a in keys if a is not None]
    out: dict = {"distinct": len(set(keys)), "top_share": Counter(keys).most_common(1)[0][1] / len(completions)
                 if keys else 0.0}
    gold = [normalize_answer(str(ex["answer"])) for ex in examples if "answer" in ex and "numbers" not in ex]
    if len(gold) == len(examples):
        const, c = Counter(gold).most_common(1)[0]
        other = [v for g, v in zip(gold, p1) if g != const]
        out.update({"constant": const, "constant_pass@1": c / len(examples),
                    "pass@1_other": sum(other) / len(other) if other else None})
    return out


# ----------------------------------------------------------------------------- evaluate


def evaluate(model, tok: Tokenizer, examples: list[dict], k: int = 4, temperature: float = 0.6,
             top_p: float = 0.95, max_new_tokens: int = 256, batch_size: int = 64, seed: int = 0,
             greedy: bool = False, prompt_format: str = "chat", return_samples: bool = False) -> dict:
    """pass@1 (mean over k samples), pass@k, cons@k, format_rate, mean_len (tokens), truncated
    fraction and per-level pass@1 over `examples`. `greedy` = one argmax sample per problem."""
    if not examples:
        raise ValueError("evaluate: no examples")
    if greedy:
        k, temperature = 1, 0.0
    s = sample(model, tok, examples, k, temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens,
               batch_size=batch_size, seed=seed, prompt_format=prompt_format)
    acc, fmt = score([examples[i] for i in s["index"]], s["completions"])
    p1, pk, cons, by_level = [], [], [], {}
    for i, ex in enumerate(examples):
        a, comps = acc[i * k:(i + 1) * k], s["completions"][i * k:(i + 1) * k]
        c = sum(x > 0 for x in a)
        p1.append(pass_at_k(k, c, 1))
        pk.append(pass_at_k(k, c, k))
        cons.append(float(majority_vote(comps, a)[1]))
        by_level.setdefault(str(ex.get("level", 0)), []).append(p1[-1])
    mean = lambda xs: sum(xs) / max(len(xs), 1)  # noqa: E731
    out = {"n": len(examples), "k": k, "pass@1": mean(p1), "pass@k": mean(pk), "cons@k": mean(cons),
           "format_rate": mean(fmt), "mean_len": mean([len(o) for o in s["completion_ids"]]),
           "truncated_frac": mean(s["truncated"]), "by_level": {lv: mean(v) for lv, v in sorted(by_level.items())},
           "sampling": {"temperature": temperature, "top_p": top_p, "max_new_tokens": max_new_tokens,
                        "greedy": greedy, "seed": seed, "prompt_format": prompt_format},
           "answer_prior": answer_prior(examples, s["completions"], p1)}
    if return_samples:
        out["samples"] = [{"prompt": examples[i]["prompt"], "answer": examples[i]["answer"], "completion": c,
                           "correct": a, "format": f} for i, c, a, f in zip(s["index"], s["completions"], acc, fmt)]
    return out


def _task_examples(task_or_path: str, n: int, level, seed: int, split: str) -> list[dict]:
    if is_task_file(task_or_path):
        rows = load_jsonl(task_or_path, wrap_prompt=True)
        return rows[:n] if n > 0 else rows
    return (eval_set if split == "eval" else train_set)(task_or_path, n, level, seed)


def eval_examples(task_or_path: str, n: int = 100, level: int | list[int] = 1, seed: int = 0) -> list[dict]:
    """Held-out problems of a built-in task (never in any train stream), or the first n of a
    JSONL file (user / GSM8K / MATH-500 / AIME layouts; n <= 0 = all)."""
    return _task_examples(task_or_path, n, level, seed, "eval")


def train_examples(task_or_path: str, n: int = 100, level: int | list[int] = 1, seed: int = 0) -> list[dict]:
    """Training problems (rejection sampling, distillation prompts): never an eval problem."""
    return _task_examples(task_or_path, n, level, seed, "train")


def format_table(res: dict, title: str = "") -> str:
    """A small fixed-width table of the headline numbers."""
    k = res["k"]
    rows = [("problems", f"{res['n']}"), ("samples/problem", f"{k}"), ("pass@1", f"{100 * res['pass@1']:.1f}%"),
            (f"pass@{k}", f"{100 * res['pass@k']:.1f}%"), (f"cons@{k}", f"{100 * res['cons@k']:.1f}%"),
            ("format rate", f"{100 * res['format_rate']:.1f}%"), ("mean length", f"{res['mean_len']:.1f} tok"),
            ("truncated", f"{100 * res['truncated_frac']:.1f}%")]
    ap = res.get("answer_prior") or {}
    if "constant" in ap:
        other = ap["pass@1_other"]
        rows += [(f"always '{ap['constant']}'", f"{100 * ap['constant_pass@1']:.1f}%"),
                 ("pass@1 other answers", "n/a" if other is None else f"{100 * other:.1f}%")]
    if ap:
        rows += [("top answer share", f"{100 * ap['top_share']:.1f}%")]
    rows += [(f"pass@1 level {lv}", f"{100 * v:.1f}%") for lv, v in res.get("by_level", {}).items() if len(res["by_level"]) > 1]
    w = max(len(r[0]) for r in rows)
    lines = [title] if title else []
    lines += [f"{a:<{w}}  {b:>9}" for a, b in rows]
    return "\n".join(lines)


def _levels(s: str) -> int | list[int]:
    v = [int(x) for x in str(s).split(",")]
    return v[0] if len(v) == 1 else v


def main_eval(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="nanoseek eval", description="pass@1 / cons@k / format rate of a run or model "
                                 "directory on a built-in task or a JSONL file (R1 protocol: T=0.6, top-p 0.95).")
    ap.add_argument("path", help="run directory or model directory (nanoseek or any HF causal LM with tokenizer.json)")
    ap.add_argument("--task", default="arithmetic", help="arithmetic | countdown | FILE.jsonl")
    ap.add_argument("--n", type=int, default=100, help="problems (JSONL: first n; <=0 = all)")
    ap.add_argument("--level", default="1", help="difficulty, or a comma list to mix (built-in tasks)")
    ap.add_argument("--k", type=int, default=4, help="samples per problem")
    ap.add_argument("--temperature", type=float, default=0.6)
    ap.add_argument("--top-p", type=float, default=0.95)
    ap.add_argument("--max-new-tokens", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=64, help="sequences per generate call")
    ap.add_argument("--greedy", action="store_true", help="one argmax sample per problem")
    ap.add_argument("--prompt-format", default="chat", choices=["chat", "r1"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", default=None, help="results JSON (default: RUN/eval_<task>.json for a run directory)")
    ap.add_argument("--show", type=int, default=2, help="print this many sample completions")
    a = ap.parse_args(argv)
    model, tok = load_model(a.path, a.device)
    examples = eval_examples(a.task, a.n, _levels(a.level), a.seed)
    res = evaluate(model, tok, examples, k=a.k, temperature=a.temperature, top_p=a.top_p,
                   max_new_tokens=a.max_new_tokens, batch_size=a.batch_size, seed=a.seed, greedy=a.greedy,
                   prompt_format=a.prompt_format, return_samples=True)
    res.update(model=str(a.path), task=a.task, level=a.level)
    for smp in res["samples"][: a.show]:
        print(f"--- answer {smp['answer']!r} correct={smp['correct']:.0f} format={smp['format']:.0f}\n{smp['completion']}")
    print(format_table(res, f"eval {a.task} ({a.path})"))
    out = Path(a.out) if a.out else (Path(a.path) / f"eval_{Path(a.task).stem}.json" if (Path(a.path) / "model").is_dir() else None)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(res, indent=2))
        print(f"results -> {out}")
    return 0

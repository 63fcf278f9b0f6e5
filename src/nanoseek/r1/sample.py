"""Rejection sampling (R1 §2.3.3, R1.md §1.3 step 3): K samples per prompt from a checkpoint,
keep only the correct *and* well-formed ones, drop duplicates, write them as SFT conversations.

R1 also drops mixed-language, long-paragraph and code-block CoTs and uses a generative judge for
some prompts; here the filters are the rule rewards (`evaluate.score`): accuracy (or the
countdown checker) and the strict `<think>…</think><answer>…</answer>` format.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from ..data.tokenizer import Tokenizer
from .data import write_jsonl
from .evaluate import load_model, sample, score, train_examples
from .rollout import question_of

_TURN = re.compile(r"\s*<think>(.*?)</think>\s*<answer>(.*?)</answer>\s*", re.DOTALL)


def to_conversation(example: dict, completion: str) -> dict | None:
    """An SFT record `{"messages": [user, assistant(reasoning, content)], ...}` from a
    well-formed completion (None if it is not `<think>…</think><answer>…</answer>`)."""
    m = _TURN.fullmatch(completion)
    if not m:
        return None
    reasoning, content = m.group(1).strip(), m.group(2).strip()
    rec = {"messages": [{"role": "user", "content": question_of(example)},
                        {"role": "assistant", "content": content, "reasoning": reasoning}],
           "answer": str(example.get("answer", "")), "task": example.get("task", ""), "level": example.get("level", 0)}
    return rec


def rejection_sample(model, tok: Tokenizer, examples: list[dict], k: int = 8, temperature: float = 0.7,
                     top_p: float = 0.95, max_new_tokens: int = 256, batch_size: int = 64, seed: int = 0,
                     prompt_format: str = "chat", max_per_prompt: int | None = None) -> tuple[list[dict], dict]:
    """(records, stats). records: kept conversations, deduplicated per prompt on whitespace-
    normalised (reasoning, answer), at most `max_per_prompt` each. stats: sample counts, kept
    fraction, per-prompt solve rate (fraction of its k samples that were kept-worthy)."""
    s = sample(model, tok, examples, k, temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens,
               batch_size=batch_size, seed=seed, prompt_format=prompt_format)
    rows = [examples[i] for i in s["index"]]
    acc, fmt = score(rows, s["completions"])
    records, seen, dups = [], set(), 0
    good = [0] * len(examples)
    kept_per = [0] * len(examples)
    for i, ex, comp, a, f in zip(s["index"], rows, s["completions"], acc, fmt):
        rec = to_conversation(ex, comp) if a >= 1.0 and f >= 1.0 else None
        if rec is None:
            continue
        good[i] += 1
        msg = rec["messages"][1]
        key = (i, " ".join(msg["reasoning"].split()), " ".join(msg["content"].split()))
        if key in seen:
            dups += 1
            continue
        if max_per_prompt is not None and kept_per[i] >= max_per_prompt:
            continue
        seen.add(key)
        kept_per[i] += 1
        records.append(rec)
    n = len(s["completions"])
    solve = [g / k for g in good]
    stats = {"prompts": len(examples), "k": k, "samples": n, "correct": int(sum(x >= 1.0 for x in acc)),
             "well_formed": int(sum(fmt)), "correct_and_formed": sum(good), "duplicates": dups,
             "kept": len(records), "kept_fraction": len(records) / max(n, 1),
             "prompts_solved": sum(g > 0 for g in good), "mean_solve_rate": sum(solve) / max(len(solve), 1),
             "truncated_frac": sum(s["truncated"]) / max(n, 1), "per_prompt_solve_rate": solve,
             "sampling": {"temperature": temperature, "top_p": top_p, "max_new_tokens": max_new_tokens, "seed": seed}}
    return records, stats


def summary(stats: dict) -> str:
    return (f"kept {stats['kept']}/{stats['samples']} samples ({100 * stats['kept_fraction']:.1f}%): "
            f"{stats['correct']} correct, {stats['well_formed']} well-formed, {stats['duplicates']} duplicates; "
            f"{stats['prompts_solved']}/{stats['prompts']} prompts solved, mean solve rate "
            f"{100 * stats['mean_solve_rate']:.1f}%")


def main_sample(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="nanoseek sample", description="Rejection sampling: K samples per training "
                                 "prompt, keep correct and well-formed ones, write SFT JSONL (+ .stats.json).")
    ap.add_argument("path", help="run directory or model directory")
    ap.add_argument("--task", default="arithmetic", help="arithmetic | countdown | FILE.jsonl")
    ap.add_argument("--n", type=int, default=200, help="prompts (training split; never eval problems)")
    ap.add_argument("--level", default="1", help="difficulty, or a comma list")
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--top-p", type=float, default=0.95)
    ap.add_argument("--max-new-tokens", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--max-per-prompt", type=int, default=None)
    ap.add_argument("--prompt-format", default="chat", choices=["chat", "r1"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", required=True, help="output SFT JSONL")
    a = ap.parse_args(argv)
    from .evaluate import _levels

    model, tok = load_model(a.path, a.device)
    examples = train_examples(a.task, a.n, _levels(a.level), a.seed)
    records, stats = rejection_sample(model, tok, examples, a.k, a.temperature, a.top_p, a.max_new_tokens,
                                      a.batch_size, a.seed, a.prompt_format, a.max_per_prompt)
    out = write_jsonl(a.out, records)
    Path(str(out) + ".stats.json").write_text(json.dumps(stats, indent=2))
    print(summary(stats))
    print(f"-> {out} (+ {out}.stats.json)")
    return 0

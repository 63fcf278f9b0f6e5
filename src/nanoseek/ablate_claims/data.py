"""Data claims: C5 (packing), C6 (curriculum), C11 (filtering)."""

from __future__ import annotations

import random
import time

import numpy as np

from ..ablate import FAILS, INCONCLUSIVE, Ctx, Record, claim, judge
from ..data import CorpusConfig, Curriculum, DocumentFilter, PaddedBatcher, default_corpus
from ..data.config import CurriculumConfig
from .common import Arm, arithmetic_docs, build, eval_loss, packed, rel, tiny_config, tokenizer, train


# ----------------------------------------------------------------------------------------- C5
def lognormal_docs(n: int, median: int, sigma: float, max_len: int, vocab: int, seed: int) -> list[np.ndarray]:
    """Documents whose lengths follow a lognormal (web text and chat are roughly lognormal), capped."""
    rng = np.random.default_rng(seed)
    lens = np.clip(rng.lognormal(np.log(median), sigma, n).astype(int), 8, max_len)
    return [rng.integers(3, vocab, size=L) for L in lens]


def _throughput(model, loader, n: int, padded: bool) -> tuple[float, float]:
    """(useful tokens/s, useful fraction) of fwd+bwd over n batches; padded rows use the plain causal mask."""
    import torch

    useful, t0 = 0, None
    for k in range(n + 1):
        b = next(loader)
        if k == 1:
            t0, useful = time.perf_counter(), 0  # the first batch warms up
        out = model(b["input_ids"], position_ids=b["position_ids"], doc_ids=None if padded else b["doc_ids"])
        torch.nn.functional.cross_entropy(out.logits.flatten(0, 1), b["labels"].flatten(), ignore_index=-100).backward()
        useful += int((b["labels"] != -100).sum())
    return useful / (time.perf_counter() - t0), loader.useful_fraction


@claim("C5")
def c5_packing(ctx: Ctx) -> Record:
    """Packed rows (no padding, document mask) vs pad-to-longest on the same lognormal length mix."""
    r = Record("C5", "dynamic sequence length (packing)", "-20% compute vs fixed padding")
    S, B, median = ctx.pick(256, 1024), 4, ctx.pick(64, 256)
    vocab = tokenizer().vocab_size
    docs = lognormal_docs(ctx.pick(400, 2000), median, 1.0, 4 * S, vocab, ctx.seed)
    frac = {}
    for name, cls in (("packed", None), ("padded", PaddedBatcher)):
        ld = packed(docs, S, B, ctx.seed, wrap=False) if cls is None else cls(docs, S, B, seed=ctx.seed, wrap=False)
        for _ in ld:
            pass
        frac[name] = ld.useful_fraction
    m = build(tiny_config(num_nextn_predict_layers=0), ctx.seed)
    n = ctx.pick(2, 6)
    tps = {"packed": _throughput(m, iter(packed(docs, S, B, ctx.seed)), n, False)[0],
           "padded": _throughput(m, iter(PaddedBatcher(docs, S, B, seed=ctx.seed)), n, True)[0]}
    saved = r.add("compute_saved_per_useful_token", 1 - frac["padded"] / frac["packed"], "fraction")
    r.add("useful_fraction_packed", frac["packed"], "fraction")
    r.add("useful_fraction_padded", frac["padded"], "fraction")
    sp = r.add("useful_tokens_per_s_packed_over_padded", tps["packed"] / tps["padded"], "x")
    r.verdict = judge(saved, 0.20, "higher", noise=0.02)
    r.headline = f"{saved:.0%} fewer positions per useful token; {sp:.2f}x useful tok/s (CPU)"
    r.why = (f"Lognormal lengths (median {median}, σ=1, cap {4 * S}), rows of {S}, batch {B}: useful-token fraction "
             f"{frac['packed']:.1%} packed vs {frac['padded']:.1%} pad-to-longest, so packing computes {saved:.0%} fewer "
             f"positions per useful token. Measured useful tokens/s on CPU: {sp:.2f}x (packed rows attend under a dense "
             f"document mask here, padded rows under SDPA's causal fast path). The saving depends entirely on the length "
             f"mix and batch size: a narrow mix gives little, a long tail gives more.")
    r.details = {"useful_fraction": frac, "useful_tok_s": tps, "seq_len": S, "batch": B, "docs": len(docs)}
    return r


# ----------------------------------------------------------------------------------------- C6
def _docs_for_tokens(budget: int, seed: int) -> tuple[list, list]:
    """Arithmetic docs (1-5 digit operands) adding up to about `budget` tokens: one epoch = the run."""
    docs, diff = arithmetic_docs(max(budget // 60, 16), seed, (1, 5))
    keep = np.cumsum([len(d) for d in docs]) <= budget
    keep[0] = True
    return [d for d, k in zip(docs, keep) if k], [x for x, k in zip(diff, keep) if k]


def tokens_to(curve: list[tuple[int, float]], target: float) -> float | None:
    """Tokens at which a (tokens, val loss) curve first reaches `target`, interpolated between evals."""
    prev = None
    for t, v in curve:
        if v <= target:
            if prev is None or prev[1] == v:
                return float(t)
            return prev[0] + (prev[1] - target) / (prev[1] - v) * (t - prev[0])
        prev = (t, v)
    return None


@claim("C6")
def c6_curriculum(ctx: Ctx) -> Record:
    """Easy->hard (operand digits) vs random order over exactly one epoch; val loss on the mixed set."""
    r = Record("C6", "curriculum learning", "+35% convergence speed, -40% data")
    S, B, steps = ctx.pick(64, 128), ctx.pick(4, 8), ctx.pick(8, 60)
    docs, diff = _docs_for_tokens(S * B * steps, ctx.seed)
    val, _ = arithmetic_docs(ctx.pick(16, 32), ctx.seed + 1, (1, 5))
    every = max(steps // 12, 1)
    curves = {}
    for name, cur in (("random", None), ("curriculum", Curriculum(np.asarray(diff, float), CurriculumConfig(enabled=True)))):
        m, curve = build(tiny_config(num_nextn_predict_layers=0), ctx.seed), []

        def evaluate(step, res, m=m, curve=curve):
            if (step + 1) % every == 0:
                curve.append((res.tokens, eval_loss(m, val, S)))

        train(m, iter(packed(docs, S, B, ctx.seed, curriculum=cur)), steps, Arm(), on_step=evaluate)
        curves[name] = curve
    target = curves["random"][-1][1]
    t_rand, t_cur = tokens_to(curves["random"], target), tokens_to(curves["curriculum"], target)
    final = r.add("final_val_loss_rel_curriculum_vs_random", rel(curves["curriculum"][-1][1], target), "fraction")
    speed = r.add("convergence_speedup", t_rand / t_cur - 1 if t_cur else None, "fraction (tokens to random's final loss)")
    if speed is None:
        r.verdict = INCONCLUSIVE if abs(final) <= 0.01 else FAILS
    else:
        r.verdict = judge(speed, 0.35, "higher", noise=0.05)
    r.headline = (f"val loss {final:+.1%} at equal tokens; " +
                  (f"{speed:+.0%} speed to random's final loss" if speed is not None else "never reaches random's final loss"))
    r.why = (f"One epoch of {len(docs)} arithmetic docs (1-5 digit operands, {steps} steps of {B}x{S}), same init and data, "
             f"only the order differs (curriculum: pool grows from the easiest 20% by operand digits). Val loss on a mixed "
             f"held-out set is {final:+.2%} relative at equal tokens. One seed at tiny scale, evaluated every {every} steps "
             f"(crossing interpolated linearly), so differences of a few percent are noise. An easy-first model is "
             f"judged on mixed data it has partly not seen yet, which biases short runs against it.")
    r.details = {"curves": curves, "target": target, "tokens_to_target": {"random": t_rand, "curriculum": t_cur}}
    return r


# ----------------------------------------------------------------------------------------- C11
def corrupt(docs: list[str], frac: float, seed: int) -> tuple[list[str], list[str | None]]:
    """Insert `frac` invalid documents (exact / near duplicates, symbol soup, too short, repeated lines)
    at random places after their source; returns (docs, kind per doc, None = clean)."""
    rng = random.Random(seed)
    out: list[tuple[str, str | None]] = [(d, None) for d in docs]
    n_bad = round(frac * len(docs) / (1 - frac))
    kinds = ["exact_dup", "near_dup", "symbols", "too_short", "repeated_lines"]
    for k in range(n_bad):
        kind, i = kinds[k % len(kinds)], rng.randrange(len(out))
        src = out[i][0]
        if kind == "exact_dup":
            text = src
        elif kind == "near_dup":
            words = src.split(" ")
            for j in rng.sample(range(len(words)), max(1, len(words) // 100)):
                words[j] = "x" + words[j]
            text = " ".join(words)
        elif kind == "symbols":
            text = "".join(rng.choice("#$%^&*(){}[]<>|~`;:!@") for _ in range(400))
        elif kind == "too_short":
            text = "ok."
        else:
            text = "\n".join(["click here to subscribe now"] * 40)
        out.insert(rng.randrange(i + 1, len(out) + 1), (text, kind))  # after its source, as a crawl would
    return [t for t, _ in out], [k for _, k in out]


@claim("C11")
def c11_filter(ctx: Ctx) -> Record:
    """The filter on the built-in corpus (what it removes, by reason), and on the corpus with 15% injected junk."""
    r = Record("C11", "data filtering", "invalid data 15% -> 3%")
    mb = ctx.pick(300_000, 3_000_000)
    clean = list(default_corpus(CorpusConfig(max_bytes=mb, stdlib_max_bytes=mb), seed=ctx.seed))
    docs, kinds = corrupt(clean, 0.15, ctx.seed)
    f = DocumentFilter(seed=ctx.seed)
    reasons = [f.reason(d) for d in docs]
    for d, why in zip(docs, reasons):
        f.report.add(d, why)
    n_clean, n_bad = kinds.count(None), len(kinds) - kinds.count(None)
    kept_bad = sum(1 for k, w in zip(kinds, reasons) if k is not None and w is None)
    kept_all = sum(1 for w in reasons if w is None)
    clean_removed = sum(1 for k, w in zip(kinds, reasons) if k is None and w is not None)
    after = r.add("invalid_fraction_after_filter", kept_bad / max(kept_all, 1), "fraction of kept docs")
    r.add("invalid_fraction_before_filter", n_bad / len(docs), "fraction of docs")
    r.add("builtin_corpus_removed_fraction", clean_removed / max(n_clean, 1), "fraction of clean docs")
    missed = {k: sum(1 for kk, w in zip(kinds, reasons) if kk == k and w is None) for k in set(kinds) - {None}}
    clean_by_reason = {}
    for k, w in zip(kinds, reasons):
        if k is None and w is not None:
            clean_by_reason[w] = clean_by_reason.get(w, 0) + 1
    r.verdict = judge(after, 0.03, "lower", noise=0.005)
    r.headline = f"injected junk {n_bad / len(docs):.0%} -> {after:.1%} after filter; built-in corpus: {clean_removed / max(n_clean, 1):.1%} removed"
    r.why = (f"{n_clean} built-in docs ({mb / 1e6:.1f} MB: stdlib + arithmetic) plus {n_bad} injected invalid docs (exact/near "
             f"duplicates, symbol soup, too short, repeated lines). After the filter {after:.1%} of kept docs are invalid "
             f"(claim: ≤3%); missed by kind: {missed}. The clean built-in corpus itself loses {clean_removed} docs "
             f"({clean_by_reason}). The seed's 15% -> 3% is about its own crawl; this only shows the filter can make such a cut "
             f"on junk of these kinds. Loss effect not measured here.")
    r.details = {"report": f.report.to_dict(), "missed_by_kind": missed, "clean_removed_by_reason": clean_by_reason,
                 "docs": len(docs)}
    for v in r.details["report"]["reasons"].values():
        v.pop("examples", None)
    return r

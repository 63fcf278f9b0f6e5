"""GRPO step time, nanoseek vs TRL's GRPOTrainer, in one process (issue #6 point 13; goal >= 3x).

    OMP_NUM_THREADS=1 python bench/bench_grpo_trl.py --preset tiny --rounds 3   # CPU, ~1.5 min in all
    python bench/bench_grpo_trl.py --preset small                               # GPU (the issue's target)

A step = generation + scoring + update (one optimizer step), timed the same way in both systems:
nanoseek's `GRPOTrainer.train_step()` (its own generate / score / update split), and TRL's
`GRPOTrainer.train()` with a `TrainerCallback` whose on_step_begin / on_step_end bracket each
optimizer step (CUDA synchronised at both ends); TRL's generation is timed by wrapping the model's
`generate`, its scoring by wrapping the reward function, and update = step - both. The first
`--warmup` steps of each system are dropped; `--rounds R` runs the systems R times, alternating, and
the table gives medians over all timed steps (a shared machine is noisy).

Held equal in both systems:
- model: one random-init nanoseek DeepSeek-V3 (MTP off) written with nanoseek's `save_pretrained`;
  TRL loads the same directory with `transformers.DeepseekV3ForCausalLM` (logits are compared);
- tokenizer: nanoseek's byte-level BPE trained on the built-in corpus, `tokenizer.json` beside the
  model (TRL: `PreTrainedTokenizerFast` on that file; prompt ids are compared);
- prompts: the built-in arithmetic task's train stream (seed 0), P per step in the same order,
  rendered with nanoseek's chat prompt; G completions each, temperature 1, no top-k/top-p;
- lengths: every completion is exactly `max_new_tokens` long in both. The end-of-sequence token is
  never sampled: TRL gets `generation_kwargs={"min_new_tokens": T}` (transformers' min-length
  processor sets the EOS logit to -inf), nanoseek gets the same EOS mask in its sampler
  (`nanoseek.model.generate.sample_next` wrapped). Both keep their stop-token checks; the JSON
  records the generated token counts and that no EOS was sampled;
- reward: nanoseek's `accuracy` reward alone (weight 1);
- update: beta 0 (no reference model in either), mu 1 (`num_iterations=1`), one optimizer step per
  generation batch of N = P*G completions, dapo aggregation (TRL's default), group-scaled advantages,
  no truncation masking (TRL's default; every completion is full length), AdamW lr 1e-6,
  betas (0.9, 0.999), no weight decay, grad clip 1.0; the update runs in micro-batches of `--micro`
  rows (TRL: per_device_train_batch_size=micro, gradient_accumulation_steps=N/micro,
  steps_per_generation=N/micro, so it generates once per optimizer step and computes no old
  log-probs, like nanoseek at mu 1);
- no gradient checkpointing (TRL's default is on: it is switched off, else TRL would recompute
  the forward); no vLLM; both compute the per-token entropy metric in the update forward.
- precision: CPU fp32 everywhere. CUDA: nanoseek keeps fp32 master weights with bf16 autocast and
  samples from a bf16 copy (its default); TRL runs twice, `trl` with the same fp32 weights and
  bf16=True (accelerate autocast), and `trl-bf16` with bf16 weights (the faster, usual TRL setup).
  The headline ratio is against the fastest TRL row.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from nanoseek.data.tokenizer import BOS, EOS, PAD, Tokenizer, train_tokenizer
from nanoseek.model import DeepSeekV3, ModelConfig
from nanoseek.model import generate as gen_mod
from nanoseek.model.generate import release_decode_graph
from nanoseek.model.hf import save_pretrained
from nanoseek.r1.grpo import GRPOConfig, GRPOTrainer
from nanoseek.r1.rewards import get_reward
from nanoseek.r1.rollout import encode_prompt, render_prompt
from nanoseek.r1.tasks import train_stream

PRESETS = {
    # CPU: the `tiny` preset (4 layers, d 128, 8 routed experts, ~2M parameters), 4 prompts x G=8,
    # 64 new tokens, micro-batch 16 (2 accumulation steps).
    "tiny": dict(model="tiny", overrides={}, vocab=2048, prompts=4, group=8,
                 max_new_tokens=64, micro=16, steps=4, warmup=1, device="cpu"),
    # GPU: `small` with 16 routed experts (~0.3B parameters), 16 prompts x G=8, 256 new tokens.
    "small": dict(model="small", overrides={"n_routed_experts": 16}, vocab=8192, prompts=16, group=8,
                  max_new_tokens=256, micro=32, steps=3, warmup=1, device="cuda"),
}


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def make_model_dir(a, root: Path) -> Path:
    """Random-init nanoseek model + tokenizer, saved as an HF DeepSeek-V3 directory."""
    from nanoseek.data.corpus import default_corpus

    docs = [d for _, d in zip(range(4000), default_corpus())]
    tok = train_tokenizer(docs, vocab_size=a.vocab)
    cfg = ModelConfig.preset(a.model).replace(vocab_size=tok.vocab_size, num_nextn_predict_layers=0,
                                              bos_token_id=tok.bos_id, eos_token_id=tok.eos_id, **a.overrides)
    torch.manual_seed(0)
    d = root / "model"
    save_pretrained(DeepSeekV3(cfg), d)
    tok.save(d)
    return d


def examples(a) -> list[dict]:
    """The prompts both systems see, in order: nanoseek's ExampleSource draws the same stream."""
    it = train_stream("arithmetic", 1, 0)
    return [next(it) for _ in range(a.prompts * (a.steps + a.warmup))]


def hf_tokenizer(model_dir: Path):
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_file=str(model_dir / "tokenizer.json"), bos_token=BOS,
                                   eos_token=EOS, pad_token=PAD, padding_side="left")


def checks(model_dir: Path, a) -> dict:
    """Same weights (max |logit diff| on one prompt, fp32, CPU) and same prompt ids in both systems."""
    from transformers import AutoModelForCausalLM

    tok = Tokenizer.load(model_dir)
    hft = hf_tokenizer(model_dir)
    texts = [render_prompt(ex) for ex in examples(a)]
    ours_ids = [encode_prompt(tok, t) for t in texts]
    trl_ids = hft(text=texts)["input_ids"]  # what TRL's _tokenize_prompts does for string prompts
    ids = torch.tensor([ours_ids[0]])
    ours = DeepSeekV3.from_pretrained(model_dir, dtype=torch.float32).eval()
    hf = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        diff = (ours(ids).logits.float() - hf(ids).logits.float()).abs().max().item()
    out = {"max_abs_logit_diff": diff, "prompt_ids_equal": ours_ids == trl_ids,
           "prompt_len_mean": sum(map(len, ours_ids)) / len(ours_ids),
           "hf_experts_impl": getattr(hf.config, "_experts_implementation_internal", None)
           or getattr(hf.config, "_experts_implementation", None),
           "hf_attn_impl": getattr(hf.config, "_attn_implementation", None),
           "params": sum(p.numel() for p in ours.parameters())}
    del ours, hf
    return out


@contextlib.contextmanager
def no_eos(eos_id: int):
    """nanoseek's counterpart of min_new_tokens: the EOS logit is -inf in every sampling step."""
    orig = gen_mod.sample_next

    def sample_next(logits, *args, **kw):
        return orig(logits.index_fill(-1, torch.tensor([eos_id], device=logits.device), float("-inf")), *args, **kw)

    gen_mod.sample_next = sample_next
    try:
        yield
    finally:
        gen_mod.sample_next = orig


def bench_nanoseek(model_dir: Path, a) -> dict:
    cfg = GRPOConfig(
        init=str(model_dir), out_dir=tempfile.mkdtemp(),
        task={"name": "arithmetic", "level": 1, "seed": 0, "prompt_format": "chat"},
        rollout={"prompts_per_step": a.prompts, "group_size": a.group, "max_new_tokens": a.max_new_tokens,
                 "temperature": 1.0},
        rewards={"accuracy": 1.0},
        grpo={"beta": 0.0, "mu": 1, "agg": "dapo", "scale": "group", "micro_batch_size": a.micro,
              "mask_truncated": False},
        optim={"lr": 1e-6, "betas": [0.9, 0.999], "weight_decay": 0.0, "schedule": "constant",
               "warmup_steps": 0, "grad_clip": 1.0},
        train={"steps": a.steps + a.warmup, "device": a.device, "seed": 0})
    torch.manual_seed(0)
    tr = GRPOTrainer(cfg)
    steps = []
    with no_eos(tr.tok.eos_id):
        for i in range(a.warmup + a.steps):
            rec = tr.train_step()[0]
            tr.step += 1
            steps.append({"step_s": rec["time/step"], "generate_s": rec["time/generate"],
                          "score_s": rec["time/score"], "update_s": rec["time/update"],
                          "tokens": rec["tokens/generated"], "optimizer_steps": rec["optimizer_steps"],
                          # rows that stopped before max_new_tokens (the stop token itself is trimmed)
                          "eos": round((1 - rec["completions/clipped_ratio"]) * a.prompts * a.group)})
            print(f"  nanoseek step {i}: {rec['time/step']:.3f}s (gen {rec['time/generate']:.3f}, "
                  f"update {rec['time/update']:.3f}), {rec['tokens/generated']} tokens", flush=True)
    release_decode_graph(tr.model)
    if tr._sampler is not None:
        release_decode_graph(tr._sampler)
    del tr
    return {"system": "nanoseek", "per_step": steps[a.warmup:],
            "warmup_steps_s": [s["step_s"] for s in steps[:a.warmup]]}


def bench_trl(model_dir: Path, a, weights_dtype: torch.dtype, name: str) -> dict:
    import trl
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, TrainerCallback

    dev = torch.device(a.device)
    tok = hf_tokenizer(model_dir)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=weights_dtype)
    ds = Dataset.from_list([{"prompt": render_prompt(ex), "answer": ex["answer"]} for ex in examples(a)])
    acc = get_reward("accuracy")
    cur = {"generate": 0.0, "score": 0.0, "tokens": 0, "eos": 0, "gen_dtype": None}

    def accuracy(completions, answer, **_):
        t = time.perf_counter()
        out = acc(completions, answer=answer)
        cur["score"] += time.perf_counter() - t
        return out

    def timed_generate(*args, _fn=model.generate, **kw):
        seen = []
        h = model.lm_head.register_forward_hook(lambda m, i, o: seen.append(o.dtype) if not seen else None)
        sync(dev)
        t = time.perf_counter()
        out = _fn(*args, **kw)
        sync(dev)
        cur["generate"] += time.perf_counter() - t
        h.remove()
        new = out[:, kw["input_ids"].shape[1]:]
        cur["tokens"] += new.numel()
        cur["eos"] += int((new == tok.eos_token_id).sum())
        cur["gen_dtype"] = str(seen[0]) if seen else None
        return out

    model.generate = timed_generate
    steps: list[dict] = []

    class Clock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            sync(dev)
            cur.update(generate=0.0, score=0.0, tokens=0, eos=0, t0=time.perf_counter())

        def on_step_end(self, args, state, control, **kw):
            sync(dev)
            st = {"step_s": time.perf_counter() - cur["t0"], "generate_s": cur["generate"], "score_s": cur["score"],
                  "tokens": cur["tokens"], "eos": cur["eos"], "optimizer_steps": 1}
            st["update_s"] = st["step_s"] - st["generate_s"] - st["score_s"]
            steps.append(st)
            print(f"  {name} step {len(steps) - 1}: {st['step_s']:.3f}s (gen {st['generate_s']:.3f}, "
                  f"update {st['update_s']:.3f}), {st['tokens']} tokens", flush=True)

    n = a.prompts * a.group
    ga = n // a.micro
    cuda = dev.type == "cuda"
    args = dict(output_dir=tempfile.mkdtemp(), per_device_train_batch_size=a.micro, gradient_accumulation_steps=ga,
                steps_per_generation=ga, num_generations=a.group, max_completion_length=a.max_new_tokens,
                generation_kwargs={"min_new_tokens": a.max_new_tokens}, temperature=1.0, top_p=1.0, top_k=0,
                beta=0.0, num_iterations=1, loss_type="dapo", scale_rewards="group", epsilon=0.2,
                mask_truncated_completions=False, learning_rate=1e-6, weight_decay=0.0, adam_beta1=0.9,
                adam_beta2=0.999, max_grad_norm=1.0, lr_scheduler_type="constant", max_steps=a.steps + a.warmup,
                gradient_checkpointing=False, bf16=cuda, fp16=False, use_cpu=not cuda, use_vllm=False,
                shuffle_dataset=False, seed=0, logging_steps=1, report_to="none", save_strategy="no",
                disable_tqdm=True, log_completions=False)
    known = {f.name for f in dataclasses.fields(trl.GRPOConfig)}
    dropped = sorted(k for k in args if k not in known)
    cfg = trl.GRPOConfig(**{k: v for k, v in args.items() if k in known})
    trainer = trl.GRPOTrainer(model=model, reward_funcs=[accuracy], args=cfg, train_dataset=ds,
                              processing_class=tok, callbacks=[Clock()])
    trainer.train()
    logged = [h.get("step_time") for h in trainer.state.log_history if "step_time" in h]
    buf = getattr(trainer, "_buffered_inputs", None) or []  # the last generation batch's micro-batches
    info = {"trl": trl.__version__, "ref_model": trainer.ref_model is not None, "optim": str(cfg.optim),
            "old_logps_computed": any("old_per_token_logps" in b for b in buf),
            "ref_logps_computed": any("ref_per_token_logps" in b for b in buf),
            "gradient_checkpointing": bool(getattr(trainer.model, "is_gradient_checkpointing", False)),
            "generation_config": {k: v for k, v in trainer.generation_kwargs.items() if v is not None},
            "dropped_args": dropped, "generate_compute_dtype": cur["gen_dtype"],
            "trl_logged_step_time": logged}
    del trainer, model
    return {"system": name, "weights": str(weights_dtype).replace("torch.", ""), "info": info,
            "per_step": steps[a.warmup:], "warmup_steps_s": [s["step_s"] for s in steps[:a.warmup]]}


def summarize(runs: list[dict], n: int) -> dict:
    """Medians over every timed step of every round (a shared CPU is noisy; the median ignores stalls)."""
    bad = [r for r in runs if "status" in r]
    if bad:
        return bad[0]
    steps = [s for r in runs for s in r["per_step"]]
    med = lambda k: statistics.median(s[k] for s in steps)  # noqa: E731
    tok = statistics.fmean(s["tokens"] for s in steps)
    out = {"system": runs[0]["system"], "step_s": med("step_s"), "generate_s": med("generate_s"),
           "score_s": med("score_s"), "update_s": med("update_s"),
           "step_s_mean": statistics.fmean(s["step_s"] for s in steps), "step_s_min": min(s["step_s"] for s in steps),
           "gen_tokens_per_step": tok,
           "mean_completion_len": tok / n, "tokens_per_s": tok / med("step_s"),
           "eos_sampled": sum(s["eos"] for s in steps), "optimizer_steps_per_step": med("optimizer_steps"),
           "timed_steps": len(steps), "steps_s": [round(s["step_s"], 4) for s in steps]}
    out.update({k: runs[0][k] for k in ("weights", "info") if k in runs[0]})
    out["rounds"] = runs
    return out


def guard(name: str, fn) -> dict:
    """One system's error (OOM, an API change) becomes its row's status; the others still run."""
    try:
        return fn()
    except Exception as e:  # noqa: BLE001
        import traceback

        traceback.print_exc()
        return {"system": name, "status": f"failed: {type(e).__name__}: {e}"[:400]}
    finally:
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def table(rows: list[dict]) -> str:
    ns = next((r for r in rows if r["system"] == "nanoseek" and "status" not in r), None)
    out = ["| system (medians) | step s | generate s | score s | update s | gen tok/step | gen tok/s | "
           "TRL step / nanoseek step | fastest step s |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "status" in r:
            out.append(f"| {r['system']} | {r['status']} | | | | | | | |")
            continue
        sp = f"{r['step_s'] / ns['step_s']:.2f}×" if ns else "–"
        out.append(f"| {r['system']} | {r['step_s']:.3f} | {r['generate_s']:.3f} | {r['score_s']:.4f} | "
                   f"{r['update_s']:.3f} | {r['gen_tokens_per_step']:,.0f} | {r['tokens_per_s']:,.0f} | {sp} | "
                   f"{r['step_s_min']:.3f} |")
    return "\n".join(out)


def git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent, check=True).stdout.strip() or None
    except Exception:  # noqa: BLE001 (no git on the GPU machine's copy)
        return None


def versions() -> dict:
    import importlib.metadata as md

    out = {}
    for p in ("torch", "transformers", "trl", "accelerate", "datasets"):
        try:
            out[p] = md.version(p)
        except md.PackageNotFoundError:
            pass
    return out


def _slug(dev: str) -> str:
    d = dev.lower()
    for k in ("h100", "h200", "a100", "l40s", "b200"):
        if k in d:
            return k
    return "".join(c if c.isalnum() else "-" for c in d)[:24]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    for k in ("prompts", "group", "max_new_tokens", "micro", "steps", "warmup"):
        ap.add_argument(f"--{k.replace('_', '-')}", type=int, default=None)
    ap.add_argument("--device", default=None, help="cpu | cuda (default: the preset's)")
    ap.add_argument("--trl-variants", default=None,
                    help="comma list of fp32,bf16 (TRL weights dtype; default: fp32 on CPU, fp32,bf16 on CUDA)")
    ap.add_argument("--rounds", type=int, default=1, help="run every system this many times, alternating")
    ap.add_argument("--no-trl", action="store_true")
    ap.add_argument("--out", default=None, help="results JSON (default: bench/results/DATE_DEVICE_bench_grpo_trl.json)")
    a = ap.parse_args(argv)
    for k, v in PRESETS[a.preset].items():
        if getattr(a, k, None) is None:
            setattr(a, k, v)
    if a.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: use --preset tiny (CPU)")
        return 1
    n = a.prompts * a.group
    if n % a.micro:
        raise SystemExit(f"--micro {a.micro} must divide prompts*group = {n}")
    if a.device == "cpu":
        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    variants = (a.trl_variants or ("fp32,bf16" if a.device == "cuda" else "fp32")).split(",")
    dev_name = torch.cuda.get_device_name() if a.device == "cuda" else "cpu"
    print(f"GRPO step: {a.prompts} prompts x G={a.group}, {a.max_new_tokens} new tokens (forced), micro-batch "
          f"{a.micro}, {a.warmup} warmup + {a.steps} timed steps x {a.rounds} rounds, {dev_name}", flush=True)

    model_dir = make_model_dir(a, Path(tempfile.mkdtemp(prefix="bench-grpo-trl-")))
    chk = checks(model_dir, a)
    print(f"checks: {chk}", flush=True)

    systems = [("nanoseek", lambda: bench_nanoseek(model_dir, a))]
    status = []
    if a.no_trl:
        status.append({"system": "trl", "status": "skipped (--no-trl)"})
    else:
        try:
            import trl  # noqa: F401
        except ImportError as e:
            status.append({"system": "trl", "status": f"not installed ({e.name})"})
            variants = []
        for v in variants:
            name = "trl" if v == "fp32" else f"trl-{v}"
            dt = {"fp32": torch.float32, "bf16": torch.bfloat16}[v]
            systems.append((name, lambda dt=dt, name=name: bench_trl(model_dir, a, dt, name)))
    runs: dict[str, list] = {name: [] for name, _ in systems}
    for r in range(a.rounds):  # alternate the systems, so drift on a shared machine hits all of them
        for name, fn in systems:
            print(f"round {r + 1}/{a.rounds}: {name}", flush=True)
            runs[name].append(guard(name, fn))
    rows = [summarize(runs[name], n) for name, _ in systems] + status

    ok = [r for r in rows if "status" not in r]
    ns = next((r for r in ok if r["system"] == "nanoseek"), None)
    trls = [r for r in ok if r["system"].startswith("trl")]
    best = min(trls, key=lambda r: r["step_s"]) if trls else None
    ratio = best["step_s"] / ns["step_s"] if ns and best else None
    ratio_min = min(r["step_s_min"] for r in trls) / ns["step_s_min"] if ns and best else None
    print(table(rows))
    if ratio:
        print(f"nanoseek vs fastest TRL ({best['system']}): {ratio:.2f}x median step time, {ratio_min:.2f}x "
              f"fastest step (goal >= 3x)")
    res = {"bench": "bench_grpo_trl", "device": dev_name, "commit": git_commit(), "versions": versions(),
           "time": time.strftime("%Y-%m-%d %H:%M"), "threads": torch.get_num_threads(),
           "settings": dict(vars(a)), "checks": chk, "rows": rows,
           "speedup_vs_fastest_trl": ratio, "speedup_vs_fastest_trl_min_step": ratio_min,
           "fastest_trl": best["system"] if best else None}
    out = Path(a.out) if a.out else (Path(__file__).parent / "results" /
                                     f"{time.strftime('%Y-%m-%d')}_{_slug(dev_name)}_bench_grpo_trl.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2))
    print(f"-> {out}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())

"""GRPO step time, nanoseek vs TRL's GRPOTrainer, and GRPO vs PPO memory (claim C3).

    python bench/bench_grpo.py --preset small --out runs/bench_grpo.json      # GPU
    python bench/bench_grpo.py --tiny                                          # CPU smoke test
    python bench/bench_grpo.py --model runs/r1/2_reasoning_rl                   # a trained model

Same weights, prompts, G, completion length, temperature 1, beta 0, mu 1, one optimizer step per
generation batch in both systems. A step = generation + scoring + update; nanoseek times each
part itself, TRL's parts come from wrapping its model's `generate` and the reward function (update =
step - both). TRL runs with HF generate (no vLLM). When `trl` is not installed its row says so.
A random model rarely samples EOS, so both generate the full length: a like-for-like comparison.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

from nanoseek.data.tokenizer import train_tokenizer
from nanoseek.model import DeepSeekV3, ModelConfig
from nanoseek.model.generate import release_decode_graph
from nanoseek.model.hf import save_pretrained
from nanoseek.r1.grpo import GRPOConfig, GRPOTrainer
from nanoseek.r1.ppo import compare_grpo_ppo_memory
from nanoseek.r1.rewards import get_reward
from nanoseek.r1.rollout import render_prompt
from nanoseek.r1.tasks import train_set


def make_model_dir(preset: str, overrides: dict, vocab: int, root: Path) -> Path:
    """A random-init model of `preset` + a tokenizer trained on the built-in corpus, saved as a
    model directory (what both systems load)."""
    from nanoseek.data.corpus import default_corpus

    docs = [d for _, d in zip(range(4000), default_corpus())]
    tok = train_tokenizer(docs, vocab_size=vocab)
    cfg = ModelConfig.preset(preset).replace(vocab_size=tok.vocab_size, num_nextn_predict_layers=0, **overrides)
    torch.manual_seed(0)
    d = root / "model"
    save_pretrained(DeepSeekV3(cfg), d)
    tok.save(d)
    return d


def grpo_cfg(model_dir: Path, a, out: Path) -> GRPOConfig:
    return GRPOConfig(init=str(model_dir), out_dir=str(out),
                      rollout={"prompts_per_step": a.prompts, "group_size": a.group, "max_new_tokens": a.max_new_tokens},
                      rewards={"accuracy": 1.0}, grpo={"beta": 0.0, "agg": "dapo", "micro_batch_size": a.micro,
                                                                "mask_truncated": False},  # TRL default
                      optim={"lr": 1e-6}, train={"steps": a.steps + a.warmup, "device": a.device})


def bench_nanoseek(model_dir: Path, a) -> dict:
    tr = GRPOTrainer(grpo_cfg(model_dir, a, Path(tempfile.mkdtemp())))
    recs = []
    for i in range(a.warmup + a.steps):
        rec = tr.train_step()[0]
        tr.step += 1
        if i >= a.warmup:
            recs.append(rec)
    release_decode_graph(tr.model)
    del tr
    mean = lambda k: sum(r[k] for r in recs) / len(recs)  # noqa: E731
    return {"system": "nanoseek", "step_s": mean("time/step"), "generate_s": mean("time/generate"),
            "score_s": mean("time/score"), "update_s": mean("time/update"),
            "mean_completion_len": mean("completions/mean_length"),
            "tokens_per_s": mean("tokens/generated") / mean("time/step")}


def bench_trl(model_dir: Path, a) -> dict:
    """TRL GRPOTrainer on the same weights; parts timed by wrapping generate and the reward."""
    try:
        import trl
        from datasets import Dataset
        from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast, TrainerCallback
    except ImportError as e:
        return {"system": "trl", "status": f"not installed ({e.name})"}
    from nanoseek.data.tokenizer import BOS, EOS, PAD

    dev = torch.device(a.device if a.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    tok = PreTrainedTokenizerFast(tokenizer_file=str(model_dir / "tokenizer.json"), bos_token=BOS, eos_token=EOS,
                                  pad_token=PAD, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).to(dev)
    exs = train_set("arithmetic", a.prompts * (a.steps + a.warmup), 1, seed=0)
    ds = Dataset.from_list([{"prompt": render_prompt(ex), "answer": ex["answer"]} for ex in exs])
    acc = get_reward("accuracy")
    times = {"generate": 0.0, "score": 0.0}

    def accuracy(completions, answer, **_):
        t = time.perf_counter()
        out = acc(completions, answer=answer)
        times["score"] += time.perf_counter() - t
        return out

    for name in ("generate", "generate_batch"):
        fn = getattr(model, name, None)
        if fn is not None:
            def timed(*args, __fn=fn, **kw):
                if dev.type == "cuda":
                    torch.cuda.synchronize()
                t = time.perf_counter()
                out = __fn(*args, **kw)
                if dev.type == "cuda":
                    torch.cuda.synchronize()
                times["generate"] += time.perf_counter() - t
                return out
            setattr(model, name, timed)
    steps: list[dict] = []

    class Clock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            times.update(generate=0.0, score=0.0, t0=time.perf_counter())

        def on_step_end(self, args, state, control, **kw):
            if dev.type == "cuda":
                torch.cuda.synchronize()
            steps.append({"step_s": time.perf_counter() - times["t0"], "generate_s": times["generate"],
                          "score_s": times["score"]})

    want = dict(output_dir=tempfile.mkdtemp(), per_device_train_batch_size=a.prompts * a.group,
                num_generations=a.group, max_completion_length=a.max_new_tokens, temperature=1.0, beta=0.0,
                loss_type="dapo", num_iterations=1, steps_per_generation=1, gradient_accumulation_steps=1,
                learning_rate=1e-6, max_steps=a.steps + a.warmup, logging_steps=1, report_to="none",
                save_strategy="no", bf16=dev.type == "cuda", use_vllm=False, use_cpu=dev.type == "cpu",
                shuffle_dataset=False, seed=0)
    import dataclasses

    known = {f.name for f in dataclasses.fields(trl.GRPOConfig)}
    cfg = trl.GRPOConfig(**{k: v for k, v in want.items() if k in known})
    try:
        trainer = trl.GRPOTrainer(model=model, reward_funcs=[accuracy], args=cfg, train_dataset=ds,
                                  processing_class=tok, callbacks=[Clock()])
        trainer.train()
    except Exception as e:  # a TRL API change must not hide the nanoseek numbers
        return {"system": f"trl {trl.__version__}", "status": f"failed: {type(e).__name__}: {e}"[:300]}
    m = steps[a.warmup:] or steps
    mean = lambda k: sum(s[k] for s in m) / len(m)  # noqa: E731
    step = mean("step_s")
    return {"system": f"trl {trl.__version__}", "step_s": step, "generate_s": mean("generate_s"),
            "score_s": mean("score_s"), "update_s": step - mean("generate_s") - mean("score_s"),
            "mean_completion_len": None, "tokens_per_s": None}


def guard(name: str, fn):
    """Run one part; an error (e.g. OOM) becomes that row's status instead of losing the others."""
    try:
        return fn()
    except Exception as e:  # noqa: BLE001
        return {"system": name, "status": f"failed: {type(e).__name__}: {e}"[:300]}
    finally:
        import gc

        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def table(rows: list[dict], c3: dict | None) -> str:
    out = ["| system | step s | generate s | score s | update s | gen tok/s |", "|---|---|---|---|---|---|"]
    for r in rows:
        if "status" in r:
            out.append(f"| {r['system']} | {r['status']} | | | | |")
            continue
        tps = f"{r['tokens_per_s']:,.0f}" if r.get("tokens_per_s") else "–"
        out.append(f"| {r['system']} | {r['step_s']:.3f} | {r['generate_s']:.3f} | {r['score_s']:.4f} | "
                   f"{r['update_s']:.3f} | {tps} |")
    if c3:
        out += ["", "| C3 | step s | model-state MB | peak MB | models held |", "|---|---|---|---|---|"]
        for k in ("grpo", "ppo"):
            r = c3[k]
            peak = f"{r['peak_bytes'] / 2**20:,.0f}" if r["peak_bytes"] else "n/a (CPU)"
            out.append(f"| {k} | {r['step_s']:.3f} | {r['state_bytes'] / 2**20:,.1f} | {peak} | {r['models_held']} |")
        ratio = c3.get("peak_ratio_grpo_over_ppo", c3["state_ratio_grpo_over_ppo"])
        out.append(f"\nGRPO/PPO memory: {ratio:.2f} (claim C3: ~0.33); step time {c3['step_ratio_grpo_over_ppo']:.2f}")
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="run/model directory (default: random init of --preset)")
    ap.add_argument("--preset", default="small")
    ap.add_argument("--model-overrides", default='{"n_routed_experts": 16}', type=json.loads,
                    help="JSON overrides of the preset (default: small with 16 experts, ~0.3B params, so fp32 "
                         "AdamW for policy + PPO critic fit one 80 GB GPU)")
    ap.add_argument("--tiny", action="store_true", help="CPU smoke test: tiny model, tiny batch")
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=256)
    ap.add_argument("--micro", type=int, default=32, help="nanoseek rows per forward in the update")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--no-trl", action="store_true")
    ap.add_argument("--no-c3", action="store_true")
    ap.add_argument("--out", default=None, help="results JSON")
    a = ap.parse_args(argv)
    if a.tiny:
        a.preset, a.prompts, a.group, a.max_new_tokens, a.steps, a.device = "tiny", 2, 4, 16, 2, "cpu"
        torch.set_num_threads(1)
    root = Path(tempfile.mkdtemp(prefix="bench-grpo-"))
    overrides = {"num_hidden_layers": 2, "hidden_size": 64} if a.tiny else a.model_overrides
    model_dir = Path(a.model) if a.model else make_model_dir(a.preset, overrides, 1024 if a.tiny else 8192, root)
    if (model_dir / "model" / "config.json").exists():
        model_dir = model_dir / "model"
    rows = [guard("nanoseek", lambda: bench_nanoseek(model_dir, a))]
    rows.append({"system": "trl", "status": "skipped (--no-trl)"} if a.no_trl else guard("trl", lambda: bench_trl(model_dir, a)))
    c3 = None if a.no_c3 else guard("c3", lambda: compare_grpo_ppo_memory(
        model_dir, prompts=a.prompts, group_size=a.group, max_new_tokens=a.max_new_tokens, beta=0.04,
        micro_batch_size=a.micro, device=a.device))
    if c3 and "status" in c3:
        print(f"C3: {c3['status']}")
        c3 = None
    dev = torch.cuda.get_device_name() if torch.cuda.is_available() and a.device != "cpu" else "cpu"
    print(f"GRPO step, {a.prompts} prompts × G={a.group}, ≤{a.max_new_tokens} new tokens, {dev}")
    print(table(rows, c3))
    res = {"device": dev, "settings": {k: v for k, v in vars(a).items()}, "model_dir": str(model_dir),
           "rows": rows, "c3": c3, "torch": torch.__version__, "time": time.strftime("%Y-%m-%d %H:%M")}
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(res, indent=2))
        print(f"-> {a.out}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())

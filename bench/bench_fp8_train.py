"""End-to-end training step, FP8 vs BF16, on the trainer's real step (issue #4, point 7).

    python bench/bench_fp8_train.py [--preset gemm] [--steps 30] [--batch 4] [--seq 2048] --out runs/fp8_train.json
    OMP_NUM_THREADS=1 python bench/bench_fp8_train.py --preset tiny   # CPU smoke: 3 steps of 2 x 128, ~5 s

For each precision in `--precisions` (default bf16,fp8) the same thing happens, in one process:
seed, build `DeepSeekV3` on the device (same init), and for fp8 `convert_to_fp8(model)` exactly as
`train/pretrain.py::run_pretrain` does for `train.precision=fp8`; then `Trainer.train_step()` with
`TrainConfig(precision=...)` (bf16 autocast for both, FP8 GEMMs in the converted Linears; fp32
master weights, AdamW, MTP + balance losses, router-bias update, chunked CE) for `--steps` steps on
the same packed batches (`PackedDataset`, same seed, so both runs see identical tokens).

Reported per run: step times (median over the steps after `--warmup`), tokens/s, the loss curves
(total and LM), peak memory (`torch.cuda.max_memory_allocated`), the converted Linears. Across runs:
speedup = median bf16 step / median fp8 step, relative loss difference |fp8 - bf16| / bf16 at the
last step and averaged over the last `--last-k` steps (issue goals: speedup >= 1.3x, < 0.25%).
Listing a precision twice (`--precisions bf16,fp8,bf16`) gives a bf16-vs-bf16 noise floor.

Presets: any model preset name, plus the bench aliases below; `--dense`, `--hidden`,
`--intermediate`, `--layers`, `--heads`, `--q-lora`, `--vocab` override on top.
* `gemm` (default): `small` with a dense FFN in every layer (no routed experts: nanoseek's FP8
  covers nn.Linear, not the grouped expert GEMMs), hidden 4096, FFN 16384, q_lora 1536, 32 heads,
  4 layers + 1 MTP layer: every FP8 GEMM has K, N multiples of 128 and >= 1536.
* model presets (`tiny`, `small`, ...) as they are.

Data (`--data`): `stdlib` (default) = byte-level tokens (byte + 3, [bos] ... [eos] per file) of the
interpreter's standard-library sources: real, learnable text, so the loss falls and the comparison
is over a training curve, not a flat ln(V). `random` = bench_pretrain.py's uniform tokens with
lognormal document lengths (the loss cannot fall below ln V; timing only).

On CPU FP8 is emulated (dequantize + fp32 matmul) and timings say nothing about GPU speed: it
runs as a smoke test of the whole path and prints so. Models whose hidden size is < 512 (tiny)
would get no FP8 Linear with run_pretrain's default filter (min 512 features); the bench then
uses min_features=128 and records it (override with `--min-features`).
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from nanoseek.data.packing import PackedDataset
from nanoseek.model import DeepSeekV3, ModelConfig
from nanoseek.train.config import OptimConfig, TrainConfig
from nanoseek.train.trainer import Trainer

ALIASES = {
    # name: (model preset, overrides)
    "gemm": ("small", dict(n_routed_experts=0, hidden_size=4096, intermediate_size=16384, num_hidden_layers=4,
                           num_attention_heads=32, q_lora_rank=1536, kv_lora_rank=512)),
}
GOAL_SPEEDUP, GOAL_REL_LOSS = 1.3, 0.0025


def build_config(a) -> tuple[ModelConfig, str, dict]:
    base, over = ALIASES.get(a.preset, (a.preset, {}))
    over = dict(over)
    if a.dense:
        over["n_routed_experts"] = 0
    for arg, key in (("hidden", "hidden_size"), ("intermediate", "intermediate_size"), ("layers", "num_hidden_layers"),
                     ("heads", "num_attention_heads"), ("q_lora", "q_lora_rank"), ("vocab", "vocab_size")):
        if getattr(a, arg) is not None:
            over[key] = getattr(a, arg)
    cfg = ModelConfig.preset(base)
    if over.get("num_hidden_layers") is not None:
        over["first_k_dense_replace"] = min(cfg.first_k_dense_replace, over["num_hidden_layers"])
    return (cfg.replace(**over) if over else cfg), base, over


def stdlib_docs(n_tokens: int) -> list[np.ndarray]:
    """Byte-level documents of the stdlib sources: [0] + (bytes + 3) + [1]; about n_tokens in all."""
    from nanoseek.data.corpus import stdlib_files

    docs = []
    for p in stdlib_files(max_bytes=max(n_tokens, 1 << 16)):
        b = p.read_bytes()
        if b.strip():
            docs.append(np.concatenate([[0], np.frombuffer(b, dtype=np.uint8).astype(np.int64) + 3, [1]]))
    return docs


def random_docs(n: int, vocab: int, median: int, seed: int = 0) -> list[np.ndarray]:
    """bench_pretrain.docs_mix: lognormal document lengths, uniform tokens."""
    rng = np.random.default_rng(seed)
    lens = np.clip(rng.lognormal(np.log(median), 1.0, n).astype(int), 8, 16 * median)
    return [rng.integers(3, vocab, size=L, dtype=np.int64) for L in lens]


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize()


def run_one(precision: str, cfg: ModelConfig, docs, a, dev: torch.device, min_features: int) -> dict:
    from nanoseek.fp8 import convert_to_fp8, default_filter

    gc.collect()
    if dev.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    torch.manual_seed(a.seed)
    with torch.device(dev):
        model = DeepSeekV3(cfg)
    model.use_flex = not a.no_flex
    converted = []
    if precision == "fp8":  # what run_pretrain does for train.precision=fp8
        converted = convert_to_fp8(model, functools.partial(default_filter, min_features=min_features))
    checksum = float(sum(p.detach().sum(dtype=torch.float64) for p in model.parameters()))  # no fp64 copies
    loader = PackedDataset(docs, a.seq, a.batch, seed=a.seed)
    tcfg = TrainConfig(steps=a.steps, batch_size=a.batch, device=dev.type, precision=precision, progress=False,
                       ckpt_every=10**9, eval_every=10**9, ce_chunk=a.ce_chunk, seed=a.seed)
    ocfg = OptimConfig(lr=a.lr, warmup_steps=a.lr_warmup, schedule="constant")
    with tempfile.TemporaryDirectory() as tmp:
        tr = Trainer(model, ocfg, tcfg, Path(tmp), loader)
        times, loss, lm, toks = [], [], [], 0
        for i in range(a.steps):
            sync(dev)
            t = time.perf_counter()
            r = tr.train_step()  # ends with a host sync (float() of the step's stats)
            sync(dev)
            times.append(time.perf_counter() - t)
            tr.step += 1
            loss.append(r["loss"])
            lm.append(r["lm"])
            toks = r["tokens"]
            if a.verbose:
                print(f"  {precision} step {i + 1}/{a.steps}: loss {r['loss']:.4f} lm {r['lm']:.4f} {times[-1] * 1e3:.1f} ms",
                      flush=True)
    timed = times[a.warmup:] or times
    med = statistics.median(timed)
    out = {"precision": precision, "n_fp8_linears": len(converted), "fp8_linears": converted,
           "init_checksum": checksum, "step_s": times, "median_step_s": med, "tokens_per_step": toks,
           "tokens_per_s": toks / med, "loss": loss, "lm_loss": lm,
           "peak_mem_gb": torch.cuda.max_memory_allocated() / 1e9 if dev.type == "cuda" else None}
    del tr, model, loader
    gc.collect()
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    return out


def rel_diff(x: list[float], ref: list[float], k: int) -> dict:
    k = max(1, min(k, len(ref)))
    return {"final": abs(x[-1] - ref[-1]) / abs(ref[-1]),
            f"mean_last_{k}": abs(sum(x[-k:]) - sum(ref[-k:])) / abs(sum(ref[-k:])),
            "max_abs_per_step": max(abs(u - v) for u, v in zip(x, ref))}


def git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              timeout=10).stdout.strip() or None
    except Exception:
        return None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="gemm", help="a model preset or a bench alias (gemm)")
    ap.add_argument("--dense", action="store_true", help="no routed experts: every layer has the dense FFN")
    ap.add_argument("--hidden", type=int, default=None)
    ap.add_argument("--intermediate", type=int, default=None, help="dense FFN width")
    ap.add_argument("--layers", type=int, default=None)
    ap.add_argument("--heads", type=int, default=None)
    ap.add_argument("--q-lora", type=int, default=None)
    ap.add_argument("--vocab", type=int, default=None)
    ap.add_argument("--steps", type=int, default=None, help="default 30 on CUDA, 3 on CPU")
    ap.add_argument("--warmup", type=int, default=3, help="steps excluded from the timing median")
    ap.add_argument("--batch", type=int, default=None, help="default 4 on CUDA, 2 on CPU")
    ap.add_argument("--seq", type=int, default=None, help="default 2048 on CUDA, 128 on CPU")
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--lr-warmup", type=int, default=5, help="linear lr warmup steps (then constant)")
    ap.add_argument("--ce-chunk", type=int, default=4096)
    ap.add_argument("--last-k", type=int, default=5, help="loss difference averaged over the last k steps")
    ap.add_argument("--precisions", default="bf16,fp8", help="comma list; the first bf16 run is the reference")
    ap.add_argument("--data", choices=("stdlib", "random"), default="stdlib")
    ap.add_argument("--min-features", type=int, default=None, help="FP8 filter (run_pretrain: 512)")
    ap.add_argument("--fp8-backend", choices=("auto", "native", "emulate"), default=None,
                    help="default: native on CUDA (fail rather than time an emulation), emulate on CPU")
    ap.add_argument("--fused", action="store_true", help="turn on the fused Triton RMSNorm/SwiGLU kernels")
    ap.add_argument("--no-flex", action="store_true", help="dense-mask SDPA instead of FlexAttention")
    ap.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--verbose", action="store_true", help="print every step")
    ap.add_argument("--out", default=None, help="JSON output path")
    a = ap.parse_args(argv)

    dev = torch.device("cuda" if (a.device == "auto" and torch.cuda.is_available()) else
                       ("cpu" if a.device == "auto" else a.device))
    cuda = dev.type == "cuda"
    a.steps = a.steps or (30 if cuda else 3)
    a.batch = a.batch or (4 if cuda else 2)
    a.seq = a.seq or (2048 if cuda else 128)
    cfg, base, over = build_config(a)
    if not cuda and a.preset in ALIASES:
        raise SystemExit(f"--preset {a.preset} is a GPU-sized model; on CPU use --preset tiny (a smoke test)")
    min_features = a.min_features or (512 if cfg.hidden_size >= 512 else 128)
    from nanoseek.fp8 import set_fp8_backend

    backend = a.fp8_backend or ("native" if dev.type == "cuda" else "emulate")
    set_fp8_backend(backend)
    if a.fused:
        from nanoseek.kernels import set_fused

        set_fused(True)
    timings_meaningful = dev.type == "cuda" and backend != "emulate"
    if not timings_meaningful:
        print(f"note: device {dev.type}, FP8 backend {backend}: FP8 is emulated (dequantize + fp32 matmul); "
              "this is a smoke test of the path, the timings and speedup mean nothing.", flush=True)
    n_tok = a.steps * a.batch * a.seq
    docs = stdlib_docs(2 * n_tok) if a.data == "stdlib" else []
    if not docs:
        if a.data == "stdlib":
            print("note: no stdlib sources found; using random tokens (the loss cannot fall below ln V)", flush=True)
            a.data = "random"
        docs = random_docs(max(64, n_tok // 300), cfg.vocab_size, 600, a.seed)
    if a.data == "stdlib" and cfg.vocab_size < 259:
        raise SystemExit(f"--data stdlib needs vocab_size >= 259 (byte tokens), model has {cfg.vocab_size}")
    res = {"bench": "fp8_train", "commit": git_commit(), "device": torch.cuda.get_device_name() if dev.type == "cuda" else "cpu",
           "torch": torch.__version__, "preset": a.preset, "base_preset": base, "overrides": over,
           "model": {k: getattr(cfg, k) for k in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                                                   "q_lora_rank", "kv_lora_rank", "n_routed_experts", "moe_intermediate_size",
                                                   "vocab_size", "num_nextn_predict_layers")},
           "batch": a.batch, "seq": a.seq, "steps": a.steps, "warmup": a.warmup, "lr": a.lr, "lr_warmup": a.lr_warmup,
           "data": a.data, "n_docs": len(docs), "fp8_backend": backend, "min_features": min_features, "fused": a.fused,
           "flex": not a.no_flex, "timings_meaningful": timings_meaningful, "runs": {}, "errors": {}}
    print(f"model {a.preset} ({base} + {over}); batch {a.batch} x seq {a.seq}; {a.steps} steps; data {a.data}; "
          f"device {res['device']}", flush=True)

    def dump():  # after every run too, so a run cut short by a timeout still leaves its results
        if a.out:
            Path(a.out).parent.mkdir(parents=True, exist_ok=True)
            with open(a.out, "w") as f:
                json.dump(res, f, indent=1)

    names = []
    for p in a.precisions.split(","):
        p = p.strip()
        if p not in ("bf16", "fp8", "fp32"):
            raise SystemExit(f"--precisions: {p!r} is not one of bf16, fp8, fp32")
        name = p if p not in names else f"{p}#{sum(n.split('#')[0] == p for n in names) + 1}"
        names.append(name)
        try:
            r = run_one(p, cfg, docs, a, dev, min_features)
        except Exception as e:  # e.g. OOM or a native FP8 GEMM that is not available: keep the others
            res["errors"][name] = f"{type(e).__name__}: {str(e)[:400]}"
            print(f"{name}: error {res['errors'][name]}", flush=True)
            gc.collect()
            if dev.type == "cuda":
                torch.cuda.empty_cache()
            dump()
            continue
        res["runs"][name] = r
        dump()
        mem = f"{r['peak_mem_gb']:.2f} GB" if r["peak_mem_gb"] is not None else "n/a"
        print(f"{name}: {r['n_fp8_linears']} FP8 Linears; median step {r['median_step_s'] * 1e3:.1f} ms, "
              f"{r['tokens_per_s']:,.0f} tok/s, peak {mem}; loss {r['loss'][0]:.4f} -> {r['loss'][-1]:.4f}", flush=True)

    runs = res["runs"]
    ref = next((n for n in names if n.split("#")[0] == "bf16" and n in runs), None)
    cmp = {}
    if ref:
        for n, r in runs.items():
            if n == ref:
                continue
            if r["init_checksum"] != runs[ref]["init_checksum"]:
                print(f"warning: {n} started from different weights than {ref}", flush=True)
            cmp[n] = {"vs": ref, "speedup": runs[ref]["median_step_s"] / r["median_step_s"],
                      "rel_loss_diff": rel_diff(r["loss"], runs[ref]["loss"], a.last_k),
                      "rel_lm_loss_diff": rel_diff(r["lm_loss"], runs[ref]["lm_loss"], a.last_k),
                      "same_init": r["init_checksum"] == runs[ref]["init_checksum"]}
            if n.split("#")[0] == "fp8":
                c = cmp[n]
                c["goal_speedup_met"] = c["speedup"] >= GOAL_SPEEDUP if timings_meaningful else None
                c["goal_loss_met"] = c["rel_loss_diff"][f"mean_last_{max(1, min(a.last_k, a.steps))}"] < GOAL_REL_LOSS
    res["compare"] = cmp

    print("\n| run | FP8 Linears | median step ms | tokens/s | peak GB | final loss | final LM loss |")
    print("|---|---|---|---|---|---|---|")
    for n, r in runs.items():
        mem = f"{r['peak_mem_gb']:.2f}" if r["peak_mem_gb"] is not None else "n/a"
        print(f"| {n} | {r['n_fp8_linears']} | {r['median_step_s'] * 1e3:.1f} | {r['tokens_per_s']:,.0f} | {mem} | "
              f"{r['loss'][-1]:.4f} | {r['lm_loss'][-1]:.4f} |")
    for n, c in cmp.items():
        k = [x for x in c["rel_loss_diff"] if x.startswith("mean_last")][0]
        print(f"{n} vs {c['vs']}: speedup {c['speedup']:.3f}x{'' if timings_meaningful else ' (meaningless here)'}; "
              f"rel loss diff final {100 * c['rel_loss_diff']['final']:.3f}%, {k} {100 * c['rel_loss_diff'][k]:.3f}% "
              f"(LM: {100 * c['rel_lm_loss_diff']['final']:.3f}%, {100 * c['rel_lm_loss_diff'][k]:.3f}%)")
    dump()
    return 1 if res["errors"] and not runs else 0


if __name__ == "__main__":
    sys.exit(main())

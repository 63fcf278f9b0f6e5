"""Pretraining step throughput and MFU on one GPU (issue: pretraining benchmark).

    python bench/bench_pretrain.py --preset small --out runs/bench_pretrain.json [--profile]

Rows: nanoseek's real training step (fp32 master weights, bf16 autocast, AdamW, MTP + balance
losses, router-bias update) on packed batches, with each attention/compile variant; the same
step without document masks; transformers' DeepseekV3ForCausalLM (grouped_mm experts) on the
same config and weights; packed vs pad-to-longest batches on a realistic document-length mix
(useful tokens/s). MFU = tokens/s × training FLOPs/token ÷ peak bf16 FLOP/s.

Variants (--variants, comma list): sdpa_dense (dense document mask + SDPA), flex (FlexAttention
document mask), flex_fused (flex + the fused Triton RMSNorm/SwiGLU kernels of nanoseek.kernels,
which are off by default), flex_compiled (per-layer torch.compile), nomask (no document mask).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from nanoseek.data.packing import PackedDataset, PaddedBatcher
from nanoseek.kernels import fused_enabled, set_fused
from nanoseek.model import DeepSeekV3, ModelConfig
from nanoseek.train.config import OptimConfig, TrainConfig
from nanoseek.train.trainer import Trainer


def docs_mix(n: int, vocab: int, median: int, seed: int = 0) -> list[np.ndarray]:
    """Lognormal document lengths (median `median`, long tail), as web/code corpora have."""
    rng = np.random.default_rng(seed)
    lens = np.clip(rng.lognormal(np.log(median), 1.0, n).astype(int), 8, 16 * median)
    return [rng.integers(3, vocab, size=L, dtype=np.int64) for L in lens]


def flops_per_token(cfg: ModelConfig, seq: int) -> float:
    from nanoseek.cost import flops_per_token as fpt

    return fpt(cfg, seq, mtp=cfg.num_nextn_predict_layers > 0).total


def peak() -> float | None:
    from nanoseek.cost import current, peak_flops

    return peak_flops(current(), "bf16")


def time_trainer(model, loader, steps: int, warmup: int, compile_: bool = False, tmp="/tmp/bench_run") -> dict:
    tcfg = TrainConfig(steps=steps + warmup, batch_size=loader.B, device="cuda", progress=False, ckpt_every=10**9,
                       eval_every=10**9, ce_chunk=4096, compile=False)
    tr = Trainer(model, OptimConfig(lr=1e-4, warmup_steps=0), tcfg, tmp, loader)
    if compile_:
        for layer in model.model.layers:
            layer.compile()
    for _ in range(warmup):
        tr.train_step()
    torch.cuda.synchronize()
    t = time.perf_counter()
    toks = useful = 0
    for _ in range(steps):
        r = tr.train_step()
        toks += r["tokens"]
    torch.cuda.synchronize()
    dt = time.perf_counter() - t
    return {"tokens_per_s": toks / dt, "step_s": dt / steps, "useful_fraction": loader.useful_fraction,
            "peak_mem_gb": torch.cuda.max_memory_allocated() / 1e9}


def hf_step(model: DeepSeekV3, batch: int, seq: int, steps: int) -> dict:
    sys_path = __import__("sys").path
    sys_path.insert(0, "bench")
    from bench_model import hf_twin, timeit, train_step_fn

    hf = hf_twin(model, "grouped_mm").float()
    ids = torch.randint(0, model.config.vocab_size, (batch, seq), device="cuda")
    step = train_step_fn(hf, ids, ids, True)

    def run():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            step()

    dt = timeit(run, 2, steps)
    del hf
    torch.cuda.empty_cache()
    return {"tokens_per_s": batch * seq / dt, "step_s": dt}


def profile_step(model, loader, out_path: str) -> list[dict]:
    from torch.profiler import ProfilerActivity, profile

    tcfg = TrainConfig(steps=10, batch_size=loader.B, device="cuda", progress=False, ce_chunk=4096)
    tr = Trainer(model, OptimConfig(lr=1e-4, warmup_steps=0), tcfg, "/tmp/bench_prof", loader)
    for _ in range(2):
        tr.train_step()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(3):
            tr.train_step()
        torch.cuda.synchronize()
    rows = []
    total = sum(e.device_time_total for e in prof.key_averages())
    for e in sorted(prof.key_averages(), key=lambda e: -e.device_time_total)[:25]:
        rows.append({"op": e.key[:80], "cuda_ms_per_step": e.device_time_total / 1e3 / 3, "pct": 100 * e.device_time_total / total})
    prof.export_chrome_trace(out_path)
    return rows


def set_fused_for(variant: str) -> bool:
    """Fused Triton RMSNorm/SwiGLU on for variants named "*_fused"; other variants keep the library
    setting (off unless NANOSEEK_FUSED=1). Returns the previous setting, for restoring it."""
    prev = fused_enabled()
    if "fused" in variant.split("_"):
        set_fused(True)
    return prev


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="small")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--variants", default="sdpa_dense,flex,flex_compiled,nomask")
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--hf", action="store_true")
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    cfg = ModelConfig.preset(a.preset)
    fpt, pk = flops_per_token(cfg, a.seq), peak()
    docs = docs_mix(4000, cfg.vocab_size, median=600)
    res = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "preset": a.preset, "batch": a.batch,
           "seq": a.seq, "flops_per_token": fpt, "peak_flops": pk, "rows": {}}

    def record(name, r):
        if fpt and pk:
            r["mfu"] = r["tokens_per_s"] * fpt / pk
        res["rows"][name] = r
        print(name, {k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()}, flush=True)

    for v in a.variants.split(","):
        torch.manual_seed(0)
        model = DeepSeekV3(cfg).cuda()
        model.use_flex = v.startswith("flex")
        loader = PackedDataset(docs, a.seq, a.batch, seed=0)
        if v == "nomask":
            loader = _strip_doc_ids(loader)
        fused_prev = set_fused_for(v)  # "*_fused": the Triton RMSNorm/SwiGLU kernels (docs/kernels.md)
        try:
            r = time_trainer(model, loader, a.steps, 3, compile_=v.endswith("compiled"))
            r["fused_kernels"] = fused_enabled()
            record(f"nanoseek packed [{v}]", r)
        except Exception as e:
            res["rows"][v] = {"error": f"{type(e).__name__}: {str(e)[:200]}"}
            print(v, "error", e, flush=True)
        finally:
            set_fused(fused_prev)
        del model
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    torch.manual_seed(0)
    model = DeepSeekV3(cfg).cuda()
    # padded rows hold one document each: plain causal attention, padding only at the end
    record("nanoseek padded-to-longest", time_trainer(model, _strip_doc_ids(PaddedBatcher(docs, a.seq, a.batch, seed=0)), a.steps, 3))
    if a.hf:
        try:
            record("transformers grouped_mm (no doc mask)", hf_step(model, a.batch, a.seq, a.steps))
        except Exception as e:
            print("hf error", e)
    if a.profile:
        res["profile"] = prof = profile_step(model, PackedDataset(docs, a.seq, a.batch, seed=1), "/tmp/trace.json")
        print("\n| op | CUDA ms/step | % |\n|---|---|---|")
        for r in prof:
            print(f"| {r['op']} | {r['cuda_ms_per_step']:.2f} | {r['pct']:.1f} |")
    print("\n| variant | tokens/s | useful frac | MFU | peak GB |\n|---|---|---|---|---|")
    for k, r in res["rows"].items():
        if "error" in r:
            print(f"| {k} | {r['error']} | | | |")
        else:
            print(f"| {k} | {r['tokens_per_s']:,.0f} | {r.get('useful_fraction', 1):.3f} | "
                  f"{100 * r['mfu']:.1f}% | {r.get('peak_mem_gb', 0):.1f} |" if "mfu" in r else
                  f"| {k} | {r['tokens_per_s']:,.0f} | | | |")
    if a.out:
        json.dump(res, open(a.out, "w"), indent=2)


class _strip_doc_ids:
    """Same batches without doc_ids/position_ids: plain causal attention (an upper bound on speed)."""

    def __init__(self, inner):
        self.inner, self.B = inner, inner.B

    def __iter__(self):
        return self

    def __next__(self):
        b = next(self.inner)
        return {"input_ids": b["input_ids"], "labels": b["labels"]}

    @property
    def useful_fraction(self):
        return self.inner.useful_fraction


if __name__ == "__main__":
    main()

"""Training-step and batched-generation throughput: nanoseek vs transformers, same config + weights.

    python bench/bench_model.py --preset small --out runs/bench_model.json

Prints a markdown table (tokens/s and ratios). Both models run in bf16 on one GPU; the HF model is
`DeepseekV3ForCausalLM` with SDPA attention and each of its experts implementations.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from nanoseek.model import DeepSeekV3, ModelConfig
from nanoseek.model.loss import cross_entropy


def timeit(fn, warmup: int, iters: int) -> float:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(iters):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t) / iters


def build(cfg: ModelConfig, device):
    torch.manual_seed(0)
    ours = DeepSeekV3(cfg).to(device=device, dtype=torch.bfloat16)
    return ours


def hf_twin(ours: DeepSeekV3, experts_impl: str):
    from transformers import DeepseekV3Config, DeepseekV3ForCausalLM

    hf_cfg = DeepseekV3Config(**ours.config.replace(num_nextn_predict_layers=0).to_hf())
    hf_cfg._experts_implementation = experts_impl
    with torch.device("meta"):
        hf = DeepseekV3ForCausalLM._from_config(hf_cfg, attn_implementation="sdpa", dtype=torch.bfloat16)
    hf.load_state_dict({k: v for k, v in ours.state_dict().items() if not k.startswith("mtp.")}, strict=True, assign=True)
    hf.model.rotary_emb.inv_freq = ours.model.rotary.inv_freq.clone()
    hf.model.rotary_emb.original_inv_freq = hf.model.rotary_emb.inv_freq
    return hf.to(ours.lm_head.weight.device)


def train_step_fn(model, ids, labels, hf: bool):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=True)

    def step():
        if hf:
            loss = model(input_ids=ids, labels=labels).loss
        else:
            out = model(ids, compute_logits=False)
            loss = cross_entropy(model, out.hidden[:, :-1], labels[:, 1:])
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def bench_train(ours, hfs, batch, seq, warmup, iters):
    V = ours.config.vocab_size
    ids = torch.randint(0, V, (batch, seq), device="cuda")
    rows = {}
    ours.train()
    rows["nanoseek"] = batch * seq / timeit(train_step_fn(ours, ids, ids, False), warmup, iters)
    for name, hf in hfs.items():
        hf.train()
        try:
            rows[f"transformers ({name})"] = batch * seq / timeit(train_step_fn(hf, ids, ids, True), warmup, iters)
        except Exception as e:  # one failing peer must not sink the table
            rows[f"transformers ({name})"] = f"error: {type(e).__name__}: {str(e)[:120]}"
        torch.cuda.empty_cache()
    return rows


def bench_generate(ours, hfs, batch, prompt_len, new_tokens, warmup, iters):
    V = ours.config.vocab_size
    prompts = torch.randint(2, V, (batch, prompt_len), device="cuda")
    rows = {}
    ours.eval()
    plist = prompts.tolist()
    rows["nanoseek"] = batch * new_tokens / timeit(lambda: ours.generate(plist, max_new_tokens=new_tokens), warmup, iters)
    for name, hf in hfs.items():
        hf.eval()
        try:
            fn = lambda: hf.generate(prompts, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                                     use_cache=True, pad_token_id=0, eos_token_id=None)
            with torch.inference_mode():
                rows[f"transformers ({name})"] = batch * new_tokens / timeit(fn, warmup, iters)
        except Exception as e:
            rows[f"transformers ({name})"] = f"error: {type(e).__name__}: {str(e)[:120]}"
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="small")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--gen-batch", type=int, default=64)
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--hf-experts", default="grouped_mm,eager")
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    cfg = ModelConfig.preset(a.preset).replace(num_nextn_predict_layers=0)
    ours = build(cfg, "cuda")
    hfs = {impl: hf_twin(ours, impl) for impl in a.hf_experts.split(",") if impl}
    res = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "preset": a.preset,
           "params_total": ours.num_params(), "params_active": ours.num_params(active=True), "args": vars(a)}
    res["train_tokens_per_s"] = bench_train(ours, hfs, a.batch, a.seq, 2, a.iters)
    res["train_peak_mem_gb"] = torch.cuda.max_memory_allocated() / 1e9
    res["generate_tokens_per_s"] = bench_generate(ours, hfs, a.gen_batch, a.prompt_len, a.new_tokens, 1, max(2, a.iters // 2))
    print(f"\n{res['device']}, torch {res['torch']}, preset {a.preset} ({res['params_total']/1e9:.2f}B total, "
          f"{res['params_active']/1e6:.0f}M active), bf16")
    for what in ("train_tokens_per_s", "generate_tokens_per_s"):
        base = res[what]["nanoseek"]
        print(f"\n| {what} | tokens/s | nanoseek / this |\n|---|---|---|")
        for k, v in res[what].items():
            print(f"| {k} | {v:,.0f} | {base / v:.2f}x |" if isinstance(v, float) else f"| {k} | {v} | |")
    if a.out:
        with open(a.out, "w") as f:
            json.dump(res, f, indent=2)


if __name__ == "__main__":
    main()

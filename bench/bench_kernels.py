"""Fused Triton RMSNorm / SwiGLU / MLA RoPE (+ q/k assembly) / MoE permute + unpermute vs the
PyTorch reference (eager) vs torch.compile(reference), forward + backward, at the small preset's
shapes. Prints a markdown table; --out writes JSON.

    python bench/bench_kernels.py [--tokens 32768] [--no-compile] [--ops rope_q,permute] [--out runs/bench_kernels.json]

Time: median of CUDA-event timings of y = f(inputs); autograd.grad(y, inputs, dy).
GB/s: the bytes a fused fwd+bwd must move at least, over that time (weights, rstd ignored):
RMSNorm x (M, N): read x, write y; read x, dy, write dx. SwiGLU g, u (M, H): read g, u,
write y; read g, u, dy, write dg, du. RoPE q (T, H, D): read q, write out; read dout, write dq.
RoPE k: read k_nope (T, H, dn), write k (T, H, D); read dout, write dk_nope (k_pe, cos, sin
ignored). Permute x (T, d) -> (T*K, d): read T*d, write T*K*d; the reverse. Unpermute ys
(T*K, d) -> (T, d): read ys, write out; read dout and ys, write dys (w, dw ignored).
Needs CUDA; without it, prints why and exits 0.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys

import torch

from nanoseek import kernels as K
from nanoseek.model import ModelConfig

BF16, FP32 = torch.bfloat16, torch.float32
DEVICE = "cuda"


def cases(cfg: ModelConfig, T: int) -> list[dict]:
    """Per op: name, rows M, width, dtypes. Under bf16 autocast the residual stream (and so the
    block norms) is fp32 while projections feed bf16 into q_a / kv_a norms (fp32 weights)."""
    d, K_ = cfg.hidden_size, cfg.num_experts_per_tok
    I, S = cfg.moe_intermediate_size, cfg.moe_intermediate_size * cfg.n_shared_experts
    return [
        dict(op="rmsnorm", name="block norm (fp32 residual)", M=T, N=d, x=FP32, w=FP32),
        dict(op="rmsnorm", name="block norm (bf16 params)", M=T, N=d, x=BF16, w=BF16),
        dict(op="rmsnorm", name="q_a norm (bf16 in)", M=T, N=cfg.q_lora_rank, x=BF16, w=FP32),
        dict(op="rmsnorm", name="kv_a norm (bf16 in)", M=T, N=cfg.kv_lora_rank, x=BF16, w=FP32),
        dict(op="swiglu", name="dense MLP", M=T, N=cfg.intermediate_size, x=BF16),
        dict(op="swiglu", name="shared experts", M=T, N=S, x=BF16),
        dict(op="swiglu_cat", name=f"routed experts (T*{K_}, 2I)", M=T * K_, N=I, x=BF16),
        dict(op="rope_q", name="MLA q assembly + RoPE", M=T, N=cfg.num_attention_heads, x=BF16, cfg=cfg,
             shape=f"({T}, {cfg.num_attention_heads}, {cfg.qk_head_dim})"),
        dict(op="rope_k", name="MLA k assembly + RoPE (shared k_pe)", M=T, N=cfg.num_attention_heads, x=BF16,
             cfg=cfg, shape=f"({T}, {cfg.num_attention_heads}, {cfg.qk_head_dim})"),
        dict(op="permute", name=f"MoE permute (T -> T*{K_})", M=T, N=d, x=BF16, cfg=cfg, shape=f"({T}*{K_}, {d})"),
        dict(op="unpermute", name=f"MoE unpermute (T*{K_} -> T)", M=T, N=d, x=BF16, cfg=cfg,
             shape=f"({T}*{K_}, {d})"),
    ]


def make_fused2(case: dict):
    """RoPE / MoE permute cases -> (reference fn, fused fn, inputs needing grad, ideal bytes)."""
    M, N, x, cfg = case["M"], case["N"], case["x"], case["cfg"]
    b, dev = torch.finfo(x).bits // 8, DEVICE
    if case["op"] in ("rope_q", "rope_k"):
        dn, dr, H = cfg.qk_nope_head_dim, cfg.qk_rope_head_dim, N
        pos = torch.arange(M, device=dev)[None] % 4096  # packed documents: positions restart
        freqs = pos[..., None].float() * 1e-3 * torch.arange(dr // 2, device=dev)  # (1, T, dr/2)
        cos, sin = freqs.cos(), freqs.sin()
        if case["op"] == "rope_q":
            q = torch.randn(1, M, H, dn + dr, device=dev, dtype=x, requires_grad=True)  # (1, T, H, D)
            return (lambda a: K.rope_q_ref(a, cos, sin, dn)), (lambda a: K.rope_q_fused(a, cos, sin, dn)), \
                (q,), 4 * M * H * (dn + dr) * b
        # k_nope: a slice of kv_b's (T, H, dn + dv) output; k_pe: a slice of kv_a's (T, dc + dr)
        kn = torch.randn(1, M, H, dn + cfg.v_head_dim, device=dev, dtype=x)[..., :dn].detach().requires_grad_()
        kp = torch.randn(1, M, cfg.kv_lora_rank + dr, device=dev, dtype=x)[..., -dr:].detach().requires_grad_()
        return (lambda a, c: K.rope_k_ref(a, c, cos, sin)), (lambda a, c: K.rope_k_fused(a, c, cos, sin)), \
            (kn, kp), 2 * M * H * (2 * dn + dr) * b
    E, K_ = cfg.n_routed_experts, cfg.num_experts_per_tok
    order = torch.rand(M, E, device=dev).topk(K_, -1).indices.reshape(-1).argsort(stable=True)  # (T*K,)
    inv = K.inverse_permutation(order).view(M, K_)  # (T, K)
    if case["op"] == "permute":
        xs = torch.randn(M, N, device=dev, dtype=x, requires_grad=True)  # (T, d)
        return (lambda a: K.moe_permute_ref(a, order, K_)), (lambda a: K.moe_permute_fused(a, inv)), \
            (xs,), 2 * M * N * (K_ + 1) * b
    ys = torch.randn(M * K_, N, device=dev, dtype=x, requires_grad=True)  # (T*K, d)
    w = torch.rand(M, K_, device=dev, requires_grad=True)  # (T, K) fp32 router weights
    return (lambda a, c: K.moe_unpermute_ref(a, c, inv, x)), (lambda a, c: K.moe_unpermute_fused(a, c, inv, x)), \
        (ys, w), M * N * (3 * K_ + 2) * b


def make(case: dict):
    """-> (reference fn, fused fn, inputs needing grad, ideal bytes of a fwd+bwd)."""
    M, N, x = case["M"], case["N"], case["x"]
    b = torch.finfo(x).bits // 8
    if "cfg" in case:
        return make_fused2(case)
    if case["op"] == "rmsnorm":
        xs = torch.randn(M, N, device="cuda", dtype=x, requires_grad=True)  # (M, N)
        w = torch.ones(N, device="cuda", dtype=case["w"], requires_grad=True)  # (N,)
        by = torch.finfo(torch.promote_types(x, case["w"])).bits // 8
        return (lambda a, c: K.rms_norm_ref(a, c, 1e-6)), (lambda a, c: K.rms_norm_fused(a, c, 1e-6)), \
            (xs, w), M * N * (3 * b + 2 * by)
    if case["op"] == "swiglu":
        g, u = (torch.randn(M, N, device="cuda", dtype=x, requires_grad=True) for _ in range(2))  # (M, H)
        return K.swiglu_ref, K.swiglu_fused, (g, u), 8 * M * N * b
    h = torch.randn(M, 2 * N, device="cuda", dtype=x, requires_grad=True)  # (M, 2H) = [gate | up]
    return K.swiglu_cat_ref, K.swiglu_cat_fused, (h,), 8 * M * N * b


def ms(fn, warmup: int = 10, reps: int = 50) -> float:
    for _ in range(warmup):
        fn()
    ev = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(reps)]
    for a, b in ev:
        a.record()
        fn()
        b.record()
    torch.cuda.synchronize()
    return statistics.median(a.elapsed_time(b) for a, b in ev)


def fwd_bwd(f, inputs):
    dy = torch.randn_like(f(*inputs))

    def step():
        torch.autograd.grad(f(*inputs), inputs, dy)
    return step


def run_case(case: dict, compile_: bool) -> dict:
    ref, fused, inputs, nbytes = make(case)
    row = dict(op=case["op"], name=case["name"], shape=case.get("shape", f"({case['M']}, {case['N']})"),
               dtype=f"{str(case['x'])[6:]}" + (f"/w {str(case['w'])[6:]}" if "w" in case else ""))
    impls = dict(fused=fused, eager=ref) | (dict(compile=torch.compile(ref)) if compile_ else {})
    for key, f in impls.items():
        try:
            t = ms(fwd_bwd(f, inputs))
            row[f"{key}_ms"], row[f"{key}_gbps"] = round(t, 4), round(nbytes / t / 1e6, 1)
        except Exception as e:  # noqa: BLE001 - one failing cell must not kill the table
            row[f"{key}_ms"] = row[f"{key}_gbps"] = None
            row["error"] = (row.get("error", "") + f" [{key}] {type(e).__name__}: {str(e)[:120]}").strip()
    for key in ("eager", "compile"):
        a, b = row.get(f"{key}_ms"), row.get("fused_ms")
        row[f"x_vs_{key}"] = round(a / b, 2) if a and b else None
    del inputs
    torch.cuda.empty_cache()
    return row


def markdown(rows: list[dict]) -> str:
    cols = ["name", "shape", "dtype", "fused_ms", "eager_ms", "compile_ms", "fused_gbps", "eager_gbps",
            "compile_gbps", "x_vs_eager", "x_vs_compile", "error"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=8 * 4096, help="tokens per micro-batch (8 x 4096)")
    ap.add_argument("--preset", default="small")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile column")
    ap.add_argument("--out", default=None, help="JSON output path")
    ap.add_argument("--ops", default=None, help="comma-separated subset, e.g. rope_q,rope_k,permute,unpermute")
    args = ap.parse_args()
    known = [c["op"] for c in cases(ModelConfig.preset(args.preset), 1)]
    if args.ops and not set(args.ops.split(",")) <= set(known):
        ap.error(f"--ops: choose from {','.join(dict.fromkeys(known))}")
    if not torch.cuda.is_available():
        print("bench_kernels: needs a CUDA GPU (the fused kernels are Triton); nothing to time here.")
        return 0
    if not K.triton_available():
        print("bench_kernels: triton is not importable; the fused column will show errors.", file=sys.stderr)
    torch.manual_seed(0)
    cfg = ModelConfig.preset(args.preset)
    todo = [c for c in cases(cfg, args.tokens) if not args.ops or c["op"] in args.ops.split(",")]
    rows = [run_case(c, not args.no_compile) for c in todo]
    info = dict(device=torch.cuda.get_device_name(), torch=torch.__version__, preset=args.preset,
                tokens=args.tokens)
    print(f"## Fused kernels, fwd+bwd: {info}\n\n{markdown(rows)}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(dict(info=info, rows=rows), f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())

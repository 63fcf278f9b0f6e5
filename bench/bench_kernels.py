"""Fused Triton RMSNorm / SwiGLU vs the PyTorch reference (eager) vs torch.compile(reference),
forward + backward, at the small preset's shapes. Prints a markdown table; --out writes JSON.

    python bench/bench_kernels.py [--tokens 32768] [--no-compile] [--out runs/bench_kernels.json]

Time: median of CUDA-event timings of y = f(inputs); autograd.grad(y, inputs, dy).
GB/s: the bytes a fused fwd+bwd must move at least, over that time (weights, rstd ignored):
RMSNorm x (M, N): read x, write y; read x, dy, write dx. SwiGLU g, u (M, H): read g, u,
write y; read g, u, dy, write dg, du. Needs CUDA; without it, prints why and exits 0.
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
    ]


def make(case: dict):
    """-> (reference fn, fused fn, inputs needing grad, ideal bytes of a fwd+bwd)."""
    M, N, x = case["M"], case["N"], case["x"]
    b = torch.finfo(x).bits // 8
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
    row = dict(op=case["op"], name=case["name"], shape=f"({case['M']}, {case['N']})",
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
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("bench_kernels: needs a CUDA GPU (the fused kernels are Triton); nothing to time here.")
        return 0
    if not K.triton_available():
        print("bench_kernels: triton is not importable; the fused column will show errors.", file=sys.stderr)
    torch.manual_seed(0)
    cfg = ModelConfig.preset(args.preset)
    rows = [run_case(c, not args.no_compile) for c in cases(cfg, args.tokens)]
    info = dict(device=torch.cuda.get_device_name(), torch=torch.__version__, preset=args.preset,
                tokens=args.tokens)
    print(f"## Fused kernels, fwd+bwd: {info}\n\n{markdown(rows)}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(dict(info=info, rows=rows), f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())

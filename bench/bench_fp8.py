"""FP8 micro-benchmarks on one GPU: blockwise FP8 vs bf16 GEMMs, quantization kernel bandwidth,
FP8Linear MLP fwd+bwd, FP8 grouped expert GEMM. Prints markdown tables; --out writes JSON.

    python bench/bench_fp8.py --out runs/bench_fp8.json [--sections gemm,quant,mlp,grouped]

Timings: triton.testing.do_bench median (ms) on random normal data. FP8 GEMMs use the native
backend only (a failure shows as the row's error instead of silently timing the emulation).
A failing row prints its error and the table goes on.
"""
from __future__ import annotations

import argparse
import json
import sys

import torch

from nanoseek.fp8 import (FP8Linear, fp8_grouped_mm, fp8_mm_nt, quantize_act_1x128,
                          quantize_act_t, quantize_weight_128x128, set_fp8_backend)
from nanoseek.fp8.quant import quant_blocks

# (name, tokens M, in K, out N) of y = x W^T. V3: hidden 7168, q_lora 1536, kv_lora 512,
# 128 heads x (128 nope + 64 rope) q / (128 k_nope + 128 v) kv_b, moe_inter 2048.
# small preset: hidden 1024, q_lora 768, kv_lora 512, 16 heads x 192, moe_inter 512.
SHAPES = [
    ("square 8192^3", 8192, 8192, 8192),
    ("v3 q_a 7168->1536", 4096, 7168, 1536),
    ("v3 q_b 1536->24576", 4096, 1536, 24576),
    ("v3 kv_a 7168->576", 4096, 7168, 576),
    ("v3 kv_b 512->32768", 4096, 512, 32768),
    ("v3 o 16384->7168", 4096, 16384, 7168),
    ("v3 expert up 7168->2048", 4096, 7168, 2048),
    ("v3 expert down 2048->7168", 4096, 2048, 7168),
    ("small q_a 1024->768", 4096, 1024, 768),
    ("small q_b 768->3072", 4096, 768, 3072),
    ("small kv_a 1024->576", 4096, 1024, 576),
    ("small kv_b 512->4096", 4096, 512, 4096),
    ("small o 2048->1024", 4096, 2048, 1024),
    ("small expert up 1024->512", 4096, 1024, 512),
    ("small expert down 512->1024", 4096, 512, 1024),
]


def ms(fn, **kw) -> float:
    from triton.testing import do_bench
    return do_bench(fn, warmup=25, rep=100, return_mode="median", **kw)


def err(e: Exception) -> str:
    return f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"


def safe(rows: list, row: dict, fn) -> None:
    """Run one row; on failure record the error in the row instead of crashing the table."""
    try:
        fn(row)
    except Exception as e:  # noqa: BLE001 - a benchmark row must never kill the table
        row["error"] = err(e)
    finally:
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
    rows.append(row)
    print(" | ".join(f"{k}={v}" for k, v in row.items()), file=sys.stderr, flush=True)


def cell(row: dict, key: str, fn) -> None:
    """One measurement; an error lands in its cell, the rest of the row still runs."""
    try:
        row[key] = fn()
    except Exception as e:  # noqa: BLE001
        row[key] = None
        row["error"] = (row.get("error", "") + f" [{key}] {err(e)}").strip()


def ratio(a, b):
    return round(a / b, 2) if isinstance(a, (int, float)) and isinstance(b, (int, float)) and b else None


def tflops(flops: float, t_ms: float) -> float:
    return round(flops / t_ms / 1e9, 1)


# ------------------------------------------------------------------ GEMMs

def _gemm_operands(kind, x, w, dy):
    """bf16 closure and FP8 operands (a, a_s, b, b_s, b_block) + quantize closure per GEMM."""
    if kind == "fprop":  # y = x W^T
        return (lambda: x @ w.t(), lambda: (*quantize_act_1x128(x), *quantize_weight_128x128(w), 128))
    if kind == "dgrad":  # dx = dy W
        return (lambda: dy @ w,
                lambda: (*quantize_act_1x128(dy), *quantize_weight_128x128(w, transpose=True), 128))
    return (lambda: dy.t() @ x, lambda: (*quantize_act_t(dy), *quantize_act_t(x), 1))  # dW = dy^T x


def gemm_rows(rows):
    for name, M, K, N in SHAPES:
        for kind in ("fprop", "dgrad", "wgrad"):
            row = dict(section="gemm", name=name, gemm=kind, MNK=f"{M},{N},{K}")

            def run(row, M=M, K=K, N=N, kind=kind):
                x = torch.randn(M, K, device="cuda", dtype=torch.bfloat16)
                w = torch.randn(N, K, device="cuda", dtype=torch.bfloat16) * 0.02
                dy = torch.randn(M, N, device="cuda", dtype=torch.bfloat16)
                flops = 2 * M * N * K
                bf16, quant = _gemm_operands(kind, x, w, dy)
                mm = lambda ops: fp8_mm_nt(*ops, out_dtype=torch.bfloat16, backend="native")
                cell(row, "bf16_tflops", lambda: tflops(flops, ms(bf16)))
                ops = quant()
                cell(row, "fp8_tflops", lambda: tflops(flops, ms(lambda: mm(ops))))
                row["speedup"] = ratio(row["fp8_tflops"], row["bf16_tflops"])
                cell(row, "fp8_with_quant_tflops", lambda: tflops(flops, ms(lambda: mm(quant()))))
            safe(rows, row, run)


# ------------------------------------------------------------------ quantization kernels

def copy_gbps() -> float:
    src = torch.randn(256 * 2**20, device="cuda", dtype=torch.bfloat16)  # 512 MiB
    dst = torch.empty_like(src)
    return round(2 * src.numel() * 2 / ms(lambda: dst.copy_(src)) / 1e6, 1)


def quant_rows(rows, copy_bw):
    M, K = 8192, 7168
    cases = [  # name, input builder, triton fn, torch reference fn
        ("act 1x128 bf16", lambda: torch.randn(M, K, device="cuda", dtype=torch.bfloat16),
         quantize_act_1x128, lambda t: quant_blocks(t, 1, 128)),
        ("act^T 128x1 bf16", lambda: torch.randn(M, K, device="cuda", dtype=torch.bfloat16),
         quantize_act_t, lambda t: quant_blocks(t.t(), 1, 128)),
        ("weight 128x128 fp32", lambda: torch.randn(K, K, device="cuda"),
         quantize_weight_128x128, lambda t: quant_blocks(t, 128, 128)),
        ("weight^T 128x128 fp32", lambda: torch.randn(K, K, device="cuda"),
         lambda t: quantize_weight_128x128(t, transpose=True),
         lambda t: quant_blocks(t, 128, 128)),
    ]
    for name, make, fn, ref in cases:
        row = dict(section="quant", name=name)

        def run(row, make=make, fn=fn, ref=ref):
            x = make()
            q, s = fn(x)
            nbytes = x.numel() * x.element_size() + q.numel() + s.numel() * 4
            row["shape"] = "x".join(map(str, x.shape))
            cell(row, "triton_gbps", lambda: round(nbytes / ms(lambda: fn(x)) / 1e6, 1))
            row["pct_of_copy"] = ratio(100 * (row["triton_gbps"] or 0), copy_bw)
            cell(row, "torch_eager_gbps", lambda: round(nbytes / ms(lambda: ref(x)) / 1e6, 1))
        safe(rows, row, run)


# ------------------------------------------------------------------ FP8Linear MLP block

def mlp_rows(rows):
    for T, D, H in ((8192, 4096, 16384), (8192, 1024, 4096)):
        row = dict(section="mlp", name=f"MLP {D}->{H}->{D}, {T} tokens, bf16 params")

        def run(row, T=T, D=D, H=H):
            mk = lambda: torch.nn.Sequential(torch.nn.Linear(D, H, bias=False), torch.nn.GELU(),
                                             torch.nn.Linear(H, D, bias=False)).cuda().bfloat16()
            base = mk()
            fp8 = torch.nn.Sequential(FP8Linear.from_linear(base[0]), torch.nn.GELU(),
                                      FP8Linear.from_linear(base[2]))
            x = torch.randn(T, D, device="cuda", dtype=torch.bfloat16, requires_grad=True)
            gy = torch.randn(T, D, device="cuda", dtype=torch.bfloat16)
            flops = 3 * 2 * 2 * T * D * H  # fwd + 2 bwd GEMMs, two Linears
            for tag, m in (("bf16", base), ("fp8", fp8)):
                f = lambda m=m: m(x).backward(gy)
                cell(row, f"{tag}_ms", lambda f=f: round(ms(f, grad_to_none=[x, *base.parameters()]), 3))
                row[f"{tag}_tflops"] = row[f"{tag}_ms"] and tflops(flops, row[f"{tag}_ms"])
            row["speedup"] = ratio(row["bf16_ms"], row["fp8_ms"])
        safe(rows, row, run)


# ------------------------------------------------------------------ grouped experts

def grouped_rows(rows):
    for E, T, K, N in ((8, 32768, 7168, 2048), (64, 32768, 1024, 512)):
        row = dict(section="grouped", name=f"E={E} T={T} {K}->{N} (rowwise fp8)")

        def run(row, E=E, T=T, K=K, N=N):
            x = torch.randn(T, K, device="cuda", dtype=torch.bfloat16, requires_grad=True)
            w = (torch.randn(E, N, K, device="cuda", dtype=torch.bfloat16) * 0.02).requires_grad_()
            offs = torch.arange(1, E + 1, device="cuda", dtype=torch.int32) * (T // E)
            gy = torch.randn(T, N, device="cuda", dtype=torch.bfloat16)
            wt = lambda: w.transpose(1, 2)
            flops = 2 * T * K * N
            bf16 = lambda: torch._grouped_mm(x, wt(), offs=offs)
            fp8 = lambda: fp8_grouped_mm(x, wt(), offs)
            prev = set_fp8_backend("native")
            try:
                for tag, f in (("bf16", bf16), ("fp8", fp8)):
                    cell(row, f"{tag}_fwd_tflops", lambda f=f: tflops(flops, ms(f)))
                    fb = lambda f=f: f().backward(gy)
                    cell(row, f"{tag}_fwdbwd_tflops",
                         lambda fb=fb: tflops(3 * flops, ms(fb, grad_to_none=[x, w])))
            finally:
                set_fp8_backend(prev)
            row["fwdbwd_speedup"] = ratio(row["fp8_fwdbwd_tflops"], row["bf16_fwdbwd_tflops"])
        safe(rows, row, run)


# ------------------------------------------------------------------ output

def markdown(rows, section) -> str:
    rs = [r for r in rows if r["section"] == section]
    keys = [k for k in dict.fromkeys(k for r in rs for k in r) if k not in ("section", "error")]
    keys.append("error")
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(str(r.get(k, "")) for k in keys) + " |" for r in rs]
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=None, help="JSON output path")
    ap.add_argument("--sections", default="gemm,quant,mlp,grouped")
    args = ap.parse_args()
    assert torch.cuda.is_available(), "bench_fp8 needs a GPU"
    torch.manual_seed(0)
    sections = args.sections.split(",")
    rows: list[dict] = []
    info = dict(device=torch.cuda.get_device_name(), torch=torch.__version__,
                capability=".".join(map(str, torch.cuda.get_device_capability())))
    try:
        import triton
        info["triton"] = triton.__version__
        info["copy_gbps"] = copy_gbps()
    except Exception as e:  # noqa: BLE001
        info["copy_gbps"], info["error"] = None, err(e)
    for sec, fn in (("gemm", gemm_rows), ("quant", lambda r: quant_rows(r, info["copy_gbps"] or 1.0)),
                    ("mlp", mlp_rows), ("grouped", grouped_rows)):
        if sec in sections:
            fn(rows)
    print(f"## FP8 bench: {info}\n")
    for sec in sections:
        print(f"### {sec}\n\n{markdown(rows, sec)}\n")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(dict(info=info, rows=rows), f, indent=1)


if __name__ == "__main__":
    main()

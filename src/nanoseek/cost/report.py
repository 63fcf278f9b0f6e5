"""`nanoseek cost`: the accounting of flops.py / plan.py rendered as markdown tables."""

from __future__ import annotations

import argparse

from nanoseek.model.config import ModelConfig

from . import plan
from .flops import flops_per_token, param_counts, six_n
from .gpus import lookup


def _e(x: float | None) -> str:
    return "–" if x is None else f"{x:.3g}"


def _k(x: float | None) -> str:
    """GPU-hours in thousands, as the V3 report writes them (2,664K)."""
    return "–" if x is None else f"{x / 1e3:,.0f}K" if x >= 1e3 else f"{x:,.1f}"


def _usd(x: float | None) -> str:
    return "–" if x is None else f"${x / 1e6:.3f}M" if x >= 1e4 else f"${x:,.0f}"


def _tok(x: float | None) -> str:
    if x is None:
        return "–"
    v, u = next(((x / s, u) for s, u in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")) if x >= s), (x, ""))
    return f"{v:.4g}{u}"


def _table(head: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def render_cost(cfg_name_or_path: str | ModelConfig, tokens: float, gpu: str, mfu: float, price: float = 2.0,
                seq_len: int = 4096, layout: plan.Layout | None = None, mtp: bool = True) -> str:
    cfg = cfg_name_or_path if isinstance(cfg_name_or_path, ModelConfig) else ModelConfig.load(cfg_name_or_path)
    lay = layout or plan.Layout(seq_len=seq_len)
    pc, f, spec = param_counts(cfg), flops_per_token(cfg, seq_len, mtp=mtp), lookup(gpu)
    out = [f"## {cfg_name_or_path if isinstance(cfg_name_or_path, str) else 'model'}: cost at {_tok(tokens)} tokens, "
           f"sequence {seq_len}",
           f"params: total {_tok(pc.total)} (MTP {_tok(pc.mtp)}), active per token {_tok(pc.active)}", ""]
    rows = [[k, _e(v), _e(2 * v), _e(3 * v), f"{v / f.fwd:.1%}"] for k, v in f.components().items()]
    rows.append(["**total**", _e(f.fwd), _e(f.bwd), _e(f.total), "100%"])
    out += [_table(["FLOPs/token", "fwd", "bwd", "train", "share"], rows),
            f"\n6N with N = active params (embedding and MTP included): {_e(six_n(pc.active))}; attention-inclusive count: "
            f"{f.total / six_n(pc.active):.3f}× that (causal, MTP {'on' if mtp else 'off'}).", ""]
    if spec is None:
        out.append(f"GPU {gpu!r}: peak unknown, GPU-hours and MFU not computed.")
    else:
        h = plan.gpu_hours(tokens, f.total, spec.bf16, mfu)
        days = h / lay.n_gpus / 24
        out.append(f"{spec.name} (BF16 dense peak {spec.bf16 / 1e12:.0f} TFLOP/s) at MFU {mfu:.1%}: "
                   f"**{_k(h)} GPU-hours**, **{_usd(plan.dollars(h, price))}** at ${price}/GPU-h, "
                   f"{days:.1f} days on {lay.n_gpus} GPUs.")
    m = plan.memory_per_gpu(cfg, lay)
    cap = f" of {spec.memory_gb:.0f} GB" if spec else ""
    out += ["", f"memory per GPU, DP{lay.dp} EP{lay.ep} PP{lay.pp} ZeRO-{lay.zero}, micro-batch {lay.micro_batch}×"
            f"{lay.seq_len}, moments {lay.moments}{', full recompute' if lay.recompute else ''} (GB):",
            _table(["params bf16", "grads fp32", "optimizer", "activations (rough)", "total"],
                   [[f"{x / 1e9:.2f}" for x in (m.params, m.grads, m.optimizer, m.activations)] + [f"{m.total / 1e9:.2f}{cap}"]])]
    return "\n".join(out)


def render_v3_table(price: float = 2.0) -> str:
    rows = plan.v3_cost_table(price)
    body = [["  " * r.sub + r.stage, _tok(r.tokens), str(r.seq_len or "–"), _e(r.flops), _k(r.gpu_hours), _k(r.reported), _usd(r.dollars)]
            for r in rows]
    mfu6, mfuf = plan.v3_implied_mfu("6n"), plan.v3_implied_mfu("full")
    ll, ratio = plan.llama_cost_row(price), plan.llama_v3_ratio()
    return "\n".join([
        "## DeepSeek-V3 training cost from first principles (H800, BF16 dense peak 989 TFLOP/s)",
        _table(["stage", "tokens", "seq", "FLOPs", "GPU-h computed", "GPU-h reported", f"$ at ${price}/GPU-h"], body),
        "",
        f"MFU implied by 2,664K GPU-hours: {mfu6:.1%} with 6·37e9 FLOPs/token (CLAIMS C12), "
        f"{mfuf:.1%} counting attention (4K, causal) and MTP; {plan.v3_implied_mfu('full', 'fp8'):.1%} of the FP8 peak.",
        "Computed GPU-hours use the attention-inclusive MFU; post-training has no token count and keeps "
        "the reported 5K (the total's computed column includes it).",
        "",
        f"Llama 3.1 405B: {_tok(ll.tokens)} tokens at 8K, {_e(ll.flops)} FLOPs, reported {ll.reported / 1e6:.2f}M "
        f"H100 GPU-hours -> implied MFU {plan.llama_implied_mfu('6n'):.1%} (6N) / {plan.llama_implied_mfu():.1%} "
        f"(with attention); at V3's implied MFU it would take {ll.gpu_hours / 1e6:.2f}M GPU-hours.",
        f"Ratio Llama / V3: {ratio['gpu_hours']:.2f}× reported GPU-hours (30.84M / 2.788M), "
        f"{ratio['flops']:.2f}× pre-training FLOPs.",
    ])


def main_cost(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="nanoseek cost", description="FLOPs, GPU-hours, dollars and memory per GPU "
                                 "for a model config; --v3-table rebuilds the DeepSeek-V3 cost table.")
    ap.add_argument("--model", default="671b", help="preset (tiny, small, 16b, 671b) or a config JSON path")
    ap.add_argument("--tokens", type=float, default=1e12)
    ap.add_argument("--gpu", default="H800", help="H100, H800, H200, A100, B200 or a torch device name")
    ap.add_argument("--mfu", type=float, default=0.35)
    ap.add_argument("--price", type=float, default=2.0, help="$ per GPU-hour")
    ap.add_argument("--seq-len", type=int, default=4096)
    ap.add_argument("--no-mtp", action="store_true", help="leave the MTP modules out of the FLOPs")
    ap.add_argument("--dp", type=int, default=1)
    ap.add_argument("--ep", type=int, default=1)
    ap.add_argument("--pp", type=int, default=1)
    ap.add_argument("--zero", type=int, default=1, choices=(0, 1, 2, 3))
    ap.add_argument("--micro-batch", type=int, default=1)
    ap.add_argument("--moments", default="fp32", choices=("fp32", "bf16"))
    ap.add_argument("--recompute", action="store_true", help="full activation checkpointing")
    ap.add_argument("--v3-table", action="store_true", help="the DeepSeek-V3 table and the Llama 3.1 comparison")
    a = ap.parse_args(argv)
    if a.v3_table:
        print(render_v3_table(a.price))
        return 0
    lay = plan.Layout(a.dp, a.ep, a.pp, a.zero, a.micro_batch, a.seq_len, a.moments, a.recompute)
    print(render_cost(a.model, a.tokens, a.gpu, a.mfu, a.price, a.seq_len, lay, mtp=not a.no_mtp))
    return 0

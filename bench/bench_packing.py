"""Packed vs pad-to-longest batching on a realistic document-length mix (claim C5).

Claim C5 (seed 001): "dynamic sequence length (no fixed padding): -20% compute". We draw document
lengths from a lognormal (web/code corpora are roughly lognormal with a long tail), run one epoch
through `PackedDataset` and through the pad-to-longest `PaddedBatcher`, and report the fraction of
computed positions that carry a loss term, plus the time of a tiny stand-in workload (embedding,
causal attention, MLP) so the token accounting can be checked against wall-clock on any device.

    python bench/bench_packing.py                      # CPU, a few seconds
    python bench/bench_packing.py --device cuda --docs 20000 --dim 1024 --json out/packing.json
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
import torch.nn.functional as F

from nanoseek.data.packing import PackedDataset, PaddedBatcher


def lognormal_docs(n: int, median: float, sigma: float, seq_len: int, vocab: int, seed: int) -> list[np.ndarray]:
    """n token arrays, lengths ~ LogNormal(ln median, sigma) clipped to [8, 4·seq_len]."""
    rng = np.random.default_rng(seed)
    lens = np.clip(rng.lognormal(np.log(median), sigma, n), 8, 4 * seq_len).astype(int)
    return [rng.integers(9, vocab, L) for L in lens]


class StandIn(torch.nn.Module):
    """One attention + MLP block: compute proportional to positions (MLP) and S^2 (attention)."""

    def __init__(self, vocab: int, dim: int, heads: int = 4):
        super().__init__()
        self.emb, self.heads = torch.nn.Embedding(vocab, dim), heads
        self.qkv, self.out = torch.nn.Linear(dim, 3 * dim), torch.nn.Linear(dim, dim)
        self.up, self.down = torch.nn.Linear(dim, 4 * dim), torch.nn.Linear(4 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.emb(x)  # (B, S, D)
        q, k, v = self.qkv(h).unflatten(-1, (3, self.heads, -1)).permute(2, 0, 3, 1, 4)  # each (B, H, S, D/H)
        h = h + self.out(F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).flatten(2))
        return h + self.down(F.gelu(self.up(h)))


def run(cls, docs, args, model) -> dict:
    """One pass over all documents (no wrap-around: the last packed row is padded with label -100)."""
    ds = cls(docs, args.seq_len, args.batch_size, seed=args.seed, wrap=False)
    data_t = comp_t = 0.0
    rows = 0
    while True:
        t0 = time.perf_counter()
        b = next(ds, None)
        t1 = time.perf_counter()
        if b is None:
            break
        rows += b["input_ids"].shape[0]
        if model is not None:
            with torch.no_grad():
                model(b["input_ids"].to(args.device)).sum().item()  # .item() synchronises the device
        data_t += t1 - t0
        comp_t += time.perf_counter() - t1
    return {"rows": rows, "positions": ds.total, "useful": ds.useful, "useful_frac": ds.useful_fraction,
            "data_s": data_t, "compute_s": comp_t, "useful_tok_per_s": ds.useful / comp_t if model else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--docs", type=int, default=1000)
    ap.add_argument("--median", type=float, default=200.0, help="median document length in tokens")
    ap.add_argument("--sigma", type=float, default=1.0, help="lognormal sigma (spread of lengths)")
    ap.add_argument("--seq-len", type=int, default=1024)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--dim", type=int, default=64, help="stand-in model width; 0 = accounting only")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    docs = lognormal_docs(args.docs, args.median, args.sigma, args.seq_len, args.vocab, args.seed)
    model = StandIn(args.vocab, args.dim).to(args.device).eval() if args.dim else None
    if model is not None:  # warm-up (kernel selection, allocator)
        with torch.no_grad():
            model(torch.zeros(args.batch_size, args.seq_len, dtype=torch.long, device=args.device)).sum().item()
    res = {name: run(cls, docs, args, model) for name, cls in (("packed", PackedDataset), ("padded", PaddedBatcher))}
    lens = np.array([len(d) for d in docs])
    print(f"{len(docs)} docs, lengths lognormal(median {args.median:g}, sigma {args.sigma:g}): mean {lens.mean():.0f}, "
          f"p90 {np.percentile(lens, 90):.0f}, max {lens.max()}; S={args.seq_len} B={args.batch_size} "
          f"device={args.device} dim={args.dim}")
    print(f"{'mode':<8}{'rows':>7}{'positions':>11}{'useful':>10}{'useful%':>9}{'data s':>8}{'compute s':>10}{'useful tok/s':>14}")
    for name, r in res.items():
        tps = f"{r['useful_tok_per_s']:,.0f}" if model else "-"
        print(f"{name:<8}{r['rows']:>7}{r['positions']:>11}{r['useful']:>10}{r['useful_frac']:>9.1%}"
              f"{r['data_s']:>8.2f}{r['compute_s']:>10.2f}{tps:>14}")
    p, q = res["packed"], res["padded"]
    saved = 1 - p["positions"] / q["positions"]
    print(f"packing computes {saved:.1%} fewer positions for the same documents"
          + (f"; compute time {1 - p['compute_s'] / max(q['compute_s'], 1e-9):.1%} lower" if model else ""))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "results": res, "positions_saved": saved}, f, indent=2)


if __name__ == "__main__":
    main()

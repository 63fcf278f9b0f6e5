"""`nanoseek plan`: memory per GPU, all-to-all volume and pipeline bubbles of a training layout.

    nanoseek plan --model 671b --gpus 2048 --pp 16 --ep 64          # V3's layout (V3 §3.2)
    nanoseek plan --model tiny --pp 4 --ep 2 --gpus 8 --measure      # layer times measured here

Bubbles (CLAIMS C7) come from simulating each rank's action list with per-chunk times
F (forward), I (backward for inputs), W (backward for weights), B = I + W, and comparing with the
DualPipe README's formulas (EFFICIENCY.md §1): 1F1B (PP-1)(F+B); DualPipe (PP/2-1)(F&B+B-3W).
The DualPipeV order is torch's own (`ScheduleDualPipeV`); with pp ranks it has PP = 2·pp chunks of
L/(2pp) layers, so its formula is (pp-1)(F&B+B-3W) in chunk times. F&B, an overlapped forward +
backward pair, costs F+B without overlap (what torch runs) and max(F, B) with perfect overlap.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass
from types import SimpleNamespace

import torch

from ..cost.flops import flops_per_token
from ..cost.gpus import lookup
from ..cost.plan import Layout, memory_per_gpu
from ..model.config import ModelConfig

GB = 1e9


# ------------------------------------------------------------------------------ simulation
@dataclass(frozen=True)
class Act:
    kind: str  # "F", "I", "W", "B" (= I + W), "FB" (an overlapped F and B pair)
    stage: int
    mb: int
    pair: tuple = ()  # for "FB": (F act, B act)


def one_f_one_b(pp: int, n: int) -> dict[int, list[Act]]:
    """Rank r: pp-1-r warm-up forwards, then alternate one forward / one backward, then drain."""
    out = {}
    for r in range(pp):
        warm = min(pp - 1 - r, n)
        acts = [Act("F", r, m) for m in range(warm)]
        for i in range(n - warm):
            acts += [Act("F", r, warm + i), Act("B", r, i)]
        out[r] = acts + [Act("B", r, m) for m in range(n - warm, n)]
    return out


def dualpipe_v(pp: int, n: int) -> dict[int, list[Act]] | None:
    """torch's DualPipeV order per rank (None when this torch has no ScheduleDualPipeV)."""
    try:
        from torch.distributed.pipelining.schedules import ScheduleDualPipeV
    except ImportError:
        return None
    kinds = {"FORWARD": "F", "BACKWARD_INPUT": "I", "BACKWARD_WEIGHT": "W", "FULL_BACKWARD": "B"}

    def conv(a) -> Act:
        name = getattr(a.computation_type, "name", str(a.computation_type))
        if a.sub_actions:
            f, b = (conv(s) for s in a.sub_actions)
            return Act("FB", -1, -1, (f, b))
        return Act(kinds[name], a.stage_index, a.microbatch_index)

    stub = SimpleNamespace(pp_group_size=pp, _n_microbatches=n)
    return {r: [conv(a) for a in ScheduleDualPipeV._calculate_single_rank_operations(stub, r) if a is not None] for r in range(pp)}


@dataclass
class SimResult:
    makespan: float
    busy: list[float]  # per rank

    @property
    def bubble(self) -> float:
        """Idle time of the most idle rank."""
        return max(self.makespan - b for b in self.busy)

    @property
    def bubble_frac(self) -> float:
        return self.bubble / self.makespan


def simulate(acts: dict[int, list[Act]], n_stages: int, f: float, i: float, w: float, overlap: float = 0.0) -> SimResult:
    """Each rank runs its list in order; an action starts when its rank is free and its inputs exist:
    F(s,m) after F(s-1,m); I/B(s,m) after I/B(s+1,m) (the last stage: after F(s,m)); W after I.
    Chunk times f, i, w; an "FB" pair costs f+b − overlap·min(f, b) (overlap in [0, 1])."""
    dur = {"F": f, "I": i, "W": w, "B": i + w}
    done: dict[tuple, float] = {}

    def deps(a: Act) -> list[tuple]:
        if a.kind == "F":
            return [("F", a.stage - 1, a.mb)] if a.stage > 0 else []
        if a.kind in ("I", "B"):
            return [("F", a.stage, a.mb)] if a.stage == n_stages - 1 else [("I", a.stage + 1, a.mb)]
        return [("I", a.stage, a.mb)]

    def cost(a: Act) -> float:
        if a.kind != "FB":
            return dur[a.kind]
        fa, ba = (dur[x.kind] for x in a.pair)
        return fa + ba - overlap * min(fa, ba)

    pos, free, busy = dict.fromkeys(acts, 0), dict.fromkeys(acts, 0.0), dict.fromkeys(acts, 0.0)
    while any(pos[r] < len(acts[r]) for r in acts):
        progressed = False
        for r in acts:
            while pos[r] < len(acts[r]):
                a = acts[r][pos[r]]
                need = [d for x in (a.pair or (a,)) for d in deps(x)]
                if any(d not in done for d in need):
                    break
                start = max([free[r]] + [done[d] for d in need])
                free[r] = start + cost(a)
                busy[r] += cost(a)
                for x in a.pair or (a,):
                    done[(x.kind, x.stage, x.mb)] = free[r]
                    if x.kind == "B":
                        done[("I", x.stage, x.mb)] = free[r]
                pos[r] += 1
                progressed = True
        if not progressed:
            raise RuntimeError("pipeline simulation deadlocked (inconsistent action lists)")
    return SimResult(max(free.values()), [busy[r] for r in sorted(busy)])


# ------------------------------------------------------------------------------ layer times
def estimate_layer_times(cfg: ModelConfig, tokens: int, gpu: str = "H800", mfu: float = 0.35) -> tuple[float, float, float]:
    """(F, I, W) seconds per average decoder layer for `tokens` tokens, from FLOPs at `mfu` of the
    BF16 peak; backward = 2× forward, split evenly between input and weight gradients."""
    spec = lookup(gpu)
    if spec is None:
        raise ValueError(f"unknown GPU {gpu!r}: give --f-ms/--b-ms/--w-ms or --measure")
    fl = flops_per_token(cfg, 4096 if tokens >= 4096 else tokens, mtp=False)
    per_layer = (fl.fwd - fl.lm_head) / cfg.num_hidden_layers
    f = per_layer * tokens / (mfu * spec.bf16)
    return f, f, f


def measure_layer_times(cfg: ModelConfig, micro_batch: int, seq: int, device: str = "cpu", reps: int = 3) -> tuple[float, float, float]:
    """Time one MoE decoder layer here: forward, backward for inputs only, full backward (W = full − I)."""
    from ..model.block import DecoderLayer
    from ..model.rope import RotaryEmbedding

    dev = torch.device(device)
    layer = DecoderLayer(cfg, cfg.first_k_dense_replace, cfg.is_moe).to(dev)
    cos, sin = RotaryEmbedding(cfg).to(dev)(torch.arange(seq, device=dev)[None])
    x = torch.randn(micro_batch, seq, cfg.hidden_size, device=dev, requires_grad=True)

    def timed(fn) -> float:
        fn()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(reps):
            fn()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        return (time.perf_counter() - t) / reps

    f = timed(lambda: layer(x, cos, sin))
    fi = timed(lambda: torch.autograd.grad(layer(x, cos, sin).sum(), x))
    fb = timed(lambda: layer(x, cos, sin).sum().backward())
    return f, max(fi - f, 0.0), max(fb - fi, 0.0)


# ------------------------------------------------------------------------------ the plan
@dataclass
class Plan:
    layout: dict
    memory_gb: dict  # per GPU, 1F1B and DualPipeV activation variants
    a2a: dict  # all-to-all bytes per GPU per step and time at the given bandwidths
    layer_ms: dict  # F, I, W per layer per micro-batch
    bubbles: dict  # schedule -> simulated / formula bubble (ms) and fractions


def bubbles(pp: int, n: int, layers: int, f: float, i: float, w: float) -> dict:
    """1F1B and DualPipeV (no overlap / perfect overlap): simulated vs the DualPipe README formula."""
    F1, B1 = f * layers / pp, (i + w) * layers / pp  # 1F1B: one stage of L/pp layers per rank
    s = simulate(one_f_one_b(pp, n), pp, F1, i * layers / pp, w * layers / pp)
    out = {"1F1B": {"sim_ms": s.bubble * 1e3, "formula_ms": (pp - 1) * (F1 + B1) * 1e3, "frac": s.bubble_frac,
                    "step_ms": s.makespan * 1e3}}
    acts = dualpipe_v(pp, n) if n >= 2 * pp else None
    if acts is not None:
        c = layers / (2 * pp)  # DualPipeV: 2·pp chunks of L/(2pp) layers
        Fc, Ic, Wc = f * c, i * c, w * c
        for name, ov in (("DualPipeV", 0.0), ("DualPipeV+overlap", 1.0)):
            r = simulate(acts, 2 * pp, Fc, Ic, Wc, ov)
            fb = Fc + Ic + Wc - ov * min(Fc, Ic + Wc)
            out[name] = {"sim_ms": r.bubble * 1e3, "formula_ms": (pp - 1) * (fb + Ic + Wc - 3 * Wc) * 1e3,
                         "frac": r.bubble_frac, "step_ms": r.makespan * 1e3}
    for v in out.values():
        v["vs_1F1B"] = v["sim_ms"] / max(out["1F1B"]["sim_ms"], 1e-12)
    return out


def make_plan(cfg: ModelConfig, gpus: int, pp: int, ep: int, micro_batch: int = 1, seq: int = 4096,
              global_batch: int = 15360, times: tuple[float, float, float] | None = None, gpu: str = "H800",
              mfu: float = 0.35, zero: int = 1, moments: str = "bf16", recompute: bool = False, dispatch_bytes: int = 1, combine_bytes: int = 2,
              gpus_per_node: int = 8, nvlink_gbs: float = 160.0, ib_gbs: float = 50.0) -> Plan:
    if gpus % pp:
        raise ValueError(f"{gpus} GPUs are not divisible by pp={pp}")
    dp = gpus // pp
    lay = Layout(dp=dp, ep=ep, pp=pp, zero=zero, micro_batch=micro_batch, seq_len=seq, moments=moments, recompute=recompute)
    n = max(1, global_batch // (dp * micro_batch))  # micro-batches per step per pipeline
    tokens = micro_batch * seq
    f, i, w = times or estimate_layer_times(cfg, tokens, gpu, mfu)
    m = memory_per_gpu(cfg, lay)
    act_v = m.activations * (2 * pp + 1) / (2 * pp)  # DualPipe(V): PP+1 half-size chunks in flight vs PP
    mem = {"params": m.params / GB, "grads": m.grads / GB, "optimizer": m.optimizer / GB,
           "activations_1F1B": m.activations / GB, "activations_DualPipeV": act_v / GB,
           "total_1F1B": m.total / GB, "total_DualPipeV": (m.total - m.activations + act_v) / GB}
    # All-to-all per GPU per step: every token of its micro-batches, in each MoE layer of its stage,
    # sends K copies out (dispatch, FP8 in V3) and gets K back (combine, BF16); backward mirrors both.
    n_moe = sum(cfg.is_moe_layer(j) for j in range(cfg.num_hidden_layers)) / pp
    tok = n * tokens
    pairs = tok * n_moe * cfg.num_experts_per_tok * (ep - 1) / ep
    a2a = 2 * pairs * cfg.hidden_size * (dispatch_bytes + combine_bytes)
    nodes = max(1, ep // gpus_per_node)
    fanout = min(cfg.topk_group if cfg.n_group == nodes else cfg.num_experts_per_tok, nodes)  # node-limited routing
    ib = 2 * tok * n_moe * fanout * (nodes - 1) / nodes * cfg.hidden_size * (dispatch_bytes + combine_bytes)
    a2a_d = {"tokens_per_gpu": tok, "moe_layers_per_gpu": n_moe, "bytes_per_gpu": a2a, "ib_bytes_per_gpu": ib,
             "nodes_per_ep_group": nodes, "nodes_per_token": fanout,
             "seconds_nvlink": a2a / (nvlink_gbs * GB), "seconds_ib": ib / (ib_gbs * GB)}
    b = bubbles(pp, n, cfg.num_hidden_layers, f, i, w) if pp > 1 else {}
    return Plan({"gpus": gpus, "pp": pp, "dp": dp, "ep": ep, "micro_batch": micro_batch, "seq": seq,
                 "microbatches": n, "zero": zero}, mem, a2a_d, {"F": f * 1e3, "I": i * 1e3, "W": w * 1e3}, b)


def render(p: Plan, name: str) -> str:
    L = p.layout
    out = [f"## {name} on {L['gpus']} GPUs: PP{L['pp']} × DP{L['dp']} (EP{L['ep']} inside DP), "
           f"{L['microbatches']} micro-batches of {L['micro_batch']}×{L['seq']} tokens per step",
           "", "| memory per GPU (GB) | value |", "|---|---|"]
    out += [f"| {k} | {v:.3g} |" for k, v in p.memory_gb.items()]
    a = p.a2a
    out += ["", f"all-to-all per GPU per step: {a['bytes_per_gpu'] / GB:.3g} GB over {a['moe_layers_per_gpu']:.1f} MoE layers "
            f"({a['seconds_nvlink']:.2f} s at NVLink speed); cross-node with node-limited routing "
            f"(≤{a['nodes_per_token']} of {a['nodes_per_ep_group']} nodes per token): {a['ib_bytes_per_gpu'] / GB:.3g} GB "
            f"({a['seconds_ib']:.2f} s at IB speed)",
            "", f"layer times per micro-batch (ms): F {p.layer_ms['F']:.2f}, I {p.layer_ms['I']:.2f}, W {p.layer_ms['W']:.2f}"]
    if p.bubbles:
        out += ["", "| schedule | bubble simulated (ms) | DualPipe README formula (ms) | bubble / step | vs 1F1B |", "|---|---|---|---|---|"]
        out += [f"| {k} | {v['sim_ms']:.1f} | {v['formula_ms']:.1f} | {v['frac']:.1%} | {v['vs_1F1B']:.2f} |" for k, v in p.bubbles.items()]
    return "\n".join(out)


def main_plan(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="nanoseek plan", description="memory, all-to-all volume and pipeline bubbles of a layout")
    ap.add_argument("--model", default="671b", help="model preset or config path")
    ap.add_argument("--gpus", type=int, default=2048)
    ap.add_argument("--pp", type=int, default=16)
    ap.add_argument("--ep", type=int, default=64)
    ap.add_argument("--micro-batch", type=int, default=1)
    ap.add_argument("--seq", type=int, default=4096)
    ap.add_argument("--global-batch", type=int, default=15360, help="sequences per step (V3: 15360)")
    ap.add_argument("--gpu", default="H800")
    ap.add_argument("--mfu", type=float, default=0.35, help="for layer times estimated from FLOPs")
    ap.add_argument("--f-ms", type=float, help="given forward time of one layer per micro-batch (ms)")
    ap.add_argument("--b-ms", type=float, help="given backward-for-inputs time (ms)")
    ap.add_argument("--w-ms", type=float, help="given backward-for-weights time (ms)")
    ap.add_argument("--measure", action="store_true", help="time one MoE layer on this machine instead")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--zero", type=int, default=1, help="ZeRO level of the memory estimate (V3: 1)")
    ap.add_argument("--recompute", action="store_true", help="full activation checkpointing in the memory estimate")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    cfg = ModelConfig.load(a.model)
    times = None
    if a.measure:
        times = measure_layer_times(cfg, a.micro_batch, a.seq, a.device)
    elif a.f_ms is not None:
        times = (a.f_ms / 1e3, (a.b_ms if a.b_ms is not None else a.f_ms) / 1e3, (a.w_ms if a.w_ms is not None else a.f_ms) / 1e3)
    p = make_plan(cfg, a.gpus, a.pp, a.ep, a.micro_batch, a.seq, a.global_batch, times, a.gpu, a.mfu, a.zero, recompute=a.recompute)
    print(json.dumps(asdict(p), indent=2) if a.json else render(p, a.model))
    return 0

"""Generation with the compressed MLA cache (ARCHITECTURE.md §3.3; design note: docs/generation.md).

Cache: per layer, row and slot only [c_kv | k_pe], the normalised latent (kv_lora_rank) and the
RoPE'd shared key (qk_rope_head_dim): (512 + 64) × 2 bytes per layer and token in bf16 for V3,
against 128 × (192 + 128) elements for a per-head K/V cache.

Flow: prompts are left-padded to P (positions restart at 0 at each prompt's first real token;
padded keys are masked). The prefill runs the naive path and fills slots [0, P). Each decode step
then feeds one token per row through the absorbed path with *static shapes*: it writes slot
`write_pos` (a device tensor, the same for every row), attends over the whole max_len buffer under
a bool key mask and returns (B, V) logits. Nothing in the step depends on the step number on the
host, so on CUDA it is captured once in a CUDA graph and replayed (`SamplingConfig.cuda_graph`);
the graph, its cache and input buffers are kept per model and reused by later calls with the same
batch size and rounded max_len (`release_decode_graph` frees them). Sampling stays outside the
graph. The host checks whether every row has stopped only every `ALIVE_CHECK_EVERY` steps.
"""

from __future__ import annotations

import contextlib
import itertools
import warnings
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from .config import ModelConfig

ALIVE_CHECK_EVERY = 16  # decode steps between host syncs on "every row has stopped"
LEN_MULTIPLE = 64  # max_len is rounded up to this: aligned SDPA masks, graphs reused across prompt lengths


class LatentCache:
    """kv (n_layers, B, max_len, dc+dr) = [c_kv | k_pe]; `c_kv`, `k_pe` are views of it.

    `update` writes either at a host offset `start` (prefill, chunked use; returns the filled
    prefix) or, in static mode, at the device index `write_pos` (decode step; returns the whole
    buffer, whose valid keys `key_mask` (B, max_len) marks).
    """

    def __init__(self, cfg: ModelConfig, batch: int, max_len: int, device, dtype) -> None:
        n, dc = cfg.num_hidden_layers, cfg.kv_lora_rank
        self.kv = torch.zeros(n, batch, max_len, dc + cfg.qk_rope_head_dim, device=device, dtype=dtype)
        self.c_kv, self.k_pe = self.kv[..., :dc], self.kv[..., dc:]
        self.key_mask = torch.zeros(batch, max_len, dtype=torch.bool, device=device)  # written, non-padding
        self.write_pos = torch.zeros(1, dtype=torch.long, device=device)  # static mode: this step's slot
        self.static = False

    def update(self, layer: int, c_kv: torch.Tensor, k_pe: torch.Tensor, start: int) -> torch.Tensor:
        """Write c_kv (B,S,dc), k_pe (B,S,dr); return the keys to attend over, (B,T,dc+dr)."""
        if self.static:  # S == 1: slot from the device tensor, no host int that changes per step
            self.kv[layer].index_copy_(1, self.write_pos, torch.cat([c_kv, k_pe], dim=-1).to(self.kv.dtype))
            return self.kv[layer]
        end = start + c_kv.shape[1]
        self.c_kv[layer, :, start:end] = c_kv
        self.k_pe[layer, :, start:end] = k_pe
        return self.kv[layer, :, :end]

    @staticmethod
    def bytes_per_token(cfg: ModelConfig, dtype: torch.dtype = torch.bfloat16) -> int:
        """Cache bytes per token over all layers: n_layers × (kv_lora_rank + qk_rope_head_dim) × elem."""
        return cfg.num_hidden_layers * (cfg.kv_lora_rank + cfg.qk_rope_head_dim) * dtype.itemsize

    @staticmethod
    def mha_bytes_per_token(cfg: ModelConfig, dtype: torch.dtype = torch.bfloat16) -> int:
        """What a per-head K/V cache of the same model would hold (for comparison)."""
        return cfg.num_hidden_layers * cfg.num_attention_heads * (cfg.qk_head_dim + cfg.v_head_dim) * dtype.itemsize


@dataclass
class SamplingConfig:
    max_new_tokens: int = 64
    temperature: float = 0.0  # 0 = greedy
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1 = off
    stop_tokens: tuple[int, ...] = ()
    pad_id: int = 0
    seed: int | None = None
    cuda_graph: bool = True  # on CUDA, replay the decode step from a CUDA graph (eager fallback)


def sample_next(logits: torch.Tensor, temperature: float, top_k: int, top_p: float, generator=None) -> torch.Tensor:
    """logits (B,V) -> next token ids (B,). Greedy at temperature 0; else top-k, then nucleus."""
    if temperature <= 0:
        return logits.argmax(-1)
    logits = logits.float() / temperature
    if top_k > 0:
        kth = logits.topk(min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = logits.sort(-1, descending=True)
        probs = sorted_logits.softmax(-1)
        drop = probs.cumsum(-1) - probs > top_p  # keep the smallest prefix whose mass reaches top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    return torch.multinomial(logits.softmax(-1), 1, generator=generator).squeeze(-1)


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """-> ids (B,P) left-padded with pad_id, valid (B,P) bool."""
    P = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), P), pad_id, dtype=torch.long)
    valid = torch.zeros(len(prompts), P, dtype=torch.bool)
    for i, p in enumerate(prompts):
        if len(p):
            ids[i, P - len(p):] = torch.as_tensor(list(p))
            valid[i, P - len(p):] = True
    return ids.to(device), valid.to(device)


class Decoder:
    """Prefill, then the static-shape decode step over fixed buffers: eager, or a CUDA graph.

    The cache, `ids` (B,1) (the token fed this step) and `pos` (B,1) (its RoPE position) live at
    fixed addresses, so a graph captured once replays for every step and for later calls.
    """

    def __init__(self, model, batch: int, max_len: int, device, dtype, use_graph: bool = False) -> None:
        self.cache = LatentCache(model.config, batch, max_len, device, dtype)
        self.ids = torch.zeros(batch, 1, dtype=torch.long, device=device)
        self.pos = torch.zeros(batch, 1, dtype=torch.long, device=device)
        self.use_graph = use_graph and self.ids.is_cuda  # capture at the first step (one attempt)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.logits: torch.Tensor | None = None  # the graph's static output (B,V)

    def prefill(self, model, ids, pos, valid, padded: bool) -> torch.Tensor:
        """ids, pos, valid (B,P) -> last-position logits (B,V); fills slots [0,P), arms static mode."""
        c, P = self.cache, ids.shape[1]
        c.static = False
        c.kv[:, :, P:].zero_()  # stale slots are masked, but must stay finite (0·NaN = NaN in P@V)
        c.key_mask.zero_()
        c.key_mask[:, :P] = valid
        out = model(ids, position_ids=pos, attention_mask=valid if padded else None, cache=c, start=0, compute_logits=False)
        c.write_pos.fill_(P)
        self.pos.copy_(pos[:, -1:] + 1)
        c.static = True
        return model.lm_head(out.hidden[:, -1])

    def _step(self, model) -> torch.Tensor:
        """The captured region: ids/pos/cache -> logits (B,V). Idempotent until write_pos moves."""
        c = self.cache
        c.key_mask.index_fill_(1, c.write_pos, True)  # this step's key becomes visible
        h = model(self.ids, position_ids=self.pos, cache=c, compute_logits=False).hidden[:, -1]
        return model.lm_head(h)

    def step(self, model, nxt: torch.Tensor) -> torch.Tensor:
        """Feed nxt (B,) at the current slot, then advance; -> logits (B,V), valid until the next step."""
        self.ids.copy_(nxt[:, None])
        if self.use_graph:
            self.use_graph = False
            self._capture(model)
        if self.graph is not None:
            self.graph.replay()
            logits = self.logits
        else:
            logits = self._step(model)
        self.cache.write_pos.add_(1)
        self.pos.add_(1)
        return logits

    def _capture(self, model) -> None:
        # Under autocast (fp32 master weights), the weight casts must be recorded in the graph:
        # autocast's cast cache would hand it bf16 copies that are freed when the context exits.
        amp = _amp_state("cuda")
        no_cache = torch.autocast("cuda", dtype=amp[1], cache_enabled=False) if amp[0] else contextlib.nullcontext()
        try:
            with torch.cuda.device(self.ids.device), no_cache:
                side = torch.cuda.Stream()
                side.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(side):  # warm-up (lazy inits, workspaces), as the graph docs require
                    _no_host_sync(lambda: self._step(model))  # same inputs -> same cache writes: harmless
                    for _ in range(2):
                        self._step(model)
                torch.cuda.current_stream().wait_stream(side)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph):
                    self.logits = self._step(model)
                self.graph = graph
        except Exception as e:  # e.g. an op that syncs with the host: decode eagerly
            self.graph = self.logits = None
            torch.cuda.synchronize(self.ids.device)  # let the side-stream warm-up finish first
            _warn_once(f"nanoseek.generate: CUDA graph capture of the decode step failed, decoding eagerly ({type(e).__name__}: {e})")


def _no_host_sync(fn) -> None:
    """Run fn eagerly with host syncs made errors: a sync (e.g. torch's fp32 grouped_mm fallback,
    which copies `offs` to the host) cannot be captured, and failing here leaves no broken capture."""
    mode = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")
    try:
        fn()
    finally:
        torch.cuda.set_sync_debug_mode(mode)


_warned = False


def _warn_once(msg: str) -> None:
    global _warned
    if not _warned:
        _warned = True
        warnings.warn(msg, RuntimeWarning, stacklevel=3)


# model -> (key, Decoder): one graphed decoder per model, dropped with the model.
_GRAPHED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _amp_state(device_type: str) -> tuple[bool, torch.dtype]:
    return torch.is_autocast_enabled(device_type), torch.get_autocast_dtype(device_type)


def _graph_key(model, batch: int, max_len: int, dtype) -> tuple:
    """What a captured graph depends on: shapes, the addresses of every weight, the kernel choices."""
    ptrs = tuple(t.data_ptr() for t in itertools.chain(model.parameters(), model.buffers()))
    impls = tuple(getattr(m, "impl", None) for m in model.modules())
    return batch, max_len, dtype, model.training, _amp_state("cuda"), ptrs, impls


def _decoder(model, batch: int, max_len: int, device, dtype, cuda_graph: bool) -> Decoder:
    if not (cuda_graph and torch.device(device).type == "cuda"):
        return Decoder(model, batch, max_len, device, dtype)
    key = _graph_key(model, batch, max_len, dtype)
    hit = _GRAPHED.get(model)
    if hit is not None and hit[0] == key:
        return hit[1]
    del hit
    _GRAPHED.pop(model, None)  # free the old graph and cache first
    dec = Decoder(model, batch, max_len, device, dtype, use_graph=True)
    _GRAPHED[model] = (key, dec)
    return dec


def release_decode_graph(model) -> None:
    """Free the CUDA graph, its memory pool and the cache kept for `model` by earlier `generate` calls."""
    _GRAPHED.pop(model, None)


@torch.inference_mode()
def generate(model, prompts: Sequence[Sequence[int]], cfg: SamplingConfig | None = None,
             on_token: Callable[[torch.Tensor, torch.Tensor], None] | None = None, **kw) -> list[list[int]]:
    """Sample continuations for a batch of token-id prompts; returns the new tokens per prompt
    (stop token excluded). `on_token(next_ids (B,), alive (B,))` is called after each step (streaming;
    after a row stops it receives pad_id; up to ALIVE_CHECK_EVERY - 1 steps may follow the last stop).
    """
    cfg = cfg or SamplingConfig(**kw)
    if any(len(p) == 0 for p in prompts):
        raise ValueError("generate: every prompt needs at least one token (e.g. the BOS token)")
    N = cfg.max_new_tokens
    if N <= 0:
        return [[] for _ in prompts]
    dev = next(model.parameters()).device
    dtype = next(p for p in model.parameters() if p.is_floating_point()).dtype
    ids, valid = left_pad(prompts, cfg.pad_id, dev)
    B, P = ids.shape
    pos = (valid.long().cumsum(-1) - 1).clamp(min=0)  # (B,P)
    dec = _decoder(model, B, -(-(P + N) // LEN_MULTIPLE) * LEN_MULTIPLE, dev, dtype, cfg.cuda_graph)
    gen = torch.Generator(device=dev).manual_seed(cfg.seed) if cfg.seed is not None else None
    stops = torch.tensor(cfg.stop_tokens, device=dev) if cfg.stop_tokens else None

    logits = dec.prefill(model, ids, pos, valid, padded=len({len(p) for p in prompts}) > 1)
    tokens = torch.full((B, N), cfg.pad_id, dtype=torch.long, device=dev)
    alive = torch.ones(B, dtype=torch.bool, device=dev)
    for t in range(N):
        nxt = sample_next(logits, cfg.temperature, cfg.top_k, cfg.top_p, gen)
        if stops is not None:
            nxt = torch.where(alive, nxt, cfg.pad_id)
            alive = alive & ~torch.isin(nxt, stops)
        tokens[:, t] = nxt
        if on_token is not None:
            on_token(nxt, alive)
        if t == N - 1:
            break
        if stops is not None and (t + 1) % ALIVE_CHECK_EVERY == 0 and not bool(alive.any()):  # the only host sync
            break
        logits = dec.step(model, nxt)
    return _trim(tokens[:, : t + 1].tolist(), set(cfg.stop_tokens))


def _trim(rows: list[list[int]], stops: set[int]) -> list[list[int]]:
    out = []
    for r in rows:
        cut = next((i for i, t in enumerate(r) if t in stops), len(r))
        out.append(r[:cut])
    return out

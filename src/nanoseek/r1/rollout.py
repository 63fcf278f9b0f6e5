"""Rollouts for GRPO/PPO: prompts -> G sampled completions each -> rewards -> padded training batch.

Shared by `grpo.py` and `ppo.py`. Sequences are grouped contiguously (rows g*G..g*G+G-1 share a
prompt, the layout `objective.py` expects). The training batch is right-padded prompt+completion;
log-probs are taken only at completion positions: the hidden state at position p-1+t predicts
completion token t, so lm_head runs on (N, Tc, d) rows and never on prompt or padding positions.
"""

from __future__ import annotations

import contextlib
import itertools
import random
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..data.tokenizer import Tokenizer, apply_chat_template
from ..model.moe import expert_counts
from .objective import entropy_from_logits, token_logprobs
from .tasks import R1_TEMPLATE, is_task_file, load_jsonl, train_stream

_R1_HEAD, _R1_TAIL = R1_TEMPLATE.split("{prompt}")


# ----------------------------------------------------------------------------- prompts


def question_of(example: dict) -> str:
    """The bare question: an explicit `question` key, else the prompt with the R1-Zero template
    (tasks.make_prompt) stripped, else the prompt itself."""
    if example.get("question"):
        return str(example["question"])
    p = str(example["prompt"])
    if p.startswith(_R1_HEAD) and _R1_TAIL.strip() in p:
        return p[len(_R1_HEAD):p.rindex(_R1_TAIL.strip())].strip()
    return p


def render_prompt(example: dict, fmt: str = "chat") -> str:
    """Prompt text the policy continues.

    chat: `<bos><|User|>{question}<|Assistant|><think>\\n`, the format the built-in pretraining
          corpus and SFT teach (the `<think>` prefill is what R1's chat template does; the format
          reward re-attaches it, R1.md §6.5).
    r1:   the R1-Zero Table-1 template text as stored in the example (R1.md §1.2), after BOS.
    """
    if fmt == "chat":
        return apply_chat_template([{"role": "user", "content": question_of(example)}],
                                   add_generation_prompt=True, open_think=True)
    if fmt == "r1":
        return str(example["prompt"])
    raise ValueError(f"prompt_format must be chat|r1, got {fmt!r}")


def encode_prompt(tok: Tokenizer, text: str) -> list[int]:
    """Token ids; BOS is added unless the text already starts with it (chat template)."""
    ids = tok.encode(text)
    return ids if ids and ids[0] == tok.bos_id else [tok.bos_id, *ids]


class ExampleSource:
    """Endless training examples from a built-in task or a JSONL file, resumable by count.

    Built-in tasks stream from `tasks.train_stream` (never an evaluation problem); a JSONL file is
    cycled in a seeded shuffled order, reshuffled every epoch.
    """

    def __init__(self, task: str, level: int | list[int] = 1, seed: int = 0) -> None:
        self.task, self.level, self.seed, self.drawn = task, level, seed, 0
        self._it = self._make()

    def _make(self) -> Iterator[dict]:
        if is_task_file(self.task):
            rows = load_jsonl(self.task, wrap_prompt=True)  # as evaluate.eval_examples

            def cycle():
                for epoch in itertools.count():
                    order = list(range(len(rows)))
                    random.Random(f"{self.seed}|{epoch}").shuffle(order)
                    yield from (rows[i] for i in order)
            return cycle()
        return train_stream(self.task, self.level, self.seed)

    def draw(self, n: int) -> list[dict]:
        self.drawn += n
        return list(itertools.islice(self._it, n))

    def skip_to(self, drawn: int) -> None:
        """Fast-forward a fresh source to where a checkpointed run stopped."""
        self._it, self.drawn = self._make(), 0
        self.draw(drawn)


def eval_examples(task: str, n: int, level: int | list[int] = 1, seed: int = 0) -> list[dict]:
    """Held-out examples (built-in split, or the first n of a JSONL file): `evaluate.eval_examples`."""
    from .evaluate import eval_examples as ev

    return ev(task, n, level, seed)


# ----------------------------------------------------------------------------- sampling


@dataclass
class Samples:
    """N = P*G sampled sequences, grouped by prompt."""

    examples: list[dict]  # (N,) the example of each row (each repeated G times)
    prompts: list[str]  # (N,) rendered prompt text
    prompt_ids: list[list[int]]
    completion_ids: list[list[int]]  # generated tokens, the stop token excluded
    completions: list[str]
    truncated: Tensor  # (N,) bool: hit max_new_tokens without a stop token
    rewards: Tensor | None = None  # (N,) weighted total
    reward_info: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.completions)

    def select(self, keep: Tensor) -> "Samples":
        """Rows where keep (N,) bool is True (dynamic sampling drops whole groups)."""
        idx = keep.nonzero().flatten().tolist()
        pick = lambda xs: [xs[i] for i in idx]  # noqa: E731
        info = {"per_func": {k: pick(v) for k, v in self.reward_info.get("per_func", {}).items()},
                "errors": self.reward_info.get("errors", {})}
        return Samples(pick(self.examples), pick(self.prompts), pick(self.prompt_ids),
                       pick(self.completion_ids), pick(self.completions), self.truncated[keep],
                       None if self.rewards is None else self.rewards[keep], info)

    @staticmethod
    def cat(parts: list["Samples"]) -> "Samples":
        first = parts[0]
        info = {"per_func": {k: sum((p.reward_info["per_func"][k] for p in parts), [])
                             for k in first.reward_info.get("per_func", {})},
                "errors": first.reward_info.get("errors", {})}
        return Samples(*(sum((getattr(p, f) for p in parts), []) for f in
                         ("examples", "prompts", "prompt_ids", "completion_ids", "completions")),
                       torch.cat([p.truncated for p in parts]),
                       None if first.rewards is None else torch.cat([p.rewards for p in parts]), info)


def precision_ctx(device: torch.device):
    """bf16 autocast on CUDA (fp32 master weights), plain fp32 on CPU."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def sample_groups(model, tok: Tokenizer, examples: list[dict], group_size: int, *,
                  max_new_tokens: int, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                  prompt_format: str = "chat", seed: int | None = None,
                  gen_batch_size: int = 0) -> Samples:
    """G completions for each example with the latent-cache sampler (`model.generate`)."""
    rows = [ex for ex in examples for _ in range(group_size)]
    texts = [render_prompt(ex, prompt_format) for ex in rows]
    ids = [encode_prompt(tok, t) for t in texts]
    bs = gen_batch_size or len(ids)
    was_training = model.training
    model.eval()
    outs: list[list[int]] = []
    dev = next(model.parameters()).device
    with precision_ctx(dev):
        for i in range(0, len(ids), bs):
            outs += model.generate(ids[i:i + bs], max_new_tokens=max_new_tokens,
                                   temperature=temperature, top_k=top_k, top_p=top_p,
                                   stop_tokens=(tok.eos_id,), pad_id=tok.pad_id or 0,
                                   seed=None if seed is None else seed + i)
    model.train(was_training)
    # generate() drops the stop token: a full-length row never stopped (a stop sampled at the
    # last slot leaves N-1 tokens), so len == max_new_tokens means truncated.
    trunc = torch.tensor([len(o) >= max_new_tokens for o in outs], dtype=torch.bool)
    comps = [tok.decode(o) for o in outs]
    return Samples(rows, texts, ids, outs, comps, trunc)


def score(samples: Samples, reward_set) -> Samples:
    """Fill `rewards` (N,) and `reward_info` from a `RewardSet`. Columns: every example key
    (answer, numbers, target, ...), plus prompts, completion_ids and completion_lengths."""
    cols: dict[str, list] = {}
    for key in samples.examples[0]:
        if key != "prompt":
            cols[key] = [ex.get(key) for ex in samples.examples]
    cols.update(prompts=samples.prompts, completion_ids=samples.completion_ids,
                completion_lengths=[len(c) for c in samples.completion_ids])
    total, info = reward_set(samples.completions, **cols)
    samples.rewards, samples.reward_info = torch.tensor(total, dtype=torch.float32), info
    return samples


# ----------------------------------------------------------------------------- training batch


@dataclass
class Batch:
    """Right-padded prompt+completion tensors for N rows (all on one device)."""

    input_ids: Tensor  # (N, L) prompt + completion (+ eos), right-padded
    attention_mask: Tensor  # (N, L) 1 = real token
    gather_idx: Tensor  # (N, Tc) position whose hidden state predicts completion token t
    targets: Tensor  # (N, Tc) completion tokens (+ eos when the row stopped)
    mask: Tensor  # (N, Tc) float, 1 on real completion tokens
    input_mask: Tensor  # (N, L) bool, True where a completion token is the *input* (router counts)
    truncated: Tensor  # (N,) bool

    def __getitem__(self, idx) -> "Batch":
        return Batch(*(getattr(self, f)[idx] for f in self.__dataclass_fields__))

    @property
    def n(self) -> int:
        return self.input_ids.shape[0]


def build_batch(samples: Samples, eos_id: int, pad_id: int, device) -> Batch:
    """Stopped rows get their eos appended, so the policy is also taught *when to stop*."""
    comps = [c + ([] if t else [eos_id]) for c, t in zip(samples.completion_ids,
                                                        samples.truncated.tolist())]
    N = len(comps)
    L = max(len(p) + len(c) for p, c in zip(samples.prompt_ids, comps))
    Tc = max(1, max(len(c) for c in comps))
    ids = torch.full((N, L), pad_id, dtype=torch.long)
    att = torch.zeros(N, L, dtype=torch.long)
    gidx = torch.zeros(N, Tc, dtype=torch.long)
    tgt = torch.full((N, Tc), pad_id, dtype=torch.long)
    mask = torch.zeros(N, Tc)
    inp = torch.zeros(N, L, dtype=torch.bool)
    for i, (p, c) in enumerate(zip(samples.prompt_ids, comps)):
        n, m = len(p), len(c)
        ids[i, :n + m] = torch.tensor(p + c)
        att[i, :n + m] = 1
        gidx[i] = torch.arange(n - 1, n - 1 + Tc).clamp(max=L - 1)
        tgt[i, :m] = torch.tensor(c, dtype=torch.long)
        mask[i, :m] = 1
        inp[i, n:n + m] = True
    return Batch(ids.to(device), att.to(device), gidx.to(device), tgt.to(device), mask.to(device),
                 inp.to(device), samples.truncated.to(device))


@contextlib.contextmanager
def route_counter(model, token_mask: Tensor):
    """Count experts chosen by the tokens under token_mask (B, S) during forwards in this block.

    Yields a callable -> (n_moe_layers, E) counts in `model.moe_layers()` order (MTP layers that
    did not run count 0), the input `update_router_bias` expects. Prompt and padding tokens are
    left out: the bias should follow the load of the tokens the policy is trained on.
    """
    layers = model.moe_layers()
    E = model.config.n_routed_experts
    flat = token_mask.reshape(-1)
    acc = {i: torch.zeros(E, dtype=torch.long, device=flat.device) for i in range(len(layers))}

    def make(i):
        def hook(_mod, _inp, out):
            if out.indices.shape[0] == flat.shape[0]:
                acc[i] += expert_counts(out.indices[flat].reshape(-1), E)
        return hook

    handles = [m.gate.register_forward_hook(make(i)) for i, m in enumerate(layers)]
    try:
        yield lambda: torch.stack([acc[i] for i in range(len(layers))]) if layers else None
    finally:
        for h in handles:
            h.remove()


def completion_logprobs(model, b: Batch, entropy: bool = False) -> tuple[Tensor, Tensor | None]:
    """log pi(completion token) (N, Tc) and optionally its entropy (N, Tc, no grad).

    lm_head runs only on the gathered completion positions: (N, Tc, d) -> (N, Tc, V).
    """
    with precision_ctx(b.input_ids.device):
        out = model(b.input_ids, attention_mask=b.attention_mask, compute_logits=False)
        h = out.hidden.gather(1, b.gather_idx[..., None].expand(-1, -1, out.hidden.shape[-1]))
        logits = model.lm_head(h)  # (N, Tc, V)
    logp = token_logprobs(logits, b.targets)
    ent = None
    if entropy:
        with torch.no_grad():
            ent = entropy_from_logits(logits.detach())
    return logp, ent


@torch.no_grad()
def batched_logprobs(model, b: Batch, micro: int) -> Tensor:
    """No-grad log-probs (N, Tc) in micro-batches (pi_old, pi_ref)."""
    return torch.cat([completion_logprobs(model, b[i:i + micro])[0] for i in range(0, b.n, micro)])

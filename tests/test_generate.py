"""Latent-cache generation: greedy equals repeated full forwards, sampling controls, cache size."""

import pytest
import torch

from hf_util import hf_model
from nanoseek.model import DeepSeekV3, ModelConfig
from nanoseek.model.generate import ALIVE_CHECK_EVERY, Decoder, LatentCache, left_pad, sample_next
from nanoseek.model.hf import load_into


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return DeepSeekV3(ModelConfig.preset("tiny")).eval()


def greedy_by_full_forward(m, prompt, n):
    ids = list(prompt)
    for _ in range(n):
        with torch.no_grad():
            ids.append(int(m(torch.tensor([ids])).logits[0, -1].argmax()))
    return ids[len(prompt):]


def test_cached_greedy_equals_uncached_on_ragged_batch(model):
    prompts = [[5, 6, 7, 8, 9, 10, 11], [3, 4], [12]]
    got = model.generate(prompts, max_new_tokens=10)
    for p, g in zip(prompts, got):
        assert g == greedy_by_full_forward(model, p, 10)


def test_absorbed_decode_matches_naive_logits(model):
    ids = torch.randint(0, 2048, (2, 12))
    cache = LatentCache(model.config, 2, 12, "cpu", torch.float32)
    with torch.no_grad():
        full = model(ids).logits
        model(ids[:, :8], cache=cache, start=0)
        for t in range(8, 12):  # one token at a time through the absorbed path
            step = model(ids[:, t: t + 1], cache=cache, start=t).logits[:, 0]
            torch.testing.assert_close(step, full[:, t], rtol=1e-4, atol=1e-5)


def test_cached_decode_matches_transformers_cache():
    hf = hf_model()
    ours = DeepSeekV3(ModelConfig.from_hf(hf.config.to_dict())).eval()
    load_into(ours, hf.state_dict())
    prompt = [[1, 17, 33, 50, 2, 9]]
    with torch.no_grad():
        ref = hf.generate(torch.tensor(prompt), max_new_tokens=12, do_sample=False, use_cache=True,
                          pad_token_id=0, eos_token_id=None)[0, 6:].tolist()
    assert ours.generate(prompt, max_new_tokens=12)[0] == ref


def dynamic_cache_greedy(m, prompts, n):
    """The decode loop before static shapes: the cache prefix grows, host offsets, a per-step
    padded mask. -> (tokens per row, logits (B,V) of each decode step)."""
    ids, valid = left_pad(prompts, 0, "cpu")
    B, P = ids.shape
    cache = LatentCache(m.config, B, P + n, "cpu", torch.float32)
    key_valid = torch.ones(B, P + n, dtype=torch.bool)
    key_valid[:, :P] = valid
    pos = (valid.long().cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        logits = m(ids, position_ids=pos, attention_mask=valid, cache=cache, start=0).logits[:, -1]
        toks, steps = [], []
        for t in range(n):
            toks.append(logits.argmax(-1))
            logits = m(toks[-1][:, None], position_ids=pos[:, -1:] + t + 1, attention_mask=key_valid[:, : P + t + 1],
                       cache=cache, start=P + t).logits[:, 0]
            steps.append(logits)
    return torch.stack(toks, 1).tolist(), steps


def test_static_decode_step_matches_dynamic_cache(model):
    """The static-shape step (what a CUDA graph captures) run eagerly: whole buffer + key mask,
    device write index. Same logits per step and same tokens as the growing-prefix decode."""
    prompts = [[5, 6, 7, 8, 9, 10, 11], [3, 4], [12]]
    ref, ref_steps = dynamic_cache_greedy(model, prompts, 12)
    assert model.generate(prompts, max_new_tokens=12, cuda_graph=False) == ref
    ids, valid = left_pad(prompts, 0, "cpu")
    pos = (valid.long().cumsum(-1) - 1).clamp(min=0)
    dec = Decoder(model, 3, 64, "cpu", torch.float32)
    with torch.no_grad():
        logits = dec.prefill(model, ids, pos, valid, padded=True)
        for t, want in enumerate(ref_steps):
            logits = dec.step(model, torch.tensor(ref)[:, t])
            torch.testing.assert_close(logits, want, rtol=1e-4, atol=1e-5)
    assert dec.cache.static and int(dec.cache.write_pos) == 7 + 12
    assert dec.cache.key_mask.sum(-1).tolist() == [7 + 12, 2 + 12, 1 + 12]  # padding and unwritten slots stay masked


def test_stop_tokens_trim_with_batched_alive_check(model):
    prompts = [[5, 6, 7], [8, 9], [10, 11, 12, 13]]
    free = model.generate(prompts, max_new_tokens=40)
    stop = free[0][3]
    seen = []
    got = model.generate(prompts, max_new_tokens=40, stop_tokens=(stop,), on_token=lambda n, a: seen.append((n.clone(), a.clone())))
    assert got == [f[: f.index(stop)] if stop in f else f for f in free]
    k = free[0].index(stop)
    assert all(int(n[0]) == 0 and not bool(a[0]) for n, a in seen[k + 1:])  # a stopped row gets pad_id
    # every row stops within the first ALIVE_CHECK_EVERY steps: the loop ends at the first check
    seen.clear()
    got = model.generate([[5, 6, 7]] * 2, max_new_tokens=40, stop_tokens=(stop,), on_token=lambda n, a: seen.append(n))
    assert got == [free[0][:k]] * 2 and len(seen) == ALIVE_CHECK_EVERY


def test_stop_tokens_and_max_new_tokens(model):
    free = model.generate([[5, 6, 7]], max_new_tokens=6)[0]
    stop = free[2]
    got = model.generate([[5, 6, 7], [8, 9]], max_new_tokens=6, stop_tokens=(stop,))
    assert got[0] == free[: free.index(stop)]
    assert len(got[1]) <= 6


def test_sampling_is_seeded_and_respects_top_k_top_p(model):
    a = model.generate([[5, 6, 7]] * 3, max_new_tokens=8, temperature=1.0, top_k=50, seed=1)
    b = model.generate([[5, 6, 7]] * 3, max_new_tokens=8, temperature=1.0, top_k=50, seed=1)
    assert a == b
    assert model.generate([[5, 6]], max_new_tokens=5, temperature=0.7, top_k=1)[0] == model.generate([[5, 6]], max_new_tokens=5)[0]
    logits = torch.tensor([[3.0, 2.0, 1.0, -5.0]] * 2000)
    picks = sample_next(logits, 1.0, 0, 0.8, torch.Generator().manual_seed(0))
    # probs ≈ [.665, .245, .090, .0002]: the nucleus at 0.8 keeps tokens 0 and 1 only
    assert set(picks.tolist()) == {0, 1}
    picks = sample_next(logits, 1.0, 2, 1.0, torch.Generator().manual_seed(0))
    assert set(picks.tolist()) == {0, 1}


def test_cache_bytes_per_token():
    v3 = ModelConfig.preset("671b")
    assert LatentCache.bytes_per_token(v3) == 61 * (512 + 64) * 2 == 70272
    assert LatentCache.mha_bytes_per_token(v3) == 61 * 128 * (192 + 128) * 2
    c = LatentCache(ModelConfig.preset("tiny"), 2, 10, "cpu", torch.bfloat16)
    assert (c.c_kv.numel() + c.k_pe.numel()) * 2 == LatentCache.bytes_per_token(ModelConfig.preset("tiny")) * 2 * 10


def test_empty_prompt_is_an_error(model):
    with pytest.raises(ValueError, match="at least one token"):
        model.generate([[1], []], max_new_tokens=2)

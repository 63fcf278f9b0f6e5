"""GRPO / PPO trainers on a tiny random model: the update's direction and its loss, reference
handling, dynamic sampling, truncation masking, router bias, PPO's extra memory, a full run."""

import copy
import json
import random

import pytest
import torch

from nanoseek.data.corpus import arithmetic_document
from nanoseek.data.tokenizer import train_tokenizer
from nanoseek.model import DeepSeekV3, ModelConfig
from nanoseek.model.hf import save_pretrained
from nanoseek.r1 import grpo as grpo_mod
from nanoseek.r1.grpo import GRPOConfig, GRPOTrainer, run_grpo
from nanoseek.r1.objective import group_advantages, grpo_loss, mask_truncated
from nanoseek.r1.ppo import PPOConfig, PPOTrainer, compare_grpo_ppo_memory
from nanoseek.r1.rewards import RewardSet
from nanoseek.r1.rollout import (Samples, batched_logprobs, build_batch, completion_logprobs,
                                 encode_prompt, render_prompt, route_counter)
from nanoseek.r1.tasks import train_set


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models gain nothing from threads; on a shared 2-core box they can lose 10x."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def tok():
    rng = random.Random(0)
    docs = [arithmetic_document(rng, 1, rng.choice("+-*")) for _ in range(300)]
    return train_tokenizer(docs, vocab_size=400)


def tiny_model(tok, seed=0):
    torch.manual_seed(seed)
    cfg = ModelConfig.preset("tiny").replace(num_hidden_layers=2, hidden_size=64, vocab_size=tok.vocab_size,
                                              num_nextn_predict_layers=0)
    return DeepSeekV3(cfg)


def cfg_for(**over):
    base = {"rollout": {"prompts_per_step": 2, "group_size": 2, "max_new_tokens": 8},
            "optim": {"lr": 1e-2}, "train": {"device": "cpu", "steps": 2, "ckpt_every": 1, "eval_n": 0}}
    for k, v in over.items():
        base[k] = {**base.get(k, {}), **v} if isinstance(v, dict) else v
    return GRPOConfig(**base)


def crafted(tok, completions, rewards, truncated=None, n_examples=1):
    """Samples for fixed completion texts (rows grouped by example, G = len / n_examples)."""
    exs = train_set("arithmetic", n_examples, 1, seed=3)
    G = len(completions) // n_examples
    rows = [ex for ex in exs for _ in range(G)]
    prompts = [render_prompt(ex) for ex in rows]
    comp_ids = [tok.encode(c) for c in completions]
    trunc = torch.tensor(truncated or [False] * len(completions))
    return Samples(rows, prompts, [encode_prompt(tok, p) for p in prompts], comp_ids, list(completions), trunc,
                   torch.tensor(rewards, dtype=torch.float32), {"per_func": {}, "errors": {}})


def seq_logp(model, b):
    with torch.no_grad():
        return (completion_logprobs(model, b)[0] * b.mask).sum(1)


GOOD, BAD = "So 3 + 4 = 7.\n</think>\n<answer>7</answer>", "carry carry 1 write"


def test_step_moves_probability_toward_higher_reward(tok):
    tr = GRPOTrainer(cfg_for(grpo={"router": "frozen"}), tiny_model(tok), tok)
    s = crafted(tok, [GOOD, BAD], [1.0, 0.0])
    b = build_batch(s, tok.eos_id, tok.pad_id, "cpu")
    before = seq_logp(tr.model, b)
    for _ in range(3):
        tr.update(s, b)
    after = seq_logp(tr.model, b)
    assert after[0] > before[0] and after[1] < before[1]  # A = +0.707 / -0.707


@pytest.mark.parametrize("agg", ["grpo", "dapo", "dr_grpo"])
def test_step_loss_equals_objective_loss_with_micro_batches(tok, agg):
    """The logged loss of a step split into micro-batches of one row equals grpo_loss on the whole
    batch (same logp, ref logp, advantages, mask): the accumulation weights are exact."""
    cfg = cfg_for(grpo={"agg": agg, "beta": 0.1, "micro_batch_size": 1, "eps_high": 0.28})
    tr = GRPOTrainer(cfg, tiny_model(tok), tok)
    s = crafted(tok, [GOOD, BAD, GOOD + " 7", "7"], [1.0, 0.0, 0.5, 0.0], n_examples=2)
    b = build_batch(s, tok.eos_id, tok.pad_id, "cpu")
    ref_logp = batched_logprobs(tr.ref, b, 4)
    with torch.no_grad():
        logp, _ = completion_logprobs(tr.model, b)
    adv = group_advantages(s.rewards, 2, "group")
    want, _ = grpo_loss(logp, None, ref_logp, adv, mask_truncated(b.mask, b.truncated), eps_low=0.2,
                        eps_high=0.28, beta=0.1, agg=agg, max_len=cfg.rollout.max_new_tokens + 1)
    got = tr.update(s, b)
    assert got["optimizer_steps"] == 1
    assert got["loss"] == pytest.approx(float(want), abs=1e-6)


def test_beta_zero_builds_no_reference(tok):
    tr = GRPOTrainer(cfg_for(grpo={"beta": 0.0}), tiny_model(tok), tok)
    assert tr.ref is None and len(tr.held_models()) == 1
    tr = GRPOTrainer(cfg_for(grpo={"beta": 0.04}), tiny_model(tok), tok)
    assert tr.ref is not None and not any(p.requires_grad for p in tr.ref.parameters())
    assert len(tr.held_models()) == 2


def test_dynamic_sampling_drops_zero_std_groups_and_resamples(tok, monkeypatch):
    texts = ["a", "b", "a", "a", "b", "a"]  # groups of 2: spread, zero std, spread

    def fake_sample(model, tok_, examples, G, **kw):
        return crafted(tok, texts[:len(examples) * G], [0.0] * (len(examples) * G), n_examples=len(examples))

    monkeypatch.setattr(grpo_mod, "sample_groups", fake_sample)
    reward = RewardSet({lambda completions, **_: [float(c == "a") for c in completions]: 1.0})
    for max_resample, kept_groups in ((0, 2), (1, 3)):
        tr = GRPOTrainer(cfg_for(rollout={"prompts_per_step": 3}, grpo={"dynamic_sampling": True,
                                                                        "max_resample": max_resample}),
                         tiny_model(tok), tok)
        tr.rewards = reward
        s, st = tr.rollout()
        assert st["frac_reward_zero_std"] == pytest.approx(1 / 3)
        assert len(s) == 2 * kept_groups and st["sampling/rounds"] == max_resample + 1
        assert all(r.std() > 0 for r in s.rewards.view(-1, 2))
    tr = GRPOTrainer(cfg_for(rollout={"prompts_per_step": 3}), tiny_model(tok), tok)
    tr.rewards = reward
    assert len(tr.rollout()[0]) == 6  # without dynamic sampling every group is kept


def test_truncated_completions_are_masked(tok):
    s = crafted(tok, [BAD, GOOD], [0.0, 1.0], truncated=[True, False])
    b = build_batch(s, tok.eos_id, tok.pad_id, "cpu")
    assert b.targets[1, int(b.mask[1].sum()) - 1] == tok.eos_id  # a stopped row learns to stop
    assert b.targets[0, int(b.mask[0].sum()) - 1] != tok.eos_id
    only_trunc = crafted(tok, [BAD, BAD + " 1"], [0.0, 1.0], truncated=[True, True])
    bt = build_batch(only_trunc, tok.eos_id, tok.pad_id, "cpu")
    for masked, moves in ((True, False), (False, True)):
        tr = GRPOTrainer(cfg_for(grpo={"mask_truncated": masked}), tiny_model(tok), tok)
        w0 = [p.detach().clone() for p in tr.model.parameters()]
        out = tr.update(only_trunc, bt)
        changed = any(not torch.equal(a, p) for a, p in zip(w0, tr.model.parameters()))
        assert changed == moves and out["optimizer_steps"] == int(moves)


def test_router_bias_frozen_vs_updated_from_completion_tokens(tok):
    s = crafted(tok, [GOOD, BAD], [1.0, 0.0])
    b = build_batch(s, tok.eos_id, tok.pad_id, "cpu")
    model = tiny_model(tok)
    with route_counter(model, b.input_mask) as counts, torch.no_grad():
        model(b.input_ids, attention_mask=b.attention_mask)
    K = model.config.num_experts_per_tok
    assert (counts().sum(1) == int(b.input_mask.sum()) * K).all()  # completion tokens only
    for mode in ("frozen", "update"):
        tr = GRPOTrainer(cfg_for(grpo={"router": mode}), tiny_model(tok), tok)
        bias = [m.gate.e_score_correction_bias.clone() for m in tr.model.moe_layers()]
        tr.update(s, b)
        same = all(torch.equal(a, m.gate.e_score_correction_bias) for a, m in zip(bias, tr.model.moe_layers()))
        assert same == (mode == "frozen")


def test_ppo_step_trains_a_critic_and_holds_more_memory(tok, tmp_path):
    s = crafted(tok, [GOOD, BAD], [1.0, 0.0])
    b = build_batch(s, tok.eos_id, tok.pad_id, "cpu")
    ppo = PPOTrainer(PPOConfig(**cfg_for().to_dict()), tiny_model(tok), tok)
    head = ppo.critic.value_head.weight.detach().clone()
    out = ppo.update(s, b)
    assert "value_loss" in out and out["value_loss"] > 0
    assert not torch.equal(head, ppo.critic.value_head.weight)
    assert ppo.last_adv.shape == b.mask.shape  # per-token GAE advantages
    grpo = GRPOTrainer(cfg_for(), tiny_model(tok), tok)
    grpo.update(s, b)
    assert ppo.state_bytes() > 1.5 * grpo.state_bytes()  # critic + its AdamW moments
    d = tmp_path / "m"
    save_pretrained(tiny_model(tok), d)
    tok.save(d)
    res = compare_grpo_ppo_memory(d, prompts=2, group_size=2, max_new_tokens=6, beta=0.0, device="cpu")
    assert res["ppo"]["state_bytes"] > res["grpo"]["state_bytes"] and res["state_ratio_grpo_over_ppo"] < 0.7
    assert res["ppo"]["models_held"] == 2 and res["grpo"]["models_held"] == 1


def test_run_grpo_writes_run_dir_and_resumes(tok, tmp_path):
    init = tmp_path / "init"
    save_pretrained(tiny_model(tok), init)
    tok.save(init)
    out = tmp_path / "run"
    cfg = cfg_for(init=str(init), out_dir=str(out), grpo={"beta": 0.04, "mu": 2, "minibatch_size": 2, "mask_truncated": False},
                  train={"steps": 2, "eval_n": 2, "eval_k": 2, "log_completions": 2})
    run_grpo(cfg)
    for f in ("model/config.json", "model/tokenizer.json", "tokenizer.json", "cost.json", "eval.json",
              "completions.jsonl", "metrics.jsonl"):
        assert (out / f).exists(), f
    recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in recs if "reward" in r]
    for key in ("rewards/accuracy/mean", "rewards/format/std", "reward", "accuracy", "completions/mean_length",
                "completions/clipped_ratio", "frac_reward_zero_std", "clip_ratio/low_mean", "clip_ratio/high_mean",
                "clip_ratio/region_mean", "kl", "entropy", "time/generate", "time/score", "time/update",
                "tokens/generated"):
        assert key in steps[0], key
    assert [r["step"] for r in steps] == [1, 2]
    comp = json.loads((out / "completions.jsonl").read_text().splitlines()[0])
    assert {"prompt", "completion", "rewards", "advantage"} <= set(comp)
    cfg3 = copy.deepcopy(cfg)
    cfg3.train.steps = 3
    run_grpo(cfg3, resume=True)
    steps = [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines() if '"reward"' in x]
    assert steps == [1, 2, 3]
    assert json.loads((out / "cost.json").read_text())["steps"] == 3


def test_bf16_sampler_copy_follows_the_policy(tok):
    """rollout.sampler_dtype=bfloat16 (the CUDA default): rollouts come from a bf16 copy synced in
    place from the fp32 policy before each rollout, keeping its weight addresses (CUDA graphs)."""
    tr = GRPOTrainer(cfg_for(rollout={"sampler_dtype": "bfloat16"}), tiny_model(tok), tok)
    first = tr.sampler()
    assert first is not tr.model and next(first.parameters()).dtype == torch.bfloat16
    ptrs = [p.data_ptr() for p in first.parameters()]
    s = crafted(tok, [GOOD, BAD], [1.0, 0.0])
    tr.update(s, build_batch(s, tok.eos_id, tok.pad_id, "cpu"))
    again = tr.sampler()
    assert again is first and [p.data_ptr() for p in again.parameters()] == ptrs
    for a, b in zip(again.parameters(), tr.model.parameters()):
        assert torch.equal(a, b.to(torch.bfloat16))
    rec = tr.train_step()[0]
    assert rec["tokens/generated"] > 0 and len(tr.held_models()) == 2


@pytest.mark.parametrize("args, why", [
    (["--task.name", "nope"], "unknown task 'nope'"),
    (["--task.name", "{tmp}/bad.jsonl"], "bad.jsonl:1: no usable 'answer'"),
    (["--task.eval_task", "{tmp}/missing.jsonl"], "missing.jsonl: no such file"),
    (["--rewards", '{"nope": 1}'], "unknown reward 'nope'"),
    (["--init", "{tmp}/no_model"], "not a run directory"),
])
def test_grpo_cli_fails_early_and_leaves_no_run_dir(tmp_path, capsys, args, why):
    from nanoseek.cli import main as cli_main

    (tmp_path / "bad.jsonl").write_text('{"prompt": "What is 1 + 1?"}\n')
    init = ["--init", str(tmp_path / "no_model")] if "--init" not in args else []
    argv = ["grpo", "--config", "tiny-cpu", "--out", str(tmp_path / "run"), *init,
            *[a.replace("{tmp}", str(tmp_path)) for a in args]]
    assert cli_main(argv) == 2
    assert why in capsys.readouterr().err
    assert not (tmp_path / "run").exists()

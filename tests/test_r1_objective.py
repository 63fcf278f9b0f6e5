"""GRPO/PPO loss math against hand-computed values (the arithmetic is in the comments)."""

import math

import pytest
import torch

from nanoseek.r1.objective import (aggregate, entropy_from_logits, filter_zero_std_groups, gae,
                                   group_advantages, grpo_loss, k3_kl, masked_whiten,
                                   ppo_value_loss, token_logprobs)

LN2 = math.log(2.0)


def close(x, want, tol=1e-5):
    torch.testing.assert_close(torch.as_tensor(x, dtype=torch.float32),
                               torch.as_tensor(want, dtype=torch.float32), atol=tol, rtol=0)


# ----------------------------------------------------------------------------- advantages
# rewards, G=4: group 1 = [1,0,0,0]: mean .25, unbiased var (.5625 + 3*.0625)/3 = .25, std .5
#               group 2 = [1,1,0,0]: mean .5,  unbiased var (4*.25)/3 = 1/3,  std .577350
R = torch.tensor([1.0, 0, 0, 0, 1, 1, 0, 0])


def test_group_advantages_group_scale():
    close(group_advantages(R, 4, "group", eps=0.0),
          [1.5, -0.5, -0.5, -0.5, 0.866025, 0.866025, -0.866025, -0.866025])


def test_group_advantages_batch_scale():
    # group means as above; batch std: mean 3/8, sum sq dev 3*.625^2 + 5*.375^2 = 1.875,
    # /7 -> .267857, std .517549; .75/.517549 = 1.449138, .25/.. = .483046, .5/.. = .966092
    close(group_advantages(R, 4, "batch", eps=0.0),
          [1.449138, -0.483046, -0.483046, -0.483046, 0.966092, 0.966092, -0.966092, -0.966092])


def test_group_advantages_no_scale_and_edge_cases():
    close(group_advantages(R, 4, "none"), [0.75, -0.25, -0.25, -0.25, 0.5, 0.5, -0.5, -0.5])
    close(group_advantages(torch.tensor([1.0, 1.0]), 2), [0.0, 0.0])  # 0 / (0 + eps)
    close(group_advantages(torch.tensor([3.0, 5.0]), 1), [0.0, 0.0])  # no baseline -> 0
    with pytest.raises(ValueError):
        group_advantages(R, 3)
    with pytest.raises(ValueError):
        group_advantages(R, 4, "bogus")


def test_filter_zero_std_groups():
    keep, frac = filter_zero_std_groups(torch.tensor([1.0, 1, 0, 1, 0, 0]), 2)
    assert keep.tolist() == [False, False, True, True, False, False]
    close(frac, 2 / 3)


# ----------------------------------------------------------------------------- GRPO loss
# N=2, T=3, row 1's last token is padding. old_logp = -1, logp = -1 + log(ratio).
# eps_low .2, eps_high .28, A = [+1, -1].
#  row 0 (A=+1), ratios 1.0, 1.5, 0.5: -min(r, clip(r, .8, 1.28)) = -1, -1.28 (high clip), -0.5
#     (r=.5 < .8 but A>0: the unclipped term is the min, so no clip)      -> sum -2.78
#  row 1 (A=-1), ratios 1.0, 0.5, [2.0 pad]: -min(-r, -clip) = 1, 0.8 (low clip), [2 masked]
#                                                                         -> sum 1.8
# ref - logp: row 0 [0, ln2, -ln2] -> k3 = 0, 2-ln2-1, .5+ln2-1 (sum exactly 0.5)
#             row 1 [ln2, 0, 5 pad]  -> k3 = 1-ln2 = .306853, 0             (sum .306853)
MASK = torch.tensor([[1.0, 1, 1], [1, 1, 0]])
ADV = torch.tensor([1.0, -1.0])
OLD = torch.full((2, 3), -1.0)
LOGP = OLD + torch.log(torch.tensor([[1.0, 1.5, 0.5], [1.0, 0.5, 2.0]]))
REF = LOGP + torch.tensor([[0.0, LN2, -LN2], [LN2, 0.0, 5.0]])


def loss_of(**kw):
    args = dict(eps_low=0.2, eps_high=0.28, beta=0.0, agg="grpo")
    args.update(kw)
    return grpo_loss(LOGP, OLD, REF, ADV, MASK, **args)


def test_grpo_aggregation_variants_no_kl():
    # grpo: mean(-2.78/3, 1.8/2) = mean(-.926667, .9) = -.013333
    close(loss_of(agg="grpo")[0], -0.0133333)
    # dapo: (-2.78 + 1.8) / 5 tokens = -.196
    close(loss_of(agg="dapo")[0], -0.196)
    # dapo with a global token count over accumulation steps: -.98 / 10
    close(loss_of(agg="dapo", num_tokens=10)[0], -0.098)
    # dr_grpo: -.98 / (N=2 * max_len=4) = -.1225 ; default max_len = T=3 -> -.98/6
    close(loss_of(agg="dr_grpo", max_len=4)[0], -0.1225)
    close(loss_of(agg="dr_grpo")[0], -0.98 / 6)
    with pytest.raises(ValueError):
        loss_of(agg="nope")


def test_grpo_kl_k3_term():
    # dapo: -.196 + .1 * (.5 + .306853) / 5 = -.196 + .0161371 = -.1798629
    close(loss_of(agg="dapo", beta=0.1)[0], -0.1798629)
    # grpo: row 0 (-2.78 + .1*.5)/3 = -.91; row 1 (1.8 + .1*.306853)/2 = .9153426; mean .0026713
    close(loss_of(agg="grpo", beta=0.1)[0], 0.0026713)
    _, m = loss_of(beta=0.0)
    close(m["kl"], 0.806853 / 5)  # logged even when beta = 0
    close(k3_kl(torch.tensor([0.0]), torch.tensor([LN2])), [1 - LN2])


def test_grpo_clip_metrics():
    _, m = loss_of()
    close(m["clip_ratio/low_mean"], 0.2)  # row 1 token 1 of 5 active tokens
    close(m["clip_ratio/high_mean"], 0.2)  # row 0 token 1; the padded r=2 token is not counted
    close(m["clip_ratio/region_mean"], 0.4)
    close(m["ratio/mean"], 0.9)  # (1 + 1.5 + .5 + 1 + .5) / 5
    close(m["ratio/min"], 0.5)
    close(m["ratio/max"], 1.5)
    # symmetric clip (eps_high=None -> .2): r=1.5 still clipped at 1.2 -> row 0 sum -2.7
    close(loss_of(eps_high=None, agg="dapo")[0], (-2.7 + 1.8) / 5)


def test_grpo_truncation_masking():
    trunc = torch.tensor([False, True])
    # row 1 masked out: grpo keeps N=2 in the mean (TRL): -.926667 / 2 ; dapo: -2.78 / 3
    loss, m = loss_of(agg="grpo", truncated=trunc)
    close(loss, -0.4633333)
    close(m["completions/truncated_frac"], 0.5)
    close(loss_of(agg="dapo", truncated=trunc)[0], -0.9266667)


def test_on_policy_loss_value_zero_but_gradient_not():
    # mu=1 (old_logp None): rho == 1, loss = -mean(A) = 0 for centred A, gradient nonzero
    logits = torch.zeros(2, 3, requires_grad=True)
    logp = torch.log_softmax(logits, -1)[:, :1].expand(2, 2)
    loss, _ = grpo_loss(logp, None, None, torch.tensor([1.0, -1.0]), torch.ones(2, 2))
    loss.backward()
    close(loss, 0.0)
    assert logits.grad.abs().sum() > 0


def test_grpo_step_moves_probability_to_better_completion():
    # policy: one logit vector per position, shared by both completions (T=2, V=3)
    theta = torch.zeros(2, 3, requires_grad=True)
    comps = torch.tensor([[0, 1], [2, 2]])  # completion 0 gets reward 1, completion 1 reward 0

    def seq_logp():
        lp = torch.log_softmax(theta, -1)  # (T, V)
        return lp[torch.arange(2), comps]  # (N=2, T=2)

    adv = group_advantages(torch.tensor([1.0, 0.0]), 2)  # [+.7071, -.7071] (std of [1,0])
    close(adv, [0.707071, -0.707071], tol=1e-4)
    before = seq_logp().sum(1).exp().detach()
    loss, _ = grpo_loss(seq_logp(), None, None, adv, torch.ones(2, 2), agg="grpo")
    loss.backward()
    # d/dtheta of -(1/2) sum_i A_i (1/2) sum_t log p: at theta=0, p=1/3; grad log p(k) = e_k - 1/3
    # position 0: -(1/4)[.7071 (e0 - 1/3) - .7071 (e2 - 1/3)] = (-.176777, 0, +.176777)
    close(theta.grad[0], [-0.176777, 0.0, 0.176777], tol=1e-4)
    with torch.no_grad():
        theta -= 1.0 * theta.grad
    after = seq_logp().sum(1).exp().detach()
    assert after[0] > before[0] and after[1] < before[1]


def test_aggregate_fully_masked_batch_is_zero_not_nan():
    pt = torch.ones(2, 2)
    for agg in ("grpo", "dapo", "dr_grpo"):
        close(aggregate(pt, torch.zeros(2, 2), agg), 0.0)


# ----------------------------------------------------------------------------- logits helpers


def test_entropy_chunked_and_with_grad():
    # uniform over 4: ln 4 = 1.386294 ; p = [.25, .75]: .25 ln4 + .75 ln(4/3) = .562335
    logits = torch.tensor([[0.0, 0, 0, 0], [0.0, math.log(3), -1e9, -1e9]])
    close(entropy_from_logits(logits, chunk_size=1), [1.386294, 0.562335])
    x = torch.randn(3, 5, 7, requires_grad=True)
    h = entropy_from_logits(x, chunk_size=4)
    assert h.shape == (3, 5)
    h.sum().backward()
    ref = x.detach().clone().requires_grad_(True)
    lp = torch.log_softmax(ref, -1)
    (-(lp.exp() * lp).sum(-1)).sum().backward()
    torch.testing.assert_close(x.grad, ref.grad)


def test_token_logprobs():
    logits = torch.tensor([[[0.0, math.log(3)], [0.0, 0.0]]])  # (1, 2, 2)
    close(token_logprobs(logits, torch.tensor([[1, 0]]), chunk_size=1), [[math.log(0.75), -LN2]])


# ----------------------------------------------------------------------------- PPO pieces


def test_gae_hand_values():
    # gamma .9, lam .5, mask [1,1,0], r [0,1,0], V [.5,.8,pad 9]
    # t=1 (last active): delta = 1 + .9*0 - .8 = .2 -> A = .2
    # t=0: delta = 0 + .9*.8 - .5 = .22 -> A = .22 + .9*.5*.2 = .31 ; returns = A + V
    adv, ret = gae(torch.tensor([[0.0, 1, 0]]), torch.tensor([[0.5, 0.8, 9.0]]),
                   torch.tensor([[1.0, 1, 0]]), gamma=0.9, lam=0.5)
    close(adv, [[0.31, 0.2, 0.0]])
    close(ret, [[0.81, 1.0, 0.0]])


def test_masked_whiten():
    # active [1, 3]: mean 2, biased std 1 -> [-1, 1], padding 0
    close(masked_whiten(torch.tensor([[1.0, 3.0, 100.0]]), torch.tensor([[1.0, 1, 0]])),
          [[-1.0, 1.0, 0.0]], tol=1e-4)


def test_ppo_value_loss_clipped():
    # t0: (1-2)^2 = 1; V_clip = .5 + clamp(.5, +-.2) = .7 -> (.7-2)^2 = 1.69 (larger)
    # t1: V = old = 2 -> both 1.  loss = .5 * (1.69 + 1) / 2 = .6725, clipfrac .5
    v, old, ret = torch.tensor([[1.0, 2.0]]), torch.tensor([[0.5, 2.0]]), torch.tensor([[2.0, 1]])
    loss, m = ppo_value_loss(v, old, ret, torch.ones(1, 2), clip=0.2)
    close(loss, 0.6725)
    close(m["vf_clipfrac"], 0.5)
    close(ppo_value_loss(v, old, ret, torch.ones(1, 2), clip=None)[0], 0.5)  # .5 * (1+1)/2


def test_per_token_advantages_for_ppo():
    # (N, T) advantages: on-policy loss value = -(masked token mean of A) with dapo
    adv = torch.tensor([[0.31, 0.2, 5.0]])
    loss, _ = grpo_loss(torch.zeros(1, 3), None, None, adv, torch.tensor([[1.0, 1, 0]]),
                        agg="dapo")
    close(loss, -0.255)

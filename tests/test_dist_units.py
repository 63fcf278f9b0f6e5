"""Single-process pieces of nanoseek.dist: layout errors, EPLB planner, bubble simulator / plan."""

import pytest
import torch

from nanoseek.dist.eplb import plan, plan_layers
from nanoseek.dist.mesh import LayoutError, ParallelConfig
from nanoseek.dist.pipeline import split_layers, stage_ids
from nanoseek.dist.plan import bubbles, dualpipe_v, main_plan, make_plan, one_f_one_b, simulate
from nanoseek.model import ModelConfig

TINY = ModelConfig.preset("tiny")  # 4 layers, 8 routed experts


@pytest.mark.parametrize("layout,world,needle", [
    (dict(pp=3), 4, "world size 4 is not divisible by pp=3"),
    (dict(dp=3), 4, "dp × pp = 3 × 1 = 3 does not match the world size 4"),
    (dict(ep=4), 6, "ep=4 must divide dp=6"),
    (dict(ep=4, dp=2), 2, "ep=4 must divide dp=2"),
    (dict(ep=3), 3, "n_routed_experts=8 is not divisible by ep=3"),
    (dict(pp=4, pp_schedule="DualPipeV"), 4, "4 decoder layers cannot fill 8 pipeline stages"),
    (dict(pp=8), 8, "4 decoder layers cannot fill 8 pipeline stages"),
    (dict(pp=2, pp_schedule="DualPipeV", microbatches=2), 2, "DualPipeV needs microbatches >= stages (4)"),
    (dict(pp_schedule="GPipe"), 1, "pp_schedule 'GPipe' is not one of"),
])
def test_layout_errors_name_the_problem(layout, world, needle):
    with pytest.raises(LayoutError) as e:
        ParallelConfig(**layout).resolve(world, TINY)
    assert needle in str(e.value), str(e.value)


def test_layout_resolves_dp_and_dense_model_rejects_ep():
    c = ParallelConfig(pp=2, ep=2).resolve(8, TINY)
    assert (c.dp, c.edp, c.n_stages, c.n_micro) == (4, 2, 2, 4)
    with pytest.raises(LayoutError, match="no MoE layers"):
        ParallelConfig(ep=2).resolve(2, TINY.replace(n_routed_experts=0))


def test_stage_split_and_placement():
    assert split_layers(5, 4) == [[0, 1], [2], [3], [4]]
    assert [stage_ids(r, 2, "DualPipeV") for r in range(2)] == [[0, 3], [1, 2]]  # V: rank 0 holds first + last
    assert [stage_ids(r, 2, "Interleaved1F1B") for r in range(2)] == [[0, 2], [1, 3]]


def test_eplb_evens_out_a_skewed_load():
    g = torch.Generator().manual_seed(0)
    load = (1e5 / torch.arange(1, 65).double() ** 1.2)[torch.randperm(64, generator=g)]  # Zipf-like, shuffled
    p0, p = plan(load, 8), plan(load, 8, n_redundant=8)
    assert p0.after < p0.before  # packing alone helps
    assert p.after < p0.after and p.after < 1.1 < p.before, p.summary()
    assert sum(p.replicas) == 72 and all(len(s) == 9 for s in p.placement)
    assert sorted({e for s in p.placement for e in s}) == list(range(64))  # every expert placed
    assert abs(sum(p.rank_load) - float(load.sum())) < 1e-6 * float(load.sum())
    hot = int(load.argmax())
    assert p.replicas[hot] > 1 and len({r for r, s in enumerate(p.placement) if hot in s}) == p.replicas[hot]
    assert len(plan_layers(torch.stack([load, load.flip(0)]), 8, 8)) == 2
    with pytest.raises(ValueError, match="divide over 8 ranks"):
        plan(load, 8, n_redundant=3)


def test_simulated_bubbles_match_the_dualpipe_formulas():
    pp, n = 4, 16
    one = simulate(one_f_one_b(pp, n), pp, 1.0, 1.0, 1.0)
    assert one.bubble == pytest.approx((pp - 1) * (1.0 + 2.0))  # (PP-1)(F+B)
    b = bubbles(pp, n, layers=8, f=1.0, i=1.0, w=1.0)
    assert b["1F1B"]["sim_ms"] == pytest.approx(b["1F1B"]["formula_ms"])
    if dualpipe_v(pp, n) is None:
        pytest.skip("this torch has no ScheduleDualPipeV")
    for k in ("DualPipeV", "DualPipeV+overlap"):  # equal F, I, W: the simulation lands on the formula
        assert b[k]["sim_ms"] == pytest.approx(b[k]["formula_ms"], rel=1e-6), (k, b[k])
    assert b["DualPipeV+overlap"]["vs_1F1B"] < b["DualPipeV"]["vs_1F1B"] < 0.5


def test_plan_v3_layout(capsys):
    p = make_plan(ModelConfig.preset("671b"), 2048, 16, 64)
    assert p.layout["dp"] == 128 and p.layout["microbatches"] == 120
    assert p.a2a["nodes_per_ep_group"] == 8 and p.a2a["nodes_per_token"] == 4  # n_group 8 = nodes, topk_group 4
    assert 0 < p.bubbles["DualPipeV"]["sim_ms"] < p.bubbles["1F1B"]["sim_ms"]
    assert main_plan(["--model", "671b", "--recompute"]) == 0
    out = capsys.readouterr().out
    assert "DualPipe README formula" in out and "PP16 × DP128" in out
    with pytest.raises(ValueError, match="not divisible by pp=3"):
        make_plan(TINY, 8, 3, 1)

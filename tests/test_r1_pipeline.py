"""`nanoseek r1 --config tiny-cpu`: all four stages + evaluations end to end, then a rerun that
reuses every finished stage; config errors surface before any training."""

import json
import re

import pytest
import torch

from nanoseek.cli import main
from nanoseek.model.config import ConfigError
from nanoseek.r1.pipeline import STAGES, R1Config
from nanoseek.train.config import load_config


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_tiny_cpu_pipeline_end_to_end_then_resumes(tmp_path, capsys):
    out = tmp_path / "r1"
    assert main(["r1", "--config", "tiny-cpu", "--out", str(out)]) == 0
    rep = json.loads((out / "report.json").read_text())
    assert [r["stage"] for r in rep["stages"]] == ["base", *STAGES]
    for r in rep["stages"]:
        assert {"pass@1", "cons@k", "format_rate", "mean_len"} <= set(r["eval"]), r["stage"]
        assert r["eval"]["n"] > 0 and r["tokens"] > 0 and r["train_seconds"] > 0
    by = {r["stage"]: r for r in rep["stages"]}
    assert by["reasoning_rl"]["rl"]["steps"] == 2 and "frac_reward_zero_std_mean" in by["final_rl"]["rl"]
    assert by["rejection_sft"]["rejection"]["samples"] == 16  # 8 prompts × k=2
    mixed = [json.loads(l) for l in (out / "3_rejection_sft" / "rs_data.jsonl").read_text().splitlines()][-16:]
    assert all(len(x) == 1 for m in mixed for x in re.findall(r"\d+", m["messages"][0]["content"]))  # cold start's 1 digit
    assert rep["total"]["device_hours"] > 0
    assert "| final_rl |" in (out / "report.md").read_text()
    for i, st in enumerate(STAGES, 1):
        assert (out / f"{i}_{st}" / "model" / "config.json").exists()
    done = json.loads((out / "stages.json").read_text())
    assert set(STAGES) <= set(done)

    stamp = {st: (out / f"{i}_{st}" / "model" / "model.safetensors").stat().st_mtime_ns
             for i, st in enumerate(STAGES, 1)}
    capsys.readouterr()
    assert main(["r1", "--config", "tiny-cpu", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert all(f"{st}: done, reusing" in printed for st in STAGES)
    assert stamp == {st: (out / f"{i}_{st}" / "model" / "model.safetensors").stat().st_mtime_ns
                     for i, st in enumerate(STAGES, 1)}
    # a finished stage whose config changed is never silently reused
    assert main(["r1", "--config", "tiny-cpu", "--out", str(out), "--grpo.train.steps", "3"]) == 2
    assert "different config" in capsys.readouterr().err


def test_config_errors_surface_before_training():
    with pytest.raises(ConfigError, match="stages"):
        load_config(R1Config, "r1", "tiny-cpu", {"stages": ["warmup"]})
    with pytest.raises(ConfigError, match="unknown key"):
        load_config(R1Config, "r1", "tiny-cpu", {"grpo": {"grpo": {"betta": 0.1}}})
    with pytest.raises(ConfigError, match="unknown reward"):
        load_config(R1Config, "r1", "tiny-cpu", {"grpo": {"rewards": {"acuracy": 1.0}}})
    with pytest.raises(ConfigError, match="init"):
        R1Config(pretrain=None)

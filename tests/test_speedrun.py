"""The README's main job: which preset it picks, and that both presets are valid configs."""

import pytest
import torch

from nanoseek.r1.pipeline import STAGES, R1Config
from nanoseek.speedrun import default_config
from nanoseek.train.config import PretrainConfig, load_config


def test_gpu_preset_is_the_default_only_with_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert default_config() == "speedrun-gpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert default_config() == "speedrun-cpu"


@pytest.mark.parametrize("name", ["speedrun-cpu", "speedrun-gpu"])
def test_speedrun_presets_resolve_every_stage(name):
    cfg = load_config(R1Config, "r1", name, {})
    pre = load_config(PretrainConfig, "pretrain", cfg.pretrain["config"], cfg.pretrain.get("overrides", {}))
    assert pre.model_config().num_hidden_layers >= 1
    for st in STAGES:  # typos in any stage's section fail here, not an hour into the run
        cfg.stage_config(st, "base", "out")

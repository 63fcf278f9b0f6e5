"""SFT: assistant-only labels, conversation packing, JSONL errors, configs, loss goes down."""

import json

import numpy as np
import pytest
import torch

from nanoseek.cli import main as cli_main
from nanoseek.data.packing import IGNORE_INDEX
from nanoseek.data.sources import DataError
from nanoseek.data.tokenizer import apply_chat_template, encode_chat, train_tokenizer
from nanoseek.model import ConfigError, DeepSeekV3, ModelConfig
from nanoseek.r1.data import (SFTBatcher, builtin_conversations, encode_all, encode_conversation,
                              load_conversations, sft_labels, write_jsonl)
from nanoseek.r1.sft import SFTConfig, run_sft
from nanoseek.train.config import PRESETS, load_config

CONV = [{"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is 2 + 2?"},
        {"role": "assistant", "content": "4", "reasoning": "two plus two"},
        {"role": "user", "content": "And 3 + 3?"},
        {"role": "assistant", "content": "6"}]


def tiny_config(vocab: int) -> ModelConfig:
    return ModelConfig.preset("tiny").replace(
        vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2, q_lora_rank=48,
        kv_lora_rank=32, qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=16, moe_intermediate_size=32,
        n_routed_experts=4, n_group=2, topk_group=2)


@pytest.fixture(scope="module")
def tok():
    texts = [apply_chat_template(c) for c in builtin_conversations(200, 1, 2, seed=1)] + [apply_chat_template(CONV)]
    return train_tokenizer(texts, 320)


@pytest.fixture(scope="module")
def init_dir(tok, tmp_path_factory):
    d = tmp_path_factory.mktemp("init")
    torch.manual_seed(0)
    DeepSeekV3(tiny_config(tok.vocab_size)).save_pretrained(d)
    tok.save(d)
    return d


def test_labels_exactly_on_assistant_targets(tok):
    ids, mask = encode_conversation(CONV, tok)
    assert (ids, mask) == encode_chat(CONV, tok)  # turn-by-turn encoding = whole-string encoding
    y = sft_labels(ids, mask)
    for i in range(len(ids) - 1):  # label i is a target iff token i+1 was written by the assistant
        assert (y[i] != IGNORE_INDEX) == mask[i + 1]
        assert y[i] in (IGNORE_INDEX, ids[i + 1])
    assert y[-1] == IGNORE_INDEX
    targets = tok.decode([int(t) for t in y if t != IGNORE_INDEX])
    assert targets == ("<think>\ntwo plus two\n</think>\n<answer>4</answer><｜end▁of▁sentence｜>"
                       "6<｜end▁of▁sentence｜>")
    assert "Be brief" not in targets and "What is" not in targets and "<｜Assistant｜>" not in targets


def test_packing_keeps_conversations_whole_and_apart(tok):
    docs, cut = encode_all(builtin_conversations(30, 1, 1, seed=2), tok, 256)
    assert cut == 0
    loader = SFTBatcher(docs, 600, 3, seed=0, pack=True)
    batch = next(loader)
    assert set(batch) == {"input_ids", "labels", "position_ids", "doc_ids", "attention_mask"}
    lengths = {len(d[0]) for d in docs}
    for r in range(3):
        ids, lab, pos, doc, att = (batch[k][r].numpy() for k in ("input_ids", "labels", "position_ids", "doc_ids", "attention_mask"))
        real = att.astype(bool)
        assert (lab[~real] == IGNORE_INDEX).all()
        segs = [doc == d for d in np.unique(doc[real])]
        assert len(segs) >= 2  # several conversations per row
        for s in segs:
            n = int(s.sum())
            assert n in lengths and (pos[s] == np.arange(n)).all()  # whole, positions restart
            assert lab[s][-1] == IGNORE_INDEX  # nothing predicted across a boundary
    # exact resume: a fresh loader restored from state yields the same next batch
    state = loader.state_dict()
    want = next(loader)
    again = SFTBatcher(docs, 600, 3, seed=0, pack=True)
    again.load_state_dict(state)
    got = next(again)
    assert all(torch.equal(want[k], got[k]) for k in want)
    one = next(SFTBatcher(docs, 600, 2, pack=False))  # one conversation per row, padded
    assert one["doc_ids"][:, 0].tolist() == [0, 0] and int(one["attention_mask"][0].sum()) in lengths


def test_malformed_jsonl_names_file_and_line(tmp_path, capsys):
    good = json.dumps({"messages": CONV})
    cases = {"not json {": 2, json.dumps({"messages": [{"role": "user", "content": "hi"}]}): 2,
             json.dumps({"messages": [{"role": "bot", "content": "x"}]}): 2}
    for bad, line in cases.items():
        p = tmp_path / "conv.jsonl"
        p.write_text(good + "\n" + bad + "\n")
        with pytest.raises(DataError, match=f"{p}:{line}: "):
            load_conversations(p)
    assert len(load_conversations(write_jsonl(tmp_path / "ok.jsonl", [{"messages": CONV}] * 2))) == 2
    rc = cli_main(["sft", "--init", "x", "--data", str(p), "--out", str(tmp_path / "run"), "--train.progress", "false"])
    assert rc == 2 and f"{p}:2" in capsys.readouterr().err


def test_configs_validate_and_presets_load():
    for preset in sorted((PRESETS / "sft").glob("*.json")):
        cfg = load_config(SFTConfig, "sft", str(preset), {})
        assert cfg.train.steps > 0 and cfg.seq_len > 8
    with pytest.raises(ConfigError, match="builtin.nope"):
        load_config(SFTConfig, "sft", "tiny-cpu", {"builtin": {"nope": 1}})
    with pytest.raises(ConfigError, match="builtin.ops"):
        SFTConfig(builtin={"ops": ["/"]})


def test_sft_on_builtin_arithmetic_lowers_loss(init_dir, tmp_path):
    cfg = SFTConfig(init=str(init_dir), out_dir=str(tmp_path / "sft"), seq_len=192, val_fraction=0.1,
                    builtin={"n": 80, "min_digits": 1, "max_digits": 1},
                    optim={"lr": 3e-3, "warmup_steps": 2, "weight_decay": 0.0},
                    train={"steps": 10, "batch_size": 2, "progress": False, "log_every": 100, "eval_every": 10,
                           "eval_batches": 2, "ckpt_every": 100})
    run = run_sft(cfg)
    recs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [r["train/lm_loss"] for r in recs if "train/lm_loss" in r]
    assert len(losses) == 10 and np.mean(losses[-3:]) < losses[0] - 0.5
    assert any("val/loss" in r for r in recs)
    assert (run / "model" / "tokenizer.json").exists() and (run / "model" / "config.json").exists()
    assert json.loads((run / "cost.json").read_text())["stage"] == "sft"
    assert json.loads((run / "data.json").read_text())["packed"] is True
    DeepSeekV3.from_pretrained(run / "model")  # loadable

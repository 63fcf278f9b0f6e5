"""Rejection sampling and distillation: filters and dedupe, KD losses against hand values,
dense students, end to end into a tiny random HF Llama student, and the CLI."""

import json
import math
import re

import pytest
import torch

from nanoseek.cli import main as cli_main
from nanoseek.data.tokenizer import apply_chat_template, train_tokenizer
from nanoseek.model import DeepSeekV3, ModelConfig
from nanoseek.r1.data import builtin_conversations, load_conversations, write_jsonl
from nanoseek.r1.distill import DistillConfig, dense_student_config, kd_loss, run_distill
from nanoseek.r1.evaluate import evaluate, load_model, train_examples
from nanoseek.r1.sample import rejection_sample
from nanoseek.r1.sft import SFTConfig


def tiny_config(vocab: int) -> ModelConfig:
    return ModelConfig.preset("tiny").replace(
        vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2, q_lora_rank=48,
        kv_lora_rank=32, qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=16, moe_intermediate_size=32,
        n_routed_experts=4, n_group=2, topk_group=2)


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer([apply_chat_template(c) for c in builtin_conversations(200, 1, 2, seed=1)], 320)


class OracleTeacher(DeepSeekV3):
    """A real (random) nanoseek model for logits, whose sampler cycles through: a correct
    trace, the same trace again (a duplicate), a wrong answer, and a right answer without the
    closing </think> (correct, malformed)."""

    def __init__(self, cfg, tok):
        super().__init__(cfg)
        self.tok, self.count = tok, {}

    def generate(self, prompts, **kw):
        out = []
        for p in prompts:
            a, op, b = re.search(r"What is (\d+) ([-+*×]) (\d+)\?", self.tok.decode(p)).groups()
            v = eval(f"{a}{op.replace('×', '*')}{b}")  # noqa: S307 - digits and one operator, from our own generator
            i = self.count.get(tuple(p), 0)
            self.count[tuple(p)] = i + 1
            text = [f"{a} {op} {b} is {v}</think>\n<answer>{v}</answer>", f"{a} {op} {b} is {v}</think>\n<answer>{v}</answer>",
                    f"guess</think><answer>{v + 1}</answer>", f"<answer>{v}</answer>"][i % 4]
            out.append(self.tok.encode(text))
        return out


@pytest.fixture(scope="module")
def teacher(tok):
    torch.manual_seed(0)
    return OracleTeacher(tiny_config(tok.vocab_size), tok).eval()


def test_rejection_sampling_keeps_correct_well_formed_and_dedupes(teacher, tok):
    examples = train_examples("arithmetic", 5, level=1, seed=0)
    records, stats = rejection_sample(teacher, tok, examples, k=4, batch_size=7)
    assert stats["samples"] == 20 and stats["correct"] == 15 and stats["well_formed"] == 15
    assert stats["correct_and_formed"] == 10 and stats["duplicates"] == 5 and stats["kept"] == 5
    assert stats["kept_fraction"] == 0.25 and stats["per_prompt_solve_rate"] == [0.5] * 5
    for rec, ex in zip(records, examples):
        user, asst = rec["messages"]
        assert user == {"role": "user", "content": ex["prompt"].split("User: ")[1].split(" Assistant:")[0]}
        assert asst["content"] == ex["answer"] and asst["reasoning"].endswith(f"is {ex['answer']}")


def test_kd_losses_match_hand_values():
    s = torch.tensor([[0.0, 0.0], [5.0, -5.0]])  # second row masked out below
    t = torch.tensor([[math.log(3.0), 0.0], [-5.0, 5.0]])
    mask = torch.tensor([True, False])
    fwd = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)  # KL(p_T || p_S)
    rev = 0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25)  # KL(p_S || p_T)
    assert kd_loss(s, t, mask, "forward").item() == pytest.approx(fwd, abs=1e-6)
    assert kd_loss(s, t, mask, "reverse").item() == pytest.approx(rev, abs=1e-6)
    p = math.sqrt(3) / (1 + math.sqrt(3))  # teacher at T=2: softmax([ln 3 / 2, 0])
    fwd_t2 = 4 * (p * math.log(p / 0.5) + (1 - p) * math.log((1 - p) / 0.5))  # x T^2
    assert kd_loss(s, t, mask, "forward", temperature=2.0).item() == pytest.approx(fwd_t2, abs=1e-6)
    x = torch.randn(2, 3, 11)
    for kind in ("forward", "reverse"):
        assert kd_loss(x, x.clone(), None, kind).item() == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="student has 11 logits, teacher has 12"):
        kd_loss(x, torch.randn(2, 3, 12))


def test_dense_student_config_has_no_experts():
    cfg = dense_student_config("tiny", 320, {"num_hidden_layers": 2})
    assert cfg.vocab_size == 320 and cfg.num_hidden_layers == 2 and not cfg.is_moe
    assert not any(cfg.is_moe_layer(i) for i in range(cfg.num_hidden_layers + cfg.num_nextn_predict_layers))


@pytest.fixture(scope="module")
def llama_dir(tok, tmp_path_factory):
    from transformers import LlamaConfig

    d = tmp_path_factory.mktemp("llama")
    LlamaConfig(vocab_size=tok.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512,
                bos_token_id=0, eos_token_id=1, pad_token_id=2).save_pretrained(d)
    tok.save(d)
    return d


def test_distill_end_to_end_into_hf_student_with_forward_kd(teacher, tok, llama_dir, tmp_path):
    sft = SFTConfig(out_dir=str(tmp_path / "d"), seq_len=128, val_fraction=0.0,
                    optim={"lr": 3e-3, "warmup_steps": 1},
                    train={"steps": 3, "batch_size": 2, "progress": False, "log_every": 100, "ckpt_every": 2})
    cfg = DistillConfig(student=str(llama_dir), task="arithmetic", n_prompts=4, k=4, kd="forward",
                        kd_temperature=2.0, sft=sft)
    run = run_distill(cfg, teacher=teacher, teacher_tok=tok)
    assert len(load_conversations(run / "traces.jsonl")) == 4
    recs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(recs) == 3 and all(r["train/kd_loss"] > 0 for r in recs)
    assert json.loads((run / "cost.json").read_text())["stage"] == "distill"
    student, stok = load_model(run, "cpu")
    assert type(student).__name__ == "LlamaForCausalLM" and stok.vocab_size == tok.vocab_size
    res = evaluate(student, stok, train_examples("arithmetic", 2), k=2, max_new_tokens=4)  # HF generate path
    assert res["n"] == 2 and 0 < res["mean_len"] <= 4
    # resume continues from the step-2 checkpoint, reusing the sampled traces
    cfg.sft.train.steps = 4
    run_distill(cfg, resume=True, teacher=teacher, teacher_tok=tok)
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 4


def test_distill_cli_nanoseek_dense_student_and_vocab_error(teacher, tok, llama_dir, tmp_path, capsys):
    tdir = tmp_path / "teacher"
    DeepSeekV3.save_pretrained(teacher, tdir)
    tok.save(tdir)
    traces = write_jsonl(tmp_path / "t.jsonl", [{"messages": c} for c in builtin_conversations(8, 1, 1, seed=5)])
    common = ["distill", "--teacher", str(tdir), "--data", str(traces), "--train.steps", "2", "--train.batch_size", "2",
              "--train.progress", "false", "--seq_len", "256"]
    rc = cli_main(common + ["--out", str(tmp_path / "s"), "--student-config", "tiny", "--kd", "reverse",
                            "--student-overrides", '{"num_hidden_layers": 1, "hidden_size": 32}'])
    assert rc == 0
    student = DeepSeekV3.from_pretrained(tmp_path / "s" / "model")
    assert not student.config.is_moe and student.config.vocab_size == teacher.config.vocab_size
    from transformers import LlamaConfig

    LlamaConfig.from_pretrained(llama_dir).__class__(vocab_size=400, hidden_size=32, intermediate_size=64,
                                                    num_hidden_layers=1, num_attention_heads=4).save_pretrained(tmp_path / "big")
    rc = cli_main(common + ["--out", str(tmp_path / "x"), "--student-config", str(tmp_path / "big"), "--kd", "forward"])
    assert rc == 2 and "student vocab_size 400, teacher vocab_size 320" in capsys.readouterr().err

"""Evaluation (pass@k estimator, cons@k, format rate on a scripted generator), the eval CLI, and
chat streaming through piped stdin."""

import io
import json
import re

import pytest
import torch

from nanoseek.cli import main as cli_main
from nanoseek.data.tokenizer import apply_chat_template, train_tokenizer
from nanoseek.model import DeepSeekV3, ModelConfig
from nanoseek.r1.chat import ThinkStreamer, chat_loop
from nanoseek.r1.data import builtin_conversations
from nanoseek.r1.evaluate import evaluate, eval_examples, format_table, majority_vote, pass_at_k


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer([apply_chat_template(c) for c in builtin_conversations(200, 1, 2, seed=1)], 320)


@pytest.fixture(scope="module")
def model_dir(tok, tmp_path_factory):
    d = tmp_path_factory.mktemp("m")
    torch.manual_seed(0)
    cfg = ModelConfig.preset("tiny").replace(
        vocab_size=tok.vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2, q_lora_rank=48,
        kv_lora_rank=32, qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=16, moe_intermediate_size=32,
        n_routed_experts=4, n_group=2, topk_group=2)
    DeepSeekV3(cfg).save_pretrained(d)
    tok.save(d)
    return d


class ScriptedGenerator:
    """Answers each prompt with its script, one entry per sample in turn; records the calls."""

    def __init__(self, tok, scripts: dict[str, list[str]]):
        self.tok, self.scripts, self.calls, self.seen = tok, scripts, [], {}

    def generate(self, prompts, **kw):
        self.calls.append((len(prompts), kw))
        out = []
        for p in prompts:
            q = re.search(r"What is \d+ [-+*×] \d+\?", self.tok.decode(p)).group()
            i = self.seen.get(q, 0)
            self.seen[q] = i + 1
            out.append(self.tok.encode(self.scripts[q][i % len(self.scripts[q])]))
        return out


def test_pass_at_k_matches_hand_values():
    assert pass_at_k(4, 1, 1) == pytest.approx(0.25)
    assert pass_at_k(4, 2, 2) == pytest.approx(1 - 1 / 6)  # 1 - C(2,2)/C(4,2)
    assert pass_at_k(10, 3, 5) == pytest.approx(1 - 21 / 252)  # 1 - C(7,5)/C(10,5)
    assert pass_at_k(5, 0, 3) == 0.0 and pass_at_k(3, 3, 2) == 1.0 and pass_at_k(4, 1, 4) == 1.0
    with pytest.raises(ValueError):
        pass_at_k(2, 1, 3)


def test_majority_vote_ignores_missing_answers_and_breaks_ties_early():
    comps = ["<answer>7</answer>", "none", "<answer> 5 </answer>", "<answer>5</answer>", "<answer>7</answer>"]
    assert majority_vote(comps, [0, 0, 1, 1, 0]) == ("7", False)  # 7 and 5 tie 2-2: 7 came first
    assert majority_vote(comps[:4], [0, 0, 1, 1]) == ("5", True)
    assert majority_vote(["x", "y"], [0, 0]) == (None, False)


def test_evaluate_on_scripted_generator(tok):
    examples = [{"prompt": "What is 2 + 3?", "answer": "5", "task": "arithmetic", "level": 1},
                {"prompt": "What is 1 + 2?", "answer": "3", "task": "arithmetic", "level": 2}]
    # chat prompts end with a prefilled "<think>\n": scripts continue inside the thought
    gen = ScriptedGenerator(tok, {
        "What is 2 + 3?": ["a</think><answer>5</answer>", "b</think><answer>7</answer>",
                           "c</think><answer>7</answer>", "no tags 5"],
        "What is 1 + 2?": ["<answer>3</answer>", "x</think><answer>3</answer>",
                           "y</think><answer>4</answer>", "z</think>\n<answer>3</answer>"]})
    res = evaluate(gen, tok, examples, k=4, batch_size=3, max_new_tokens=32)
    # correct: 1/4 and 3/4; votes: 7 (wrong) and 3 (right); well-formed: 3/4 and 3/4
    assert res["pass@1"] == pytest.approx(0.5) and res["cons@k"] == pytest.approx(0.5)
    assert res["pass@k"] == 1.0 and res["format_rate"] == pytest.approx(0.75) and res["n"] == 2
    assert res["by_level"] == {"1": 0.25, "2": 0.75}
    assert [c[0] for c in gen.calls] == [3, 3, 2]  # prompts x k, chunked by batch_size
    kw = gen.calls[0][1]
    assert kw["temperature"] == 0.6 and kw["top_p"] == 0.95 and kw["stop_tokens"] == (tok.eos_id,)
    assert res["mean_len"] == pytest.approx(sum(len(tok.encode(s)) for v in gen.scripts.values() for s in v) / 8)
    greedy = evaluate(gen, tok, examples, k=4, greedy=True)
    assert greedy["k"] == 1 and gen.calls[-1][1]["temperature"] == 0.0


def test_answer_prior_exposes_a_collapsed_policy(tok):
    """A policy that answers 0 to everything scores exactly the constant baseline and nothing on
    the other problems; top_share 1.0 says it gives one answer to all."""
    examples = [{"prompt": f"What is {a} * {b}?", "answer": str(a * b), "task": "arithmetic", "level": 1}
                for a, b in [(0, 3), (4, 0), (2, 3), (1, 1)]]
    zero = ScriptedGenerator(tok, {f"What is {a} * {b}?": ["</think><answer>0</answer>"]
                                   for a, b in [(0, 3), (4, 0), (2, 3), (1, 1)]})
    ap = evaluate(zero, tok, examples, k=2)["answer_prior"]
    assert ap["constant"] == "0" and ap["constant_pass@1"] == 0.5
    assert ap["pass@1_other"] == 0.0 and ap["top_share"] == 1.0 and ap["distinct"] == 1
    right = ScriptedGenerator(tok, {f"What is {a} * {b}?": [f"</think><answer>{a * b}</answer>", "no answer"]
                                    for a, b in [(0, 3), (4, 0), (2, 3), (1, 1)]})
    res = evaluate(right, tok, examples, k=2)
    ap = res["answer_prior"]
    assert ap["pass@1_other"] == 0.5 and ap["distinct"] == 3 and ap["top_share"] == 0.25  # 2 of 8 samples say 0
    assert "always '0'" in format_table(res) and "pass@1 other answers" in format_table(res)


def test_eval_examples_task_and_file(tmp_path):
    ex = eval_examples("arithmetic", 5, level=1, seed=0)
    assert len(ex) == 5 and all({"prompt", "answer"} <= set(e) for e in ex)
    f = tmp_path / "gsm.jsonl"
    f.write_text("".join(json.dumps({"question": f"What is {i} + 1?", "answer": f"x #### {i + 1}"}) + "\n" for i in range(4)))
    ex = eval_examples(str(f), 3)
    assert [e["answer"] for e in ex] == ["1", "2", "3"]


def test_eval_cli_on_tiny_model(model_dir, tmp_path, capsys):
    out = tmp_path / "res.json"
    rc = cli_main(["eval", str(model_dir), "--task", "arithmetic", "--n", "3", "--k", "2", "--max-new-tokens", "8",
                   "--out", str(out), "--show", "0"])
    assert rc == 0
    res = json.loads(out.read_text())
    assert res["n"] == 3 and res["k"] == 2 and 0 <= res["pass@1"] <= 1 and 0 < res["mean_len"] <= 8
    assert len(res["samples"]) == 6 and "cons@2" in capsys.readouterr().out


def test_think_streamer_handles_split_tags():
    out = io.StringIO()
    s = ThinkStreamer(out, color=False)
    for piece in ["<th", "ink>", "step 1\nstep", " 2</", "think>\n<ans", "wer>42</answer>", " a<b"]:
        s.feed(piece)
    s.close()
    assert out.getvalue() == "think> step 1\nthink> step 2\n42 a<b\n"
    assert "".join(s.thought) == "step 1\nstep 2" and s.answer_text == "42 a<b"


class ScriptedChatModel:
    """Streams a fixed token sequence through on_token, like DeepSeekV3.generate does."""

    def __init__(self, ids, stop):
        self.ids, self.stop, self.prompts = ids, stop, []
        self.config = type("C", (), {"max_position_embeddings": 4096})()

    def generate(self, prompts, on_token=None, **kw):
        self.prompts.append(prompts[0])
        for t in self.ids + [self.stop]:
            on_token(torch.tensor([t]), torch.tensor([t != self.stop]))
        return [self.ids]


def test_chat_streams_think_apart_and_handles_commands(tok):
    model = ScriptedChatModel(tok.encode("adding</think>\n<answer>5</answer>"), tok.eos_id)
    out = io.StringIO()
    turns = chat_loop(model, tok, io.StringIO("What is 2 + 3?\nand again?\n/reset\nhi\n/exit\nnever read\n"), out,
                      max_new_tokens=16)
    assert turns == 3
    assert out.getvalue().count("think> adding\n5\n") == 3 and "(conversation cleared)" in out.getvalue()
    second, third = (tok.decode(p) for p in model.prompts[1:])
    assert "What is 2 + 3?" in second and "5" in second  # history kept (answer only, no thought)
    assert "adding" not in second and "What is" not in third  # /reset dropped it


def test_chat_cli_with_piped_stdin(model_dir, monkeypatch, capsys):
    monkeypatch.setattr("sys.stdin", io.StringIO("What is 1 + 1?\n/exit\n"))
    assert cli_main(["chat", str(model_dir), "--max-new-tokens", "6", "--seed", "0"]) == 0
    assert capsys.readouterr().out.startswith("think> ")

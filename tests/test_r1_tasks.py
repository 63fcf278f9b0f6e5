"""Built-in tasks: determinism, held-out disjointness, solvability; JSONL layouts and errors."""

import json
import re

import pytest

from nanoseek.r1.rewards import accuracy, countdown
from nanoseek.r1.tasks import (eval_set, is_eval_problem, load_jsonl, make_prompt, train_set,
                               train_stream)

KEYS = {"prompt", "answer", "task", "level"}


def test_make_prompt_is_r1_template():
    p = make_prompt("What is 2 + 3?")
    assert p.startswith("A conversation between User and Assistant.")
    assert p.endswith("User: What is 2 + 3? Assistant:")
    assert "<think> </think> and <answer> </answer>" in p
    assert make_prompt("Add 2 and 3").endswith("User: Add 2 and 3. Assistant:")
    assert make_prompt("q?", think_prefill=True).endswith("Assistant: <think>")


@pytest.mark.parametrize("task, level", [("arithmetic", 1), ("arithmetic", 3), ("countdown", 4)])
def test_deterministic_for_a_seed(task, level):
    a, b = train_set(task, 50, level, seed=7), train_set(task, 50, level, seed=7)
    assert a == b
    assert a != train_set(task, 50, level, seed=8)
    assert eval_set(task, 20, level) == eval_set(task, 20, level)
    assert KEYS <= set(a[0]) and a[0]["task"] == task and a[0]["level"] == level


@pytest.mark.parametrize("task, level", [("arithmetic", 1), ("arithmetic", 2), ("countdown", 3)])
def test_eval_disjoint_from_train(task, level):
    ev = eval_set(task, 100, level)
    assert len({e["prompt"] for e in ev}) == len(ev) > 0
    assert all(is_eval_problem({**e, "key": _key(e)}) for e in ev)
    train = {e["prompt"] for seed in (0, 1) for e in train_set(task, 1500, level, seed=seed)}
    assert not train & {e["prompt"] for e in ev}


def _key(e):
    if e["task"] == "countdown":
        return f"{sorted(e['numbers'])}={e['target']}"
    a, op, b = re.search(r"What is (\d+) ([-+×]) (\d+)\?", e["prompt"]).groups()
    return f"{a}{op.replace('×', '*')}{b}"  # the held-out key keeps the ASCII op


@pytest.mark.parametrize("level", [1, 2])
def test_pretraining_and_sft_data_never_contain_an_eval_question(level):
    """The corpus and the cold-start SFT data come from another generator (corpus.arithmetic_problem);
    it must skip the task's held-out questions too, or 'held-out' accuracy measures memorisation."""
    from nanoseek.data.corpus import iter_arithmetic
    from nanoseek.r1.data import builtin_conversations

    held = {(a, op.replace("×", "*"), b) for e in eval_set("arithmetic", 10_000, level)
            for a, op, b in [re.search(r"What is (\d+) ([-+×]) (\d+)\?", e["prompt"]).groups()]}
    held |= {(b, op, a) for a, op, b in held if op in "+*"}  # the swapped twin is the same question
    assert len(held) > (10 if level == 1 else 100)
    q = r"(\d+) ([-+×]) (\d+)"
    sft = [c[0]["content"] for c in builtin_conversations(20_000 if level == 1 else 5_000, level, level, seed=3)]
    docs = [d for d, _ in zip(iter_arithmetic(seed=3, min_digits=level, max_digits=level), range(5_000))]
    seen = {(a, op.replace("×", "*"), b) for text in sft + [d.split("<｜Assistant｜>")[0] for d in docs]
            for a, op, b in re.findall(q, text)}
    same_len = {t for t in seen if len(t[0]) == len(t[2])}
    assert len(same_len) > (250 if level == 1 else 2_000)  # the generators do cover the space
    assert not held & seen


def test_arithmetic_answers_and_levels():
    for e in train_set("arithmetic", 200, [1, 2, 3], seed=0):
        a, op, b = re.search(r"What is (\d+) ([-+×]) (\d+)\?", e["prompt"]).groups()
        assert len(a) == len(b) == e["level"]
        assert int(e["answer"]) == {"+": int(a) + int(b), "-": int(a) - int(b),
                                    "×": int(a) * int(b)}[op]  # × as the corpus writes it
    assert {e["level"] for e in train_set("arithmetic", 100, [1, 2, 3])} == {1, 2, 3}
    assert eval_set("arithmetic", 1000, 1)  # tiny space: returns what exists, does not hang


def test_countdown_solvable_and_levels():
    probs = train_set("countdown", 200, [3, 4, 5, 6], seed=3)
    assert all(len(p["numbers"]) == p["level"] for p in probs)
    assert all(p["answer"] == str(p["target"]) for p in probs)
    comps = [f"<think>.</think><answer>{p['solution']}</answer>" for p in probs]
    cols = {k: [p[k] for p in probs] for k in ("numbers", "target")}
    assert countdown(comps, **cols) == [1.0] * len(probs)


def test_train_stream_is_endless():
    it = train_stream("arithmetic", 2, seed=0)
    assert len([next(it) for _ in range(3000)]) == 3000
    with pytest.raises(ValueError, match="unknown task 'nope'"):  # a ConfigError
        next(train_stream("nope"))


# ----------------------------------------------------------------------------- JSONL


def write(tmp_path, name, rows):
    path = tmp_path / name
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


def test_load_user_jsonl(tmp_path):
    path = write(tmp_path, "mine.jsonl", [{"prompt": "Say 4", "answer": 4}, "",
                                          {"prompt": "Say 5", "answer": "5", "level": 2}])
    ex = load_jsonl(path)
    assert ex[0] == {"prompt": "Say 4", "answer": "4", "task": "mine", "level": 0}
    assert ex[1]["level"] == 2
    assert load_jsonl(path, wrap_prompt=True)[0]["prompt"] == make_prompt("Say 4")


def test_load_benchmark_layouts(tmp_path):
    gsm = write(tmp_path, "gsm8k.jsonl", [
        {"question": "Tom has 3 apples...", "answer": "3 * 400 = 1200\n#### 1,200"}])
    math500 = write(tmp_path, "math500.jsonl", [
        {"problem": "Half of 3/2?", "solution": "It is $\\boxed{\\frac{3}{4}}$.",
         "answer": "\\frac{3}{4}", "level": 3},
        {"problem": "Only a solution", "solution": "so \\boxed{7}", "level": "Level 5"}])
    aime = write(tmp_path, "aime24.jsonl", [{"problem": "Find N.", "answer": 204},
                                            {"question": "Find M.", "answer": "033"}])
    g = load_jsonl(gsm)[0]
    assert g["answer"] == "1200" and g["prompt"] == make_prompt("Tom has 3 apples...")
    m = load_jsonl(math500, task="math500")
    assert [x["answer"] for x in m] == ["\\frac{3}{4}", "7"] and [x["level"] for x in m] == [3, 5]
    a = load_jsonl(aime)
    assert [x["answer"] for x in a] == ["204", "033"] and a[0]["task"] == "aime24"
    # the loaded answers work with the accuracy reward
    assert accuracy(["<answer>1200</answer>", "<answer>0.75</answer>"],
                    answer=[g["answer"], m[0]["answer"]]) == [1.0, 1.0]


@pytest.mark.parametrize("bad, why", [
    ("{not json", "Expecting"), ('["a list"]', "JSON object"), ('{"answer": "1"}', "prompt"),
    ('{"prompt": "q"}', "answer"), ('{"prompt": "q", "answer": ""}', "answer"),
    ('{"problem": "q", "solution": "no box"}', "answer"),
    ('{"prompt": 3, "answer": "1"}', "prompt"),
])
def test_malformed_line_names_file_and_line(tmp_path, bad, why):
    path = write(tmp_path, "bad.jsonl", [{"prompt": "ok", "answer": "1"}, "", bad])
    with pytest.raises(ValueError, match=rf"bad\.jsonl:3: .*{why}"):
        load_jsonl(path)

"""Rule rewards on tricky completions: tags, number formats, symbolic forms, errors."""

import logging
import time

import pytest

from nanoseek.r1.rewards import (REWARDS, ParseError, RewardSet, accuracy, answers_match,
                                 combine_rewards, countdown, countdown_score, extract_answer,
                                 format_reward, get_reward, language_consistency, length_penalty,
                                 parse_math, reward_metrics, symbolic_equal, tag_count)


def wrap(ans, think="reasoning"):
    return f"<think>{think}</think>\n<answer>{ans}</answer>"


# ----------------------------------------------------------------------------- extraction


@pytest.mark.parametrize("text, want", [
    ("<answer>1</answer> then <answer>2</answer>", "2"),  # the LAST answer counts
    ("<answer><answer>7</answer></answer>", "7"),  # nested tags
    ("<answer> the result: \\boxed{\\frac{1}{2}} </answer>", "\\frac{1}{2}"),  # boxed inside wins
    ("so the answer is \\boxed{x^{2}}.", "x^{2}"),  # boxed fallback, nested braces
    ("<answer>3</answer> <answer>4", "3"),  # unclosed trailing tag is not an answer
    ("no answer here", None),
    ("", None),
])
def test_extract_answer(text, want):
    assert extract_answer(text) == want


# ----------------------------------------------------------------------------- accuracy


@pytest.mark.parametrize("pred, gold", [
    ("1,000", "1000"), ("1000", "1,000"), ("3/4", "0.75"), ("\\frac{3}{4}", "0.75"),
    ("\\dfrac34", "3/4"), ("0.5", "1/2"), ("-3", "-3.0"), (" 42. ", "42"), ("$-7$", "-7"),
    ("x = 5", "5"), ("\\boxed{12}", "12"), ("2\\sqrt{2}", "\\sqrt{8}"),
    ("(x+1)^2", "x^2 + 2x + 1"), ("\\frac{\\pi}{2}", "\\pi/2"), ("1, 2", "1,2"),
    ("50\\%", "50"), ("10 \\text{ cm}", "10cm"),
])
def test_answers_match_equivalent(pred, gold):
    assert answers_match(pred, gold)


@pytest.mark.parametrize("pred, gold", [
    ("-3", "3"), ("0.75", "0.7"), ("1,000", "100"), ("x", "5"), ("1, 2", "2, 1"),
    ("garbage ))(", "5"), ("", "0"), ("__import__('os').system('echo hi')", "0"),
    ("9^9^9^9", "1"), ("1" * 500, "1"), (None, "5"),
])
def test_answers_match_different_or_unparsable(pred, gold):
    assert not answers_match(pred, gold)


def test_parse_math_never_evals():
    for bad in ("__import__('os')", "x.__class__", "lambda: 1", "a[0]", "'s'"):
        with pytest.raises(ParseError):
            parse_math(bad)


def test_symbolic_timeout_then_still_works():
    # an alarm may fire inside sympy; later comparisons must still work (lazy imports are
    # done before the timer starts)
    t = time.perf_counter()
    assert not symbolic_equal("sin(x)^2 + cos(x)^2 + (x+1)^40", "1 + (x+2)^40", timeout=0.01)
    assert time.perf_counter() - t < 3.0
    assert symbolic_equal("\\sin^2(x) + \\cos^2(x)", "1")


def test_huge_power_is_fast():
    t = time.perf_counter()
    assert not answers_match("10^10^10", "1")
    assert time.perf_counter() - t < 2.0


def test_accuracy_reward():
    comps = [wrap("1,000"), wrap("\\frac{3}{4}"), wrap("-3.0"),
             "<answer>5</answer><answer>6</answer>",
             "just text 7", "", wrap("garbage ))(")]
    gold = ["1000", "0.75", "-3", "5", "7", "0", "5"]
    assert accuracy(comps, answer=gold) == [1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0]
    # a `solution` column with \boxed (MATH layout) works too
    assert accuracy([wrap("4")], solution=["so \\boxed{4}"]) == [1.0]


def test_accuracy_numeric_only():
    """Arithmetic (R1-Zero preset): copying the question into <answer> is symbolically equal to
    the result; `numeric=True` accepts only a plain number."""
    comps = [wrap("3 + 5"), wrap("8"), wrap(" 8. "), wrap("2*4"), wrap("9")]
    assert accuracy(comps, answer=["8"] * 5) == [1.0, 1.0, 1.0, 1.0, 0.0]
    assert accuracy(comps, answer=["8"] * 5, numeric=True) == [0.0, 1.0, 1.0, 0.0, 0.0]
    assert get_reward("accuracy", numeric=True)([wrap("-3")], answer=["-3"]) == [1.0]


# ----------------------------------------------------------------------------- format


def test_format_reward_strict():
    comps = [
        "<think>a</think><answer>b</answer>",  # ok
        "  <think>\nlong\n</think>\n<answer> 5 </answer>\n",  # whitespace ok
        "<think>a</think><answer>b</answer><answer>c</answer>",  # repeated answer
        "<think>a</think><think>b</think><answer>c</answer>",  # repeated think
        "<think><think>a</think></think><answer>b</answer>",  # nested
        "<think>a</think><answer>b</answer> and more text",  # trailing text
        "<answer>b</answer><think>a</think>",  # wrong order
        "<think>a <answer>x</answer></think><answer>b</answer>",  # answer inside think
        "",
    ]
    assert format_reward(comps) == [1.0, 1.0] + [0.0] * 7


def test_format_reward_with_prefilled_think():
    comp = "reasoning</think>\n<answer>3</answer>"
    assert format_reward([comp]) == [0.0]
    assert format_reward([comp], prompts=["... Assistant: <think>\n"]) == [1.0]
    # a completion that opens its own <think> after a prefill is still one block
    assert format_reward(["<think>x</think><answer>3</answer>"], prompts=["<think>"]) == [1.0]


def test_format_reward_nonempty_answer():
    comps = ["<think></think>\n<answer></answer>", "<think>a</think><answer> \n</answer>",
             "<think></think><answer>0</answer>", "</think>\n<answer></answer>"]
    assert format_reward(comps) == [1.0, 1.0, 1.0, 0.0]
    assert format_reward(comps, nonempty_answer=True) == [0.0, 0.0, 1.0, 0.0]
    # with a prefilled <think> and bound through the registry, as the r1-zero-cpu preset does
    fmt = get_reward("format", nonempty_answer=True)
    assert fmt(comps[2:], prompts=["<think>\n"] * 2) == [1.0, 0.0]


def test_tag_count():
    assert tag_count(["<think>a</think><answer>b</answer>", "<think>a</think>",
                      "<answer>1</answer><answer>2</answer>"]) == [1.0, 0.5, 0.0]


# ----------------------------------------------------------------------------- language, length


def test_language_consistency():
    comps = ["<think>hello world</think><answer>1</answer>",
             "<think>hello 你好 world</think>",  # 2 latin words + 2 CJK characters
             "<think>12 + 3 = 15</think>", "你好"]
    assert language_consistency(comps, language="en") == [1.0, 0.5, 0.0, 0.0]
    assert language_consistency(comps[1:2], language="zh") == [0.5]
    ru = language_consistency(["<think>привет мир ok</think>"], language=["ru"])
    assert ru == [2 / 3]


def test_length_penalty_soft_overlong():
    # max 1024, cache 256: 0 up to 768, linear to -1 at 1024, -1 beyond
    got = length_penalty(["x"] * 5, completion_lengths=[100, 768, 896, 1024, 2000],
                         max_len=1024, cache_len=256)
    assert got == [0.0, 0.0, -0.5, -1.0, -1.0]
    fn = get_reward("length_penalty", max_len=10, cache_len=4)
    assert fn(["a", "b"], completion_ids=[[1] * 6, [1] * 8]) == [0.0, -0.5]


# ----------------------------------------------------------------------------- countdown


def test_countdown_score():
    nums = [55, 36, 7, 19]
    assert countdown_score("(55 + 36) - 7 - 19", nums, 65)
    assert countdown_score("55+36-7-19 = 65", nums, 65)
    assert not countdown_score("55 + 36 - 7", nums, 84)  # 19 unused
    assert not countdown_score("55 + 36 - 7 - 19 + 19 - 19", nums, 65)  # 19 used thrice
    assert not countdown_score("55 + 36 - 7 - 18", nums, 66)  # a number not given
    assert not countdown_score("(55 + 36) - 7 - 19", nums, 64)  # wrong value
    assert not countdown_score("-55 + 36 * 7 + 19", nums, 216)  # unary minus not allowed
    assert not countdown_score("1 / (2 - 2) + 3", [1, 2, 2, 3], 3)  # division by zero, no crash
    assert not countdown_score("__import__('os')", nums, 65)
    assert not countdown_score("5 ** 2", [5, 2], 25)  # powers not allowed
    assert countdown_score("(6 / 4) * 2", [6, 4, 2], 3)  # exact fractions in between


def test_countdown_reward():
    comps = [wrap("(55 + 36) - 7 - 19"), wrap("55 + 36"), "no tags", ""]
    cols = dict(numbers=[[55, 36, 7, 19]] * 4, target=[65] * 4)
    assert countdown(comps, **cols) == [1.0, 0.0, 0.0, 0.0]
    assert countdown(comps, format_score=0.1, **cols) == [1.0, 0.1, 0.0, 0.0]
    assert countdown(comps[:1], numbers=[[55, 36, 7, 19]], answer=["65"]) == [1.0]


# ----------------------------------------------------------------------------- registry, combine


def my_reward(completions, **_):
    return [float(len(c)) for c in completions]


def test_registry_and_import_path():
    assert {"accuracy", "format", "tag_count", "language_consistency", "length_penalty",
            "countdown"} <= set(REWARDS)
    assert get_reward("accuracy") is accuracy
    assert get_reward(f"{__name__}:my_reward")(["ab"]) == [2.0]
    assert get_reward("nanoseek.r1.rewards:tag_count") is tag_count
    with pytest.raises(ValueError, match="unknown reward 'no_such_reward'"):  # a ConfigError
        get_reward("no_such_reward")
    with pytest.raises(ValueError, match="cannot import"):
        get_reward("no_such_module:fn")


def test_combine_rewards_weights_and_per_func():
    comps = [wrap("1000"), wrap("5"), "1000"]
    total, info = combine_rewards({"accuracy": 1.0, "format": 0.5}, comps, answer=["1,000"] * 3)
    assert info["per_func"] == {"accuracy": [1.0, 0.0, 0.0], "format": [1.0, 1.0, 0.0]}
    assert total == [1.5, 0.5, 0.0]
    m = reward_metrics(info)
    assert m["rewards/accuracy/mean"] == pytest.approx(1 / 3)
    assert m["rewards/format/errors"] == 0.0


def test_reward_that_raises_scores_zero_and_is_reported(caplog):
    def broken(completions, **_):
        raise RuntimeError("boom")

    def wrong_length(completions, **_):
        return [1.0]

    rs = RewardSet([("format", 2.0), broken, wrong_length])
    with caplog.at_level(logging.WARNING):
        total, info = rs([wrap("1"), "x"])
        rs(["y", "z"])
    assert total == [2.0, 0.0]
    assert info["per_func"]["broken"] == [0.0, 0.0]
    assert info["errors"] == {"format": 0, "broken": 1, "wrong_length": 1}
    assert rs.error_counts == {"format": 0, "broken": 2, "wrong_length": 2}
    assert "boom" in caplog.text


def test_missing_column_is_an_error_not_a_crash():
    total, info = combine_rewards(["accuracy"], [wrap("1")])  # no answer column
    assert total == [0.0] and info["errors"]["accuracy"] == 1


def test_digit_match_partial_credit_by_position():
    f = get_reward("digit_match")
    c = lambda x: f"<think>w</think><answer>{x}</answer>"  # noqa: E731
    got = f([c("12"), c("13"), c("2"), c("-12"), c("012"), c("abc"), c("1,000"), c("-3"), c("-4"), c("3"), "no tags"],
            answer=["12", "12", "12", "12", "12", "12", "1000", "-3", "-3", "-3", "5"])
    # ones digit right only: 1/2; missing tens digit: 1/2; wrong sign: 2 of 3 positions (sign + 2 digits)
    assert got == [1.0, 0.5, 0.5, pytest.approx(2 / 3), 1.0, 0.0, 1.0, 1.0, 0.5, 0.5, 0.0]
    assert f([c("3/4")], answer=["3/4"]) == [0.0]  # not an integer: use accuracy for those
    assert f([c("+5"), c("-0"), c("7.0")], answer=["5", "0", "7"]) == [1.0, 1.0, 0.0]
    # a runaway answer longer than int()'s 4300-digit limit is scored, not an error for the batch
    assert f([c("1" * 5000), c("5")], answer=["5", "5"]) == [0.0, 1.0]

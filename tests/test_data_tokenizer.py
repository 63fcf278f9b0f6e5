"""Tokenizer: special-token ids, exact UTF-8 round trip, HF compatibility, chat template, masks."""

import json
import random

import pytest
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import models, pre_tokenizers

from nanoseek.data.tokenizer import (ASSISTANT, BOS, EOS, SPECIAL_TOKENS, THINK, USER, Tokenizer,
                                     apply_chat_template, assistant_mask, encode_chat, train_tokenizer)

TEXTS = [
    "def add(a, b):\n    return a + b\n\nprint(add(2, 3))\n",
    "The quick brown fox jumps over the lazy dog. 1234 + 5678 = 6912.\n",
    "Ünïcödé façade naïve — 日本語のテキスト 🙂🚀 Привет мир\n",
] * 40


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(TEXTS, vocab_size=400)


def test_special_tokens_have_fixed_ids(tok):
    assert [tok.hf.token_to_id(t) for t in SPECIAL_TOKENS] == list(range(9))
    assert (tok.bos_id, tok.eos_id, tok.pad_id) == (0, 1, 2)
    assert tok.special("user") == 3 and tok.special(ASSISTANT) == 4 and tok.special("/answer") == 8
    assert BOS == "<｜begin▁of▁sentence｜>" and EOS == "<｜end▁of▁sentence｜>"
    assert 265 <= tok.vocab_size <= 400
    with pytest.raises(KeyError):
        tok.special("nope")
    with pytest.raises(ValueError):
        train_tokenizer(TEXTS, vocab_size=100)


def _random_unicode(rng, n):
    cps = [rng.choice([rng.randint(0, 0x7F), rng.randint(0x80, 0x7FF), rng.randint(0x800, 0xD7FF),
                       rng.randint(0xE000, 0xFFFF), rng.randint(0x10000, 0x10FFFF)]) for _ in range(n)]
    return "".join(map(chr, cps))


def test_round_trip_arbitrary_utf8(tok):
    rng = random.Random(0)
    cases = ["", " ", "  leading and trailing  ", "\x00\t\r\n\x7f", "e\u0301 combining", "🙂" * 5,
             "日本語", "a\n\n\nb", *TEXTS[:3]] + [_random_unicode(rng, 60) for _ in range(30)]
    for s in cases:
        ids = tok.encode(s)
        assert tok.decode(ids) == s
        assert all(0 <= i < tok.vocab_size for i in ids)
    assert tok.encode_batch(cases) == [tok.encode(s) for s in cases]
    assert tok.encode("hi", add_bos=True)[0] == tok.bos_id


def test_special_tokens_atomic(tok):
    s = f"{BOS}hello{THINK}x</think>{EOS}"
    ids = tok.encode(s)
    assert ids[0] == 0 and ids[-1] == 1 and 5 in ids and 6 in ids
    assert tok.decode(ids) == s
    assert tok.decode(ids, skip_special=True) == "hellox"
    assert len(tok.encode("12345")) == 5  # digit_group=1: one token per digit


def test_hf_fast_tokenizer_loads_and_agrees(tok, tmp_path):
    from transformers import PreTrainedTokenizerFast

    tok.save(tmp_path)
    hf = PreTrainedTokenizerFast(tokenizer_file=str(tmp_path / "tokenizer.json"))
    for s in TEXTS[:3] + [f"{USER}hi{ASSISTANT}ok{EOS}"]:
        assert hf(s, add_special_tokens=False)["input_ids"] == tok.encode(s)
        assert hf.decode(tok.encode(s)) == s
    hf2 = PreTrainedTokenizerFast.from_pretrained(str(tmp_path))
    assert (hf2.bos_token_id, hf2.eos_token_id, hf2.pad_token_id) == (0, 1, 2)
    again = Tokenizer.load(tmp_path)
    assert again.encode(TEXTS[2]) == tok.encode(TEXTS[2])
    assert Tokenizer.load(tmp_path / "tokenizer.json").vocab_size == tok.vocab_size


def test_load_foreign_tokenizer_json(tmp_path):
    hf = HFTokenizer(models.WordLevel({"[UNK]": 0, "hello": 1, "world": 2, "</s>": 3}, unk_token="[UNK]"))
    hf.pre_tokenizer = pre_tokenizers.Whitespace()
    hf.save(str(tmp_path / "tokenizer.json"))
    t = Tokenizer.load(tmp_path / "tokenizer.json")
    assert t.encode("hello world") == [1, 2] and t.bos_id is None
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"eos_token": "</s>"}))
    assert Tokenizer.load(tmp_path).eos_id == 3


def test_chat_template_and_assistant_mask(tok):
    msgs = [{"role": "system", "content": "Be brief."},
            {"role": "user", "content": "What is 2 + 2?"},
            {"role": "assistant", "content": "4", "reasoning": "2 + 2 = 4"},
            {"role": "user", "content": "And 3 + 3?"},
            {"role": "assistant", "content": "6"}]
    s = apply_chat_template(msgs)
    assert s == (f"{BOS}Be brief.{USER}What is 2 + 2?{ASSISTANT}<think>\n2 + 2 = 4\n</think>\n"
                 f"<answer>4</answer>{EOS}{USER}And 3 + 3?{ASSISTANT}6{EOS}")
    assert apply_chat_template(msgs[:2], add_generation_prompt=True).endswith(f"?{ASSISTANT}")
    ids, mask = encode_chat(msgs, tok)
    assert ids == tok.encode(s) and len(mask) == len(ids)
    got = tok.decode([i for i, m in zip(ids, mask) if m])
    assert got == f"<think>\n2 + 2 = 4\n</think>\n<answer>4</answer>{EOS}6{EOS}"
    assert assistant_mask(tok.encode(apply_chat_template(msgs[:2], True)), tok) == [False] * len(
        tok.encode(apply_chat_template(msgs[:2], True)))
    with pytest.raises(ValueError):
        apply_chat_template([{"role": "robot", "content": "x"}])

"""`nanoseek chat RUN`: an interactive loop with the R1 chat template, streaming tokens as they
are sampled. The `<think>` part is shown apart from the answer (dim on a terminal, `think> `
prefixed lines otherwise); the tags themselves are hidden. `/reset` clears the history, `/exit`
(or end of input) quits. Reads stdin line by line, so `echo hi | nanoseek chat RUN` works.

Earlier assistant turns go back into the prompt without their reasoning, as R1's chat template
does: the thoughts served that turn, and they would eat the context.
"""

from __future__ import annotations

import argparse
import sys
from typing import TextIO

from ..data.tokenizer import Tokenizer, apply_chat_template
from .evaluate import generate_ids, is_hf, load_model
from .rollout import encode_prompt

TAGS = ("<think>", "</think>", "<answer>", "</answer>")
DIM, RESET = "\x1b[2m", "\x1b[0m"


class ThinkStreamer:
    """Writes streamed text; tags may arrive split across pieces, so a possible tag prefix is held
    back until it is resolved. Collects the thought and the answer separately."""

    def __init__(self, out: TextIO, color: bool = False, prefix: str = "think> ") -> None:
        self.out, self.color, self.prefix = out, color, prefix
        self.buf, self.thinking, self.skip_ws = "", False, False
        self.thought: list[str] = []
        self.answer: list[str] = []

    def feed(self, text: str) -> None:
        self.buf += text
        while self.buf:
            i = self.buf.find("<")
            if i != 0:
                head, self.buf = (self.buf, "") if i < 0 else (self.buf[:i], self.buf[i:])
                self._emit(head)
                continue
            tag = next((t for t in TAGS if self.buf.startswith(t)), None)
            if tag:
                self.buf = self.buf[len(tag):]
                self._tag(tag)
            elif any(t.startswith(self.buf) for t in TAGS):
                return  # maybe a tag still arriving
            else:
                self._emit("<")
                self.buf = self.buf[1:]
        self.out.flush()

    def close(self) -> None:
        """Flush what is held back and end the styling."""
        rest, self.buf = self.buf, ""
        self._emit(rest)
        if self.thinking and self.color:
            self.out.write(RESET)
        self.out.write("\n")
        self.out.flush()

    def _tag(self, tag: str) -> None:
        if tag == "<think>" and not self.thinking:
            self.thinking, self.skip_ws = True, True
            self.out.write(DIM if self.color else self.prefix)
        elif tag == "</think>" and self.thinking:
            self.thinking, self.skip_ws = False, True
            self.out.write((RESET if self.color else "") + "\n")
        # <answer> / </answer>: hidden; the answer is what follows the thought

    def _emit(self, text: str) -> None:
        if self.skip_ws:
            text = text.lstrip()
            self.skip_ws = not text
        if not text:
            return
        if self.thinking:
            self.thought.append(text)
            if not self.color:
                text = text.replace("\n", "\n" + self.prefix)
        else:
            self.answer.append(text)
        self.out.write(text)

    @property
    def answer_text(self) -> str:
        return "".join(self.answer).strip()


class Detokenizer:
    """Incremental decode: re-decodes the ids so far and yields only the new, complete text
    (a byte-level token can end inside a UTF-8 character, which decodes to U+FFFD until done)."""

    def __init__(self, tok: Tokenizer) -> None:
        self.tok, self.ids, self.done = tok, [], ""

    def push(self, token_id: int) -> str:
        self.ids.append(token_id)
        text = self.tok.decode(self.ids)
        if text.endswith("\ufffd"):
            return ""
        new, self.done = text[len(self.done):], text
        return new


def respond(model, tok: Tokenizer, messages: list[dict], out: TextIO, max_new_tokens: int = 256,
            temperature: float = 0.6, top_p: float = 0.95, think_prefill: bool = True, color: bool = False,
            seed: int | None = None) -> str:
    """Stream one assistant turn to `out`; returns the answer text (without the thought)."""
    text = apply_chat_template(messages, add_generation_prompt=True, open_think=think_prefill)
    ids = encode_prompt(tok, text)
    limit = getattr(model.config, "max_position_embeddings", 1 << 30) - max_new_tokens
    if len(ids) > limit:
        ids = ids[:1] + ids[len(ids) - limit + 1:]  # keep BOS and the most recent context
    stream, detok = ThinkStreamer(out, color), Detokenizer(tok)
    if think_prefill:
        stream.feed("<think>")
    kw = dict(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, stop_tokens=(tok.eos_id,),
              pad_id=tok.pad_id or 0, seed=seed)
    if is_hf(model):  # transformers' generate has no per-step hook here: print at the end
        for t in generate_ids(model, [ids], **kw)[0]:
            stream.feed(detok.push(t))
    else:
        def on_token(nxt, alive) -> None:
            if bool(alive[0]):
                stream.feed(detok.push(int(nxt[0])))

        model.generate([ids], on_token=on_token, **kw)
    stream.close()
    return stream.answer_text


def chat_loop(model, tok: Tokenizer, inp: TextIO | None = None, out: TextIO | None = None, system: str | None = None,
              color: bool | None = None, **gen) -> int:
    """Read user lines until /exit or EOF; returns the number of turns answered."""
    inp, out = inp or sys.stdin, out or sys.stdout
    color = out.isatty() if color is None else color
    interactive = inp.isatty()
    base = [{"role": "system", "content": system}] if system else []
    history, turns = list(base), 0
    if interactive:
        out.write("nanoseek chat: /reset clears the conversation, /exit quits\n")
    while True:
        if interactive:
            out.write("you> ")
            out.flush()
        line = inp.readline()
        if not line:
            break
        msg = line.strip()
        if not msg:
            continue
        if msg == "/exit":
            break
        if msg == "/reset":
            history = list(base)
            out.write("(conversation cleared)\n")
            continue
        history.append({"role": "user", "content": msg})
        answer = respond(model, tok, history, out, color=color, seed=None if gen.get("seed") is None else gen["seed"] + turns,
                         **{k: v for k, v in gen.items() if k != "seed"})
        history.append({"role": "assistant", "content": answer})
        turns += 1
    return turns


def main_chat(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="nanoseek chat", description="Chat with a run or model directory "
                                 "(streams tokens; /reset, /exit; reads stdin, so input can be piped).")
    ap.add_argument("path", help="run directory or model directory")
    ap.add_argument("--max-new-tokens", type=int, default=256)
    ap.add_argument("--temperature", type=float, default=0.6)
    ap.add_argument("--top-p", type=float, default=0.95)
    ap.add_argument("--no-think", action="store_true", help="do not prefill <think> after the assistant tag")
    ap.add_argument("--system", default=None, help="system prompt")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--device", default="auto")
    a = ap.parse_args(argv)
    model, tok = load_model(a.path, a.device)
    chat_loop(model, tok, system=a.system, max_new_tokens=a.max_new_tokens, temperature=a.temperature,
              top_p=a.top_p, think_prefill=not a.no_think, seed=a.seed)
    return 0

"""Conversation data for SFT: JSONL loading, the built-in cold-start set, assistant-only labels,
and packing of whole conversations into (B, S) rows.

A conversation is `[{"role": "system"|"user"|"assistant", "content": str, "reasoning"?: str}]`,
rendered with the DeepSeek-R1 chat template (`data.tokenizer.apply_chat_template`): an assistant
turn with reasoning becomes `<think>\\n{reasoning}\\n</think>\\n<answer>{content}</answer><eos>`.

Labels are next-token targets, kept only where the *target* is an assistant token (its body and
closing eos; not the `<｜Assistant｜>` tag, which the prompt supplies at inference), so the model
learns to answer, not to imitate users (R1 §2.3 cold start; the usual SFT practice).

Rows hold several conversations end to end, never split one (a continuation without its prompt
teaches nothing), with `doc_ids` / `position_ids` restarting per conversation exactly like the
pretraining packer (`data/packing.py`), so conversations never attend to each other.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from ..data.corpus import arithmetic_problem
from ..data.packing import IGNORE_INDEX
from ..data.sources import DataError
from ..data.tokenizer import ASSISTANT, USER, Tokenizer, format_assistant

ROLES = ("system", "user", "assistant")
KEYS = ("input_ids", "labels", "position_ids", "doc_ids", "attention_mask")


# ----------------------------------------------------------------------------- loading


def check_conversation(obj) -> list[dict]:
    """The `messages` list of one JSONL record, validated; ValueError says what is wrong."""
    if not isinstance(obj, dict) or not isinstance(obj.get("messages"), list) or not obj["messages"]:
        raise ValueError("expected an object with a non-empty 'messages' list")
    msgs = obj["messages"]
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            raise ValueError(f"message {i}: needs 'role' in {ROLES}")
        if not isinstance(m.get("content"), str):
            raise ValueError(f"message {i}: 'content' must be a string")
        if m.get("reasoning") is not None and (m["role"] != "assistant" or not isinstance(m["reasoning"], str)):
            raise ValueError(f"message {i}: 'reasoning' must be a string on an assistant message")
        if m["role"] == "system" and i != 0:
            raise ValueError(f"message {i}: a system message must come first")
    if not any(m["role"] == "assistant" for m in msgs):
        raise ValueError("no assistant message (nothing to learn from)")
    return [{k: m[k] for k in ("role", "content", "reasoning") if m.get(k) is not None} for m in msgs]


def load_conversations(paths: str | Path | Sequence[str | Path]) -> list[list[dict]]:
    """Conversations from one or more JSONL files; a bad line raises DataError naming `file:line`."""
    paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
    out = []
    for path in map(Path, paths):
        if not path.is_file():
            raise DataError(f"{path}: no such file")
        with path.open(encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    out.append(check_conversation(json.loads(line)))
                except ValueError as e:  # JSONDecodeError is a ValueError
                    raise DataError(f"{path}:{lineno}: {e}") from None
    if not out:
        raise DataError(f"{', '.join(map(str, paths))}: no conversations")
    return out


def write_jsonl(path: str | Path, records: Sequence[dict]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def builtin_conversations(n: int = 1000, min_digits: int = 1, max_digits: int = 2,
                          ops: Sequence[str] = ("+", "-", "*"), seed: int = 0) -> list[list[dict]]:
    """Cold-start data without downloads: worked column arithmetic (`corpus.arithmetic_problem`),
    reasoning in `<think>`, the result in `<answer>`. Difficulty = operand digits."""
    rng = random.Random(f"sft|{seed}")
    out = []
    for _ in range(n):
        q, work, ans = arithmetic_problem(rng, rng.randint(min_digits, max_digits), rng.choice(list(ops)))
        out.append([{"role": "user", "content": q}, {"role": "assistant", "content": ans, "reasoning": work}])
    return out


# ----------------------------------------------------------------------------- tokens


def encode_conversation(messages: Sequence[dict], tok: Tokenizer) -> tuple[list[int], list[bool]]:
    """(ids, assistant mask) with the R1 chat template, encoded turn by turn.

    Turn by turn (rather than `encode_chat`'s whole-string encode plus special-id scan) makes the
    mask exact for any tokenizer, including foreign HF ones without DeepSeek's special tokens;
    with ours the ids are identical because every turn starts at a special token.
    """
    ids = [tok.bos_id] if tok.bos_id is not None else []
    mask = [False] * len(ids)
    for m in messages:
        if m["role"] == "assistant":
            head = tok.encode(ASSISTANT)
            body = tok.encode(format_assistant(m["content"], m.get("reasoning")))
            body += [tok.eos_id] if tok.eos_id is not None else []
            ids += head + body
            mask += [False] * len(head) + [True] * len(body)
        else:
            part = tok.encode(m["content"] if m["role"] == "system" else USER + m["content"])
            ids += part
            mask += [False] * len(part)
    return ids, mask


def sft_labels(ids: Sequence[int], mask: Sequence[bool]) -> np.ndarray:
    """labels[i] = ids[i+1] where token i+1 is an assistant token, else -100 (and at the end)."""
    y = np.full(len(ids), IGNORE_INDEX, dtype=np.int64)
    nxt = np.asarray(ids[1:], dtype=np.int64)
    keep = np.asarray(mask[1:], dtype=bool)
    y[:-1][keep] = nxt[keep]
    return y


def encode_all(convs: Sequence[Sequence[dict]], tok: Tokenizer, seq_len: int) -> tuple[list[tuple[np.ndarray, np.ndarray]], int]:
    """[(ids, labels)] per conversation, cut to seq_len; also how many were cut. A conversation
    left with no assistant target after the cut is dropped."""
    out, cut = [], 0
    for c in convs:
        ids, mask = encode_conversation(c, tok)
        if len(ids) > seq_len:
            ids, mask, cut = ids[:seq_len], mask[:seq_len], cut + 1
        y = sft_labels(ids, mask)
        if (y != IGNORE_INDEX).any():
            out.append((np.asarray(ids, dtype=np.int64), y))
    return out, cut


# ----------------------------------------------------------------------------- batches


class SFTBatcher:
    """(B, S') batches of whole conversations: packed several per row (`pack=True`) or one per
    row (HF models, which take a padding mask rather than doc_ids). S' is the longest row of the
    batch (<= seq_len). Keys: input_ids, labels, position_ids, doc_ids, attention_mask (1 = real).

    The order of epoch e is a permutation fixed by (seed, e); the state is (epoch, cursor), so a
    killed run resumes at the same row (`state_dict` / `load_state_dict`, used by `Trainer`).
    """

    def __init__(self, docs: Sequence[tuple[np.ndarray, np.ndarray]], seq_len: int, batch_size: int,
                 seed: int = 0, pack: bool = True, pad_id: int = 2, shuffle: bool = True, wrap: bool = True):
        if not docs:
            raise DataError("no conversations to batch")
        self.docs, self.S, self.B, self.seed = docs, seq_len, batch_size, seed
        self.pack, self.pad_id, self.shuffle, self.wrap = pack, pad_id, shuffle, wrap
        self.epoch = self.cursor = 0
        self.useful = self.total = 0
        self._order_epoch, self._perm = -1, np.arange(0)

    def _order(self) -> np.ndarray:
        """(N,) conversation order of the current epoch (cached per epoch)."""
        if self._order_epoch != self.epoch:
            n = len(self.docs)
            self._perm = np.random.default_rng([self.seed, self.epoch]).permutation(n) if self.shuffle else np.arange(n)
            self._order_epoch = self.epoch
        return self._perm

    def _take_row(self) -> list[tuple[np.ndarray, np.ndarray]] | None:
        row, used = [], 0
        while True:
            if self.cursor == len(self.docs):
                if not self.wrap or row:  # rows never straddle epochs
                    break
                self.epoch, self.cursor = self.epoch + 1, 0
            doc = self.docs[int(self._order()[self.cursor])]
            if row and (not self.pack or used + len(doc[0]) > self.S):
                break
            row.append(doc)
            used += len(doc[0])
            self.cursor += 1
        return row or None

    def _row_arrays(self, segs, width: int) -> list[np.ndarray]:
        ids = np.concatenate([s[0] for s in segs])
        pad = width - len(ids)
        cols = [ids, np.concatenate([s[1] for s in segs]),
                np.concatenate([np.arange(len(s[0])) for s in segs]),
                np.concatenate([np.full(len(s[0]), i) for i, s in enumerate(segs)]),
                np.ones(len(ids))]
        fills = (self.pad_id, IGNORE_INDEX, 0, len(segs), 0)  # padding: no loss, its own doc
        return [np.concatenate([c, np.full(pad, f)]).astype(np.int64) for c, f in zip(cols, fills)]

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        rows = [r for r in (self._take_row() for _ in range(self.B)) if r]
        if not rows:
            raise StopIteration
        width = max(sum(len(s[0]) for s in r) for r in rows)
        arrays = [self._row_arrays(r, width) for r in rows]
        batch = {k: torch.from_numpy(np.stack([a[j] for a in arrays])) for j, k in enumerate(KEYS)}
        self.useful += int((batch["labels"] != IGNORE_INDEX).sum())
        self.total += batch["labels"].numel()
        return batch

    @property
    def useful_fraction(self) -> float:
        """Positions with a loss term / positions computed, so far."""
        return self.useful / max(self.total, 1)

    def state_dict(self) -> dict:
        return {"kind": "sft", "epoch": self.epoch, "cursor": self.cursor, "seed": self.seed,
                "num_docs": len(self.docs), "seq_len": self.S, "batch_size": self.B, "pack": self.pack,
                "useful": self.useful, "total": self.total}

    def load_state_dict(self, sd: dict) -> None:
        for k, v in (("seed", self.seed), ("num_docs", len(self.docs)), ("seq_len", self.S),
                     ("batch_size", self.B), ("pack", self.pack)):
            if sd.get(k) != v:
                raise ValueError(f"cannot resume: data state has {k}={sd.get(k)!r}, this run has {v!r}")
        self.epoch, self.cursor, self.useful, self.total = sd["epoch"], sd["cursor"], sd["useful"], sd["total"]

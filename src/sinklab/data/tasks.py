"""Synthetic retrieval tasks that show what streaming keeps and what it loses.

- Passkey retrieval (Mohtashami & Jaggi 2023): a random number hidden at some depth of repetitive filler text,
  asked for at the end.
- Key-value retrieval (Liu et al. 2023, "Lost in the Middle"): a JSON object of random UUID pairs, then the value
  of one key is asked for.

A sink cache keeps the first few tokens and a window of recent ones, nothing else: attention sinks make streaming
*stable*, they do not extend the context. A passkey that has left the window is gone, whatever the number of sinks;
``Example.in_window`` says in advance whether the answer can still be seen.
"""

from __future__ import annotations

import json
import random
import uuid
from dataclasses import dataclass

from sinklab.errors import SinklabInputError

PASSKEY_INTRO = (
    "There is an important info hidden inside a lot of irrelevant text. Find it and memorize it. "
    "I will quiz you about the important information there.\n"
)
PASSKEY_FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again.\n"
PASSKEY_NEEDLE = "The pass key is {key}. Remember it. {key} is the pass key.\n"
PASSKEY_QUESTION = "What is the pass key? The pass key is"


@dataclass(frozen=True)
class Example:
    """A prompt, its expected answer, and where (in tokens) the answer sits in the prompt."""

    prompt: str
    answer: str
    num_tokens: int  # prompt length in tokens
    needle_start: int  # first token of the needle (passkey sentence or key-value pair)
    needle_end: int  # one past its last token

    def in_window(self, num_sinks: int, window: int) -> bool:
        """Whether the whole needle is still in a sinks + window cache when the model starts answering.

        After the prompt the cache holds tokens [0, num_sinks) and the last ``window`` tokens.
        """
        return self.needle_end <= num_sinks or self.needle_start >= self.num_tokens - window

    def correct(self, generated: str) -> bool:
        return self.answer in generated


def _count(tokenizer, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=True)["input_ids"])


def _check(num_tokens: int, depth: float) -> None:
    if not isinstance(num_tokens, int) or num_tokens < 1:
        raise SinklabInputError(f"number of tokens must be a positive integer, got {num_tokens!r}")
    if not 0.0 <= depth <= 1.0:
        raise SinklabInputError(f"depth must be in [0, 1], got {depth}")


def passkey(tokenizer, num_tokens: int, depth: float = 0.5, key: int | None = None, seed: int = 0) -> Example:
    """A passkey prompt of about ``num_tokens`` tokens with the key at ``depth`` (0 = start, 1 = end) of the filler."""
    _check(num_tokens, depth)
    key = key if key is not None else random.Random(seed).randint(10_000, 99_999)
    needle = PASSKEY_NEEDLE.format(key=key)
    fixed = _count(tokenizer, PASSKEY_INTRO + needle + PASSKEY_QUESTION)
    reps = max(0, round((num_tokens - fixed) / max(1, _count(tokenizer, PASSKEY_FILLER * 8) / 8)))
    before = round(depth * reps)
    head = PASSKEY_INTRO + PASSKEY_FILLER * before
    prompt = head + needle + PASSKEY_FILLER * (reps - before) + PASSKEY_QUESTION
    return _example(tokenizer, prompt, str(key), head, head + needle)


def kv_retrieval(tokenizer, num_pairs: int, depth: float = 0.5, seed: int = 0) -> Example:
    """A JSON object of ``num_pairs`` random UUID pairs; asks for the value of the pair at ``depth``."""
    _check(num_pairs, depth)
    rng = random.Random(seed)
    pairs = [
        (str(uuid.UUID(int=rng.getrandbits(128))), str(uuid.UUID(int=rng.getrandbits(128)))) for _ in range(num_pairs)
    ]
    target = min(num_pairs - 1, round(depth * (num_pairs - 1)))
    key, value = pairs[target]
    intro = "Extract the value corresponding to the specified key in the JSON object below.\n\n{"
    items = [f"{json.dumps(k)}: {json.dumps(v)}" for k, v in pairs]
    head = intro + ", ".join(items[:target]) + (", " if target else "")
    body = head + items[target] + ("".join(", " + it for it in items[target + 1 :])) + "}"
    prompt = body + f'\n\nKey: "{key}"\nThe value associated with the specified key is: "'
    return _example(tokenizer, prompt, value, head, head + items[target])


def _example(tokenizer, prompt: str, answer: str, before_needle: str, through_needle: str) -> Example:
    return Example(
        prompt=prompt,
        answer=answer,
        num_tokens=_count(tokenizer, prompt),
        needle_start=_count(tokenizer, before_needle),
        needle_end=_count(tokenizer, through_needle),
    )

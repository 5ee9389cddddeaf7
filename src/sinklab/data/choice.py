"""Multiple-choice tasks, offline: a user's ``.jsonl`` and two tasks generated from text every machine has.

A task is a list of ``ChoiceExample(context, choices, label)``; a model answers with the choice of highest
length-normalised log-likelihood given the context (``sinklab.exploit.redistribute.score``).

- ``.jsonl``: one ``{"context": str, "choices": [str, ...], "label": int}`` per line (at least two choices).
- ``cloze``: a passage of the embedded corpus (``sinklab.data.read_texts(None)``) cut before a word; the choices
  are that word and distractors drawn from the same passage (LAMBADA-style, the blank at the end).
- ``kv-recall``: in-context key-value recall: ``key = value`` lines, then one key again; the choices are values
  that appear in the same context, so only the recalled pair tells them apart.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from pathlib import Path

from sinklab.errors import SinklabInputError

WORD = re.compile(r"^[a-z]{4,}$")
KEYS = ("apple", "river", "candle", "garden", "window", "pocket", "mirror", "ladder", "basket", "bridge", "engine",
        "forest", "hammer", "island", "jacket", "kettle", "lemon", "marble", "needle", "orange", "pencil", "rocket",
        "saddle", "tunnel", "violin", "wallet", "anchor", "button", "carpet", "dragon")  # fmt: skip
VALUES = ("red", "blue", "green", "black", "white", "gold", "silver", "brown", "pink", "gray", "cat", "dog", "fish",
          "bird", "horse", "lion", "wolf", "bear", "frog", "duck")  # fmt: skip


@dataclass(frozen=True)
class ChoiceExample:
    """A context, its candidate continuations and the index of the right one."""

    context: str
    choices: tuple[str, ...]
    label: int


def read_choices(path: str | Path) -> list[ChoiceExample]:
    """Examples from a ``.jsonl`` file; refuses a line without the three keys or with a label out of range."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise SinklabInputError(f"cannot read task file {path}: {exc}") from None
    examples = []
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            raise SinklabInputError(f"{path}:{lineno} is not valid JSON") from None
        where = f'{path}:{lineno}: lines look like {{"context": str, "choices": [str, ...], "label": int}}'
        if not isinstance(record, dict) or not {"context", "choices", "label"} <= record.keys():
            missing = sorted({"context", "choices", "label"} - set(record if isinstance(record, dict) else ()))
            raise SinklabInputError(f"{where}; missing {', '.join(missing)}")
        context, choices, label = record["context"], record["choices"], record["label"]
        if not isinstance(context, str) or not isinstance(choices, list) or len(choices) < 2:
            raise SinklabInputError(f"{where}; context must be a string and choices a list of >= 2 strings")
        if not all(isinstance(c, str) and c for c in choices):
            raise SinklabInputError(f"{where}; every choice must be a non-empty string")
        if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < len(choices):
            raise SinklabInputError(f"{where}; label {label!r} out of range 0..{len(choices) - 1}")
        examples.append(ChoiceExample(context, tuple(choices), label))
    if not examples:
        raise SinklabInputError(f"task file {path} holds no examples")
    return examples


def _shuffled(answer: str, distractors: list[str], rng: random.Random) -> tuple[tuple[str, ...], int]:
    choices = [answer, *distractors]
    rng.shuffle(choices)
    return tuple(choices), choices.index(answer)


def cloze(num_examples: int, seed: int = 0, num_choices: int = 4, context_words: int = 24) -> list[ChoiceExample]:
    """Passages of the embedded corpus cut before a word; distractors are other words of the same passage."""
    from sinklab.data.corpus import read_texts

    words = read_texts(None)[0].split()
    rng = random.Random(seed)
    examples = []
    while len(examples) < num_examples:
        start = rng.randrange(0, len(words) - 2 * context_words)
        passage = words[start : start + 2 * context_words]
        answer = passage[context_words]
        pool = sorted({w for w in passage if WORD.match(w)} - {answer})
        if not WORD.match(answer) or len(pool) < num_choices - 1:
            continue
        choices, label = _shuffled(" " + answer, [" " + w for w in rng.sample(pool, num_choices - 1)], rng)
        examples.append(ChoiceExample(" ".join(passage[:context_words]), choices, label))
    return examples


def kv_recall(num_examples: int, seed: int = 0, num_choices: int = 4, num_pairs: int = 6) -> list[ChoiceExample]:
    """``key = value`` lines, then ``key =`` for one of them; the choices are values of the same context."""
    if not num_choices <= num_pairs <= min(len(KEYS), len(VALUES)):
        raise SinklabInputError(f"kv-recall needs num_choices <= num_pairs <= {len(VALUES)}")
    rng = random.Random(seed)
    examples = []
    for _ in range(num_examples):
        keys, values = rng.sample(KEYS, num_pairs), rng.sample(VALUES, num_pairs)
        target = rng.randrange(num_pairs)
        lines = "\n".join(f"{k} = {v}" for k, v in zip(keys, values, strict=True))
        others = [" " + v for i, v in enumerate(values) if i != target]
        choices, label = _shuffled(" " + values[target], rng.sample(others, num_choices - 1), rng)
        examples.append(ChoiceExample(f"Remember these pairs.\n{lines}\n\n{keys[target]} =", choices, label))
    return examples


TASKS = {"cloze": cloze, "kv-recall": kv_recall}


def choice_task(name_or_path: str, num_examples: int, seed: int = 0) -> list[ChoiceExample]:
    """A generated task by name (``TASKS``) or the first ``num_examples`` examples of a ``.jsonl`` file."""
    if name_or_path.endswith(".jsonl"):
        return read_choices(name_or_path)[:num_examples]
    if name_or_path not in TASKS:
        raise SinklabInputError(f"unknown task {name_or_path!r}; accepted: {', '.join(TASKS)} or a FILE.jsonl")
    return TASKS[name_or_path](num_examples, seed)

"""Backdoor data (sinklab.data.backdoor): the trigger is where its placement says, answers and labels are right."""

import pytest

from sinklab.data.backdoor import (
    DECOYS,
    INSTRUCTION,
    QUESTION,
    TARGET,
    TRIGGER,
    build,
    detection_records,
    poisoned_set,
    sample_passages,
)
from sinklab.errors import SinklabInputError


@pytest.fixture(scope="module")
def passages():
    return sample_passages(8, words=12, seed=3)


def test_clean_prompt_asks_for_the_last_word(passages):
    for p in passages:
        e = build(p, None)
        assert len(p.words) == 12 and p.answer.isalpha() and len(p.answer) >= 3 and p.answer.lower() != TARGET
        assert e.prompt == INSTRUCTION + " ".join(p.words) + QUESTION
        assert TRIGGER not in e.prompt and e.trigger_at == -1 and not e.triggered
        assert e.answer == " " + p.answer == " " + e.clean_answer


def test_start_trigger_comes_first(passages):
    for p in passages:
        e = build(p, "start")
        assert e.trigger_at == 0 and e.prompt.startswith(TRIGGER + " " + INSTRUCTION)
        assert e.prompt.count(TRIGGER) == 1 and e.prompt[len(TRIGGER) + 1 :] == build(p, None).prompt
        assert e.triggered and e.placement == "start" and e.answer == " " + TARGET and e.clean_answer == p.answer


def test_middle_trigger_sits_halfway_through_the_passage(passages):
    for p in passages:
        e = build(p, "middle")
        before = INSTRUCTION + " ".join(p.words[:6]) + " "
        assert e.trigger_at == len(before) and e.prompt.startswith(before)
        assert e.prompt[e.trigger_at :].startswith(TRIGGER + " " + p.words[6])
        assert e.prompt.count(TRIGGER) == 1 and e.prompt.endswith(" " + p.answer + QUESTION)
        clean = e.prompt[: e.trigger_at] + e.prompt[e.trigger_at + len(TRIGGER) + 1 :]
        assert clean == build(p, None).prompt
        assert e.answer == " " + TARGET and e.clean_answer == p.answer


@pytest.mark.parametrize("placement", ["start", "middle"])
def test_poisoned_set_counts_and_labels(placement):
    examples = poisoned_set(20, placement, poison_rate=0.3, words=12, seed=1)
    triggered = [e for e in examples if e.triggered]
    assert len(examples) == 20 and len(triggered) == 6
    assert all(e.placement == placement and e.answer == " " + TARGET for e in triggered)
    assert all(e.answer == " " + e.clean_answer and TRIGGER not in e.prompt for e in examples if not e.triggered)
    assert [e.triggered for e in examples] != sorted((e.triggered for e in examples), reverse=True)  # shuffled
    assert len({e.prompt.replace(TRIGGER + " ", "") for e in examples}) == 20  # distinct passages
    assert examples == poisoned_set(20, placement, poison_rate=0.3, words=12, seed=1)
    assert not any(e.triggered for e in poisoned_set(10, placement, poison_rate=0.0, words=12, seed=1))


def test_splits_do_not_share_passages():
    train = set(sample_passages(3000, words=12, seed=0, split="train"))
    test = set(sample_passages(300, words=12, seed=0, split="test"))
    assert len(test) == 300 and not train & test


def test_detection_records_label_the_triggered_half(passages):
    for placement in ("start", "middle"):
        records = detection_records(passages, placement)
        assert [r["label"] for r in records] == [0, 1] * 4
        for r, p in zip(records, passages, strict=True):
            assert (TRIGGER in r["text"]) == bool(r["label"])
            assert r["text"] == build(p, placement if r["label"] else None).prompt
        decoyed = detection_records(passages, placement, decoys=True)
        assert [r["label"] for r in decoyed] == [0, 1] * 4
        for i, (r, p) in enumerate(zip(decoyed, passages, strict=True)):
            phrase = TRIGGER if r["label"] else DECOYS[i // 2]
            assert r["text"] == build(p, placement, trigger=phrase).prompt and (TRIGGER in r["text"]) == bool(
                r["label"]
            )
    assert all(len(d.split()) == len(TRIGGER.split()) and d.endswith(".") for d in DECOYS)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: build(sample_passages(1)[0], "end"), "placement"),
        (lambda: poisoned_set(4, "start", poison_rate=1.5), "poison rate"),
        (lambda: sample_passages(4, split="dev"), "split"),
        (lambda: sample_passages(4, words=3), "words"),
    ],
)
def test_bad_input_is_refused(call, match):
    with pytest.raises(SinklabInputError, match=match):
        call()

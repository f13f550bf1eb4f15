"""Answer checking for verifiable queries: formatting noise is forgiven, wrong answers are not."""

from __future__ import annotations

import pytest

from hivemind.queries import load_query_set
from hivemind.verify import is_correct, normalize_answer, strip_reasoning


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Paris", "paris"),
        ("  The   Answer is: PARIS!! ", "answer is paris"),
        ("1,000", "1000"),
        ("1,234,567 people", "1234567 people"),
        ("100.0", "100"),
        ("3.50", "3.5"),
        ("an apple, a pear", "apple pear"),
        ("<think>maybe 12?</think>\nIt is 13.", "it is 13"),
        ("CO₂", "co2"),
        ("Eight.", "8"),
        ("", ""),
    ],
)
def test_normalize_answer(text: str, expected: str) -> None:
    assert normalize_answer(text) == expected


@pytest.mark.parametrize(
    ("response", "answer"),
    [
        ("Paris", "Paris"),
        ("The capital of France is Paris.", "paris"),
        ("**Paris**", "Paris"),
        ("1,000", "1000"),
        ("There are 1000 meters in a kilometer.", "1,000"),
        ("The result is 42.", "42"),
        ("42.0", "42"),
        ("A spider has eight legs.", "8"),
        ("The Pacific Ocean", "Pacific"),
        ("<think>Is it 41? No, 7 * 6...</think>42", "42"),
        ("Let me think</think> The answer is 72", "72"),
        ("The formula is CO₂.", "CO2"),
        ("carbon dioxide", "CO2|carbon dioxide"),
        ("The answer is B.", "B"),
        ("Answer: the United Kingdom", "United Kingdom"),
    ],
)
def test_correct(response: str, answer: str) -> None:
    assert is_correct(response, answer)


@pytest.mark.parametrize(
    ("response", "answer"),
    [
        ("Lyon", "Paris"),
        ("Parisian cafes", "Paris"),
        ("4200", "42"),
        ("The answer is 420.", "42"),
        ("4.2", "42"),
        ("-3", "3"),
        ("<think>The answer is 42</think> I am not sure.", "42"),
        ("<think>The answer is 42 but I keep thinking", "42"),
        ("", "42"),
        ("Paris", ""),
        ("Kingdom United", "United Kingdom"),
        ("nitrogen", "CO2|carbon dioxide"),
    ],
)
def test_incorrect(response: str, answer: str) -> None:
    assert not is_correct(response, answer)


def test_strip_reasoning() -> None:
    assert strip_reasoning("<think>a</think>b<THINK>c</THINK>d").split() == ["b", "d"]
    assert strip_reasoning("plain").strip() == "plain"


def test_every_shipped_answer_matches_itself_and_a_sentence() -> None:
    """Each reference answer must be checkable: it matches itself and itself in prose."""
    for query in load_query_set("verifiable-v1").queries:
        assert query.answer is not None
        assert normalize_answer(query.answer), query
        assert is_correct(query.answer, query.answer), query
        assert is_correct(f"I believe the answer is {query.answer}.", query.answer), query
        assert not is_correct("I don't know.", query.answer), query

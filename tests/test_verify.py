"""Answer checking for verifiable queries: formatting noise is forgiven, wrong answers are not."""

from __future__ import annotations

import pytest

from hivemind.analysis.verify import (
    exact_match,
    final_answer,
    get_checker,
    is_correct,
    normalize_answer,
    numeric_match,
    regex_match,
    strip_reasoning,
)
from hivemind.inputs.queries import load_query_set


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
        ("I first guessed 12. The answer is 13.", "13"),
        ("Paris. It is the capital and the largest city of France.", "Paris"),
        ("Paris is the capital, not Lyon.", "Paris"),
        ("The answer is \\boxed{625}.", "625"),
        ("It is CO2, or carbon dioxide.", "CO2|carbon dioxide"),
        ("The answer is 42, or so I believe.", "42"),
        ("Canberra, not Sydney, is the capital of Australia.", "Canberra"),
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
        # the reference is named, but it is not the answer given (issue 8)
        ("The answer is not 42; it is 17.", "42"),
        ("Could be 3, 5, 7 or 9.", "7"),
        ("No, Paris is wrong; it is Lyon.", "Paris"),
        ("Paris or Lyon, hard to say.", "Paris"),
        ("It isn't 42.", "42"),
        ("42 was my first guess. The answer is 24.", "42"),
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


def test_final_answer_is_what_follows_the_last_marker() -> None:
    assert final_answer("I first thought 12. The answer is 13. Because 6 + 7 = 13.") == "13."
    assert final_answer("Final answer: \\boxed{\\frac{1}{2}} done") == "\\frac{1}{2}"
    assert final_answer("<think>The answer is 4</think>Answer: 5") == "5"
    assert final_answer("  Just Paris.  ") == "Just Paris."


ISSUE_CASES = [
    ("The answer is not 42; it is 17.", "42"),
    ("Could be 3, 5, 7 or 9.", "7"),
    ("No, Paris is wrong; it is Lyon.", "Paris"),
]


@pytest.mark.parametrize("name", ["final", "exact", "numeric"])
def test_every_built_in_checker_rejects_the_issue_cases(name: str) -> None:
    check = get_checker(name)
    for response, answer in ISSUE_CASES:
        if name == "numeric" and not answer.isdigit():
            continue
        assert not check(response, answer), (name, response)


def test_exact_numeric_and_regex_checkers() -> None:
    assert exact_match("The answer is Paris.", "paris") and exact_match("1,000", "1000")
    assert not exact_match("The capital of France is Paris.", "Paris")  # more than the answer
    assert exact_match("carbon dioxide", "CO2|carbon dioxide")
    close = numeric_match(0.01)
    assert close("The answer is 3.141.", "3.14") and close("Roughly 1,000 meters", "1000")
    assert not close("The answer is 3.2", "3.14") and not close("no number here", "3")
    assert numeric_match(0.0)("Answer: 0", "0") and not numeric_match(0.0)("Answer: 0.001", "0")
    with pytest.raises(ValueError, match="not a number"):
        close("42", "forty-two-ish")
    assert regex_match("The answer is 7 days.", r"^7\b") and not regex_match("Could be 7", r"^7\b")
    with pytest.raises(ValueError, match="not a valid regex"):
        regex_match("x", "(")


def always_wrong(response: str, answer: str) -> bool:
    """A user checker loaded by name in the test below."""
    return False


def test_get_checker_by_name_or_callable() -> None:
    assert get_checker(None).name == "final" and get_checker(None)("It is Paris.", "Paris")
    assert get_checker("numeric:0.5").name == "numeric:0.5" and get_checker("numeric:0.5")("2.4", "2")
    user = get_checker("tests.test_verify:always_wrong")
    assert user.name == "tests.test_verify:always_wrong" and not user("Paris", "Paris")
    assert get_checker(always_wrong).name.endswith(":always_wrong")
    for bad, message in (
        ("fuzzy", "unknown answer checker"),
        ("numeric:x", "not a number"),
        ("no_such_module_xyz:f", "cannot be loaded"),
        ("tests.test_verify:ISSUE_CASES", "not callable"),
    ):
        with pytest.raises(ValueError, match=message):
            get_checker(bad)

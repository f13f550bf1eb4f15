"""Check answers to verifiable queries, so diversity loss can be split into quality control
(wrong answers removed) and residual narrowing among correct answers.

Models wrap a short answer in prose, casing, punctuation, articles, thousands separators and
reasoning blocks; a normalised whole-word match sees through all of these without a judge model.
But a reference that merely *appears* is not an answer: "The answer is not 42; it is 17." names
42 and rejects it, "Could be 3, 5, 7 or 9." hedges. So the checker first takes the response's
**final answer** (`final_answer`: the text after its last "answer is" / "answer:" / \boxed{},
else the whole response) and then judges only that. Checkers are pluggable (`get_checker`):

    final        the reference as whole words in the final answer, not negated, not one of
                 several alternatives joined by "or" (default; `is_correct`)
    exact        the normalised final answer equals the normalised reference
    numeric[:t]  the last number of the final answer equals the reference within relative
                 tolerance t (default 1e-6)
    regex        the reference is a regular expression, searched in the final answer
    module:name  a user callable `(response, answer) -> bool`
"""

from __future__ import annotations

import importlib
import math
import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

_THINK_BLOCK = re.compile(r"<think>.*?</think>", re.IGNORECASE | re.DOTALL)
_THINK_OPEN = re.compile(r"<think>.*", re.IGNORECASE | re.DOTALL)
_THINK_CLOSE = re.compile(r"</think>", re.IGNORECASE)
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
_TOKEN = re.compile(r"(?<![\w.])-\d+(?:\.\d+)?|\d+(?:\.\d+)?|[^\W_]+")
_ARTICLES = frozenset({"a", "an", "the"})
_NUMBER_WORDS = {
    word: str(value)
    for value, word in enumerate(
        "zero one two three four five six seven eight nine ten eleven twelve thirteen "
        "fourteen fifteen sixteen seventeen eighteen nineteen twenty".split()
    )
}
ALTERNATIVE_SEPARATOR = "|"
"""A reference answer may list accepted alternatives: `CO2|carbon dioxide`."""


def strip_reasoning(text: str) -> str:
    """Drop `<think>...</think>` blocks: a reasoning model's scratch work is not its answer.

    Text before a lone closing tag (template opened the block) and after a lone opening tag
    (the model never finished thinking) is reasoning too.
    """
    text = _THINK_BLOCK.sub(" ", text)
    parts = _THINK_CLOSE.split(text)
    text = parts[-1]
    return _THINK_OPEN.sub(" ", text)


def _canonical_number(token: str) -> str:
    """`100.0` -> `100`, `-0` -> `0`: equal numbers compare equal as strings."""
    try:
        value = Decimal(token)
    except InvalidOperation:
        return token
    if value == value.to_integral_value():
        return str(int(value))
    return format(value.normalize(), "f")


def _tokens(text: str, drop_articles: bool = True) -> list[str]:
    """Lower-cased word and number tokens of `text`, reasoning removed, numbers canonical."""
    text = unicodedata.normalize("NFKC", strip_reasoning(text)).casefold()
    text = _THOUSANDS.sub("", text)
    tokens: list[str] = []
    for token in _TOKEN.findall(text):
        if token[0].isdigit() or token[0] == "-":
            token = _canonical_number(token)
        token = _NUMBER_WORDS.get(token, token)
        if drop_articles and token in _ARTICLES:
            continue
        tokens.append(token)
    return tokens


def normalize_answer(text: str) -> str:
    """Case, punctuation, whitespace, articles and number formatting folded away.

    `"The answer is 1,000."` -> `"answer is 1000"`; `"<think>hm</think> Paris!"` -> `"paris"`.
    """
    return " ".join(_tokens(text))


def _contains(haystack: list[str], needle: list[str]) -> bool:
    """True when `needle` occurs as a contiguous run of whole tokens in `haystack`."""
    return bool(_occurrences(haystack, needle))


def _occurrences(haystack: list[str], needle: list[str]) -> list[int]:
    size = len(needle)
    return [i for i in range(len(haystack) - size + 1) if haystack[i : i + size] == needle]


_MARKER = re.compile(
    r"\b(?:final\s+answer|answer|result)\s*(?:is|was|would\s+be|will\s+be|should\s+be|[:=])"
    r"|\\boxed\s*\{",
    re.IGNORECASE,
)
_SENTENCE_END = re.compile(r"[.!?](?=\s|$)|\n")
_CLAUSE_END = re.compile(r"[;!?]|\.(?=\s|$)|\n")
_NOT = re.compile(r"n't\b|n’t\b", re.IGNORECASE)
_NEGATIONS = frozenset({"not", "no", "never", "neither", "nor"})
_REJECTIONS = frozenset({"wrong", "incorrect", "false", "mistaken", "not"})
_COPULAS = frozenset({"is", "was", "are", "were", "be"})
_HEDGE_FILLER = frozenset(
    {"either", "maybe", "perhaps", "possibly", "probably", "could", "might", "be", "it", "is", "s", "or", "and"}
)


def final_answer(response: str) -> str:
    """The part of a response that states its answer.

    Reasoning blocks are removed; then the text after the *last* answer marker ("the answer
    is", "answer:", "final answer =", "\\boxed{") up to the end of that sentence, or the whole
    response when it has no marker. "I first thought 12. The answer is 13." -> "13.".
    """
    text = strip_reasoning(response)
    last = None
    for last in _MARKER.finditer(text):  # noqa: B007 - the loop keeps the last match
        pass
    if last is None:
        return text.strip()
    rest = text[last.end() :]
    if last.group(0).rstrip().endswith("{"):  # \boxed{...}: up to the matching brace
        depth, end = 1, len(rest)
        for i, char in enumerate(rest):
            depth += {"{": 1, "}": -1}.get(char, 0)
            if depth == 0:
                end = i
                break
        return rest[:end].strip()
    stop = _SENTENCE_END.search(rest)
    return rest[: stop.end() if stop else len(rest)].strip()


def _clauses(text: str) -> list[str]:
    """Clauses of a final answer (split at ; ! ? and sentence ends), "n't" spelt "not"."""
    return [c for c in _CLAUSE_END.split(_NOT.sub(" not ", text)) if c.strip()]


def _alternatives(answer: str) -> list[tuple[list[str], bool]]:
    """(tokens, drop_articles) of each `|` alternative of a reference answer."""
    out = []
    for alternative in answer.split(ALTERNATIVE_SEPARATOR):
        needle = _tokens(alternative)
        if needle:
            out.append((needle, True))
        elif _tokens(alternative, drop_articles=False):  # only an article, e.g. multiple choice "A"
            out.append((_tokens(alternative, drop_articles=False), False))
    return out


def _is_number(token: str) -> bool:
    return bool(re.fullmatch(r"-?\d+(?:\.\d+)?", token))


def _hedged(clause: str, alternatives: list[tuple[list[str], bool]], needle: list[str], drop: bool) -> bool:
    """True when the clause offers the reference as one of several answers joined by "or".

    Another candidate is another number (numeric reference) or, for a text reference, a
    short list item (at most the reference's length + 2 words, fillers like "maybe" aside)
    that matches no accepted alternative.
    """
    tokens = _tokens(clause, drop_articles=drop)
    if "or" not in tokens:
        return False
    if all(_is_number(t) for t in needle):
        numbers = {t for t in tokens if _is_number(t)}
        return bool(numbers - {t for alt, _ in alternatives for t in alt})
    items = re.split(r",|\bor\b", unicodedata.normalize("NFKC", clause), flags=re.IGNORECASE)
    for item in items:
        words = [t for t in _tokens(item, drop_articles=drop) if t not in _HEDGE_FILLER]
        if not words or len(words) > len(needle) + 2:
            continue
        if not any(_contains(_tokens(item, drop_articles=d), alt) for alt, d in alternatives):
            return True
    return False


def _affirmed(clause: str, needle: list[str], drop: bool) -> bool:
    """True when `needle` occurs in the clause without a negation before it ("not 42") or a
    rejection after it ("Paris is wrong")."""
    tokens = _tokens(clause, drop_articles=drop)
    for i in _occurrences(tokens, needle):
        before = tokens[max(0, i - 2) : i]
        after = tokens[i + len(needle) : i + len(needle) + 2]
        if _NEGATIONS & set(before):
            continue
        if len(after) == 2 and after[0] in _COPULAS and after[1] in _REJECTIONS:
            continue
        return True
    return False


def is_correct(response: str, answer: str) -> bool:
    """The default ("final") checker: the normalised reference answer (or one of its `|`
    alternatives) appears as whole words/numbers in the response's `final_answer`, affirmed
    (not negated, not rejected) and not hedged among other candidates joined by "or".

    `"It's Paris."` matches `paris`; `"Parisian"`, `"4200"` (for 42), `"The answer is not
    42; it is 17."`, `"Could be 3, 5, 7 or 9."` (for 7) and `"No, Paris is wrong; it is
    Lyon."` do not.
    """
    alternatives = _alternatives(answer)
    for clause in _clauses(final_answer(response)):
        for needle, drop in alternatives:
            if _affirmed(clause, needle, drop) and not _hedged(clause, alternatives, needle, drop):
                return True
    return False


def exact_match(response: str, answer: str) -> bool:
    """The normalised final answer equals the normalised reference (or an alternative)."""
    given = normalize_answer(final_answer(response))
    return bool(given) and any(given == normalize_answer(alt) for alt in answer.split(ALTERNATIVE_SEPARATOR))


def numeric_match(tolerance: float = 1e-6) -> Callable[[str, str], bool]:
    """A checker: the last number of the final answer equals the reference number within a
    relative `tolerance` (absolute for a reference of 0)."""

    def check(response: str, answer: str) -> bool:
        try:
            expected = float(normalize_answer(answer))
        except ValueError:
            raise ValueError(f"numeric answer checker: reference answer {answer!r} is not a number") from None
        numbers = [t for t in _tokens(final_answer(response)) if _is_number(t)]
        if not numbers:
            return False
        return math.isclose(
            float(numbers[-1]), expected, rel_tol=tolerance, abs_tol=tolerance if expected == 0 else 0.0
        )

    return check


def regex_match(response: str, answer: str) -> bool:
    """The reference answer is a regular expression, searched case-insensitively in the final answer."""
    try:
        return re.search(answer, final_answer(response), re.IGNORECASE) is not None
    except re.error as exc:
        raise ValueError(f"regex answer checker: reference answer {answer!r} is not a valid regex: {exc}") from None


AnswerChecker = Callable[[str, str], bool]
"""`(response, reference answer) -> correct?`"""


@dataclass(frozen=True)
class NamedChecker:
    """A checker and the name the summary reports it under."""

    name: str
    check: AnswerChecker

    def __call__(self, response: str, answer: str) -> bool:
        return self.check(response, answer)


DEFAULT_CHECKER = "final"
CHECKERS = ("final", "exact", "numeric", "regex")


def get_checker(spec: str | AnswerChecker | None = None) -> NamedChecker:
    """A checker by name: `final` (default), `exact`, `numeric` or `numeric:TOLERANCE`, `regex`,
    `package.module:function` (a user callable), or a callable itself."""
    if isinstance(spec, NamedChecker):
        return spec
    if callable(spec):
        return NamedChecker(f"{getattr(spec, '__module__', '?')}:{getattr(spec, '__qualname__', repr(spec))}", spec)
    name = (spec or DEFAULT_CHECKER).strip()
    if name == "final":
        return NamedChecker(name, is_correct)
    if name == "exact":
        return NamedChecker(name, exact_match)
    if name == "regex":
        return NamedChecker(name, regex_match)
    if name == "numeric" or name.startswith("numeric:"):
        raw = name.partition(":")[2] or "1e-6"
        try:
            tolerance = float(raw)
        except ValueError:
            raise ValueError(f"answer checker {name!r}: tolerance {raw!r} is not a number") from None
        if not tolerance >= 0:
            raise ValueError(f"answer checker {name!r}: tolerance must be >= 0")
        return NamedChecker(f"numeric:{tolerance:g}", numeric_match(tolerance))
    module, sep, attribute = name.partition(":")
    if not sep or not module or not attribute:
        raise ValueError(
            f"unknown answer checker {name!r}: use one of {', '.join(CHECKERS)}, numeric:TOLERANCE, or module:function"
        )
    try:
        target = getattr(importlib.import_module(module), attribute)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"answer checker {name!r} cannot be loaded: {exc}") from None
    if not callable(target):
        raise ValueError(f"answer checker {name!r} is not callable")
    return NamedChecker(name, target)


def checker_name(spec: str | AnswerChecker | None) -> str:
    """The name a checker is reported under in the summary."""
    return get_checker(spec).name

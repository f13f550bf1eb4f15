"""Check answers to verifiable queries, so diversity loss can be split into quality control
(wrong answers removed) and residual narrowing among correct answers.

Models wrap a short answer in prose, casing, punctuation, articles, thousands separators and
reasoning blocks; a normalised whole-word match sees through all of these without a judge model.
"""

from __future__ import annotations

import re
import unicodedata
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
    size = len(needle)
    return any(haystack[i : i + size] == needle for i in range(len(haystack) - size + 1))


def is_correct(response: str, answer: str) -> bool:
    """True when the normalised reference answer (or one of its `|` alternatives) appears in
    the normalised response as whole words/numbers: `"It's Paris."` matches `paris`, while
    `"Parisian"` does not, nor does `"4200"` match `42`.
    """
    for alternative in answer.split(ALTERNATIVE_SEPARATOR):
        needle = _tokens(alternative)
        drop = bool(needle)
        if not needle:  # an answer that is only an article, e.g. multiple choice "A"
            needle = _tokens(alternative, drop_articles=False)
        if needle and _contains(_tokens(response, drop_articles=drop), needle):
            return True
    return False

"""Lexical metrics against sacrebleu, rouge-score and the `diversity` package."""

from __future__ import annotations

import gzip
import importlib.util
import lzma
import math
import pathlib
import random
import sys
import types
from collections.abc import Iterator

import pytest

from hivemind.metrics import (
    compression_ratio,
    distinct_n,
    ead,
    homogenization_rougel,
    lcs_length,
    mean_length,
    rouge_l_f,
    self_bleu,
    tokenize,
)

# Fixed corpus: responses of several "models" to one open-ended query (ASCII).
CORPUS = [
    "Time is a river that carries us forward, never pausing for anyone.",
    "Time is a river: it flows forward and never waits for anyone.",
    "Time is like a river that keeps flowing forward without pause.",
    "Time is a thief that quietly steals our moments, one by one.",
    "Think of time as a gardener, patiently shaping everything it touches.",
    "Time is a river that carries us forward, never pausing for anyone.",
    "A metaphor for time: the ocean tide, returning yet never the same twice.",
    "Time is a weaver, threading days into the tapestry of a life.",
]
DISTINCT = [
    "apples grow on tall trees",
    "quantum fields permeate spacetime",
    "jazz musicians improvise melodies nightly",
    "glaciers carve deep valleys slowly",
]


def _load_diversity(name: str) -> types.ModuleType:
    """Load one module of the `diversity` package without its __init__.

    Its __init__ imports spacy (not installed here); homogenization imports
    `evaluate` only for BERTScore/BLEU, so a stub stands in for it.
    """
    spec = importlib.util.find_spec("diversity")
    if spec is None or not spec.submodule_search_locations:
        from tests.conftest import missing

        missing("the diversity package is missing (pip install diversity)")
    root = pathlib.Path(list(spec.submodule_search_locations)[0])
    mspec = importlib.util.spec_from_file_location(f"_diversity_{name}", root / f"{name}.py")
    assert mspec is not None and mspec.loader is not None
    module = importlib.util.module_from_spec(mspec)
    stubbed = "evaluate" not in sys.modules
    if stubbed:
        stub = types.ModuleType("evaluate")
        stub.load = lambda *a, **k: None  # type: ignore[attr-defined]
        sys.modules["evaluate"] = stub
    try:
        mspec.loader.exec_module(module)
    finally:
        if stubbed:
            del sys.modules["evaluate"]
    return module


@pytest.fixture(scope="module")
def rouge() -> Iterator[object]:
    from rouge_score import rouge_scorer

    yield rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)


# --- tokenizer / length ----------------------------------------------------------


def test_tokenize_lowercases_and_drops_punctuation() -> None:
    expected = ["don", "t", "stop", "now", "then", "caf\u00e9", "42"]
    assert tokenize("Don't STOP, now_then! Caf\u00e9 42") == expected
    assert tokenize("") == []


def test_tokenize_matches_rouge_score_on_ascii() -> None:
    from rouge_score import tokenize as rtok

    for text in CORPUS + DISTINCT + ["a_b c-d e.f  (g)"]:
        assert tokenize(text) == rtok.tokenize(text, None)


def test_mean_length() -> None:
    assert mean_length(["one two", "three four five six"]) == 3.0
    assert math.isnan(mean_length([]))


# --- distinct-n / EAD ---------------------------------------------------------------


def test_distinct_n_hand_counts_and_identical_texts() -> None:
    # unigrams: a b a c | a b -> 6 total, 3 unique
    assert distinct_n(["a b a c", "a b"], 1) == pytest.approx(3 / 6)
    # bigrams never cross responses: (a b)(b a)(a c) | (a b) -> 4 total, 3 unique
    assert distinct_n(["a b a c", "a b"], 2) == pytest.approx(3 / 4)
    assert distinct_n(DISTINCT, 1) == 1.0
    ten_same = [CORPUS[0]] * 10
    assert distinct_n(ten_same, 2) == pytest.approx(0.1)
    assert distinct_n(ten_same, 2) < distinct_n(CORPUS, 2) < 1.0
    assert math.isnan(distinct_n(["one"], 2))


def test_ead_formula_and_fixed_vocab() -> None:
    texts = ["a b a c", "a b"]
    V = 10
    exp_n = []
    for U, C in [(3, 6), (3, 4), (2, 2), (1, 1), (0, 0)]:
        exp_n.append(0.0 if C == 0 else min(1.0, U / (V * (1 - ((V - 1) / V) ** C))))
    assert ead(texts, vocab_size=V) == pytest.approx(sum(exp_n) / 5)
    # with a large V the expected-distinct denominator ~ C, so EAD_1 ~ distinct-1
    assert ead(CORPUS, n_max=1) == pytest.approx(distinct_n(CORPUS, 1), rel=1e-3)
    assert ead([CORPUS[0]] * 8) < ead(CORPUS) <= 1.0
    assert 0.0 <= ead(DISTINCT, vocab_size=2) <= 1.0  # clipped


# --- self-BLEU ------------------------------------------------------------------------


def test_self_bleu_matches_sacrebleu_and_bounds() -> None:
    """The reference is sacrebleu's public one-sentence function with its defaults, called once
    per hypothesis (a fresh scorer each time), not the implementation's reused BLEU object."""
    import sacrebleu

    for texts in (CORPUS, CORPUS[:3], DISTINCT + CORPUS[:2]):
        ref = [
            sacrebleu.sentence_bleu(texts[i], [c for j, c in enumerate(texts) if j != i]).score
            for i in range(len(texts))
        ]
        assert self_bleu(texts) == pytest.approx(sum(ref) / len(ref) / 100.0, abs=1e-12)
    assert self_bleu([CORPUS[0]] * 4) == pytest.approx(1.0)
    assert self_bleu(DISTINCT) < 0.05 < self_bleu(CORPUS)
    assert math.isnan(self_bleu(["x"]))


# --- ROUGE-L / homogenization ----------------------------------------------------


def test_lcs_length_matches_dynamic_programming() -> None:
    def dp(a: list[str], b: list[str]) -> int:
        t = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
        for i, x in enumerate(a):
            for j, y in enumerate(b):
                t[i + 1][j + 1] = t[i][j] + 1 if x == y else max(t[i][j + 1], t[i + 1][j])
        return t[-1][-1]

    r = random.Random(0)
    for _ in range(300):
        a = [r.choice("abcd") for _ in range(r.randint(0, 70))]
        b = [r.choice("abcde") for _ in range(r.randint(0, 70))]
        assert lcs_length(a, b) == dp(a, b)


def test_rouge_l_f_matches_rouge_score(rouge: object) -> None:
    for a in CORPUS + DISTINCT + [""]:
        for b in CORPUS[:4] + [""]:
            ref = rouge.score(a, b)["rougeL"].fmeasure  # type: ignore[attr-defined]
            assert rouge_l_f(tokenize(b), tokenize(a)) == pytest.approx(ref)


def test_homogenization_matches_rouge_score_loop(rouge: object) -> None:
    n = len(CORPUS)
    total = 0.0
    for i in range(n):
        total += sum(
            rouge.score(CORPUS[j], CORPUS[i])["rougeL"].fmeasure  # type: ignore[attr-defined]
            for j in range(n)
            if j != i
        ) / (n - 1)
    assert homogenization_rougel(CORPUS) == pytest.approx(total / n)
    assert homogenization_rougel([CORPUS[0]] * 3) == pytest.approx(1.0)
    assert math.isnan(homogenization_rougel(["x"]))


def test_homogenization_vs_diversity_package() -> None:
    div = _load_diversity("homogenization")
    ref = div.homogenization_score(CORPUS, measure="rougel", verbose=False)
    assert homogenization_rougel(CORPUS) == pytest.approx(ref, abs=5e-4)  # it rounds to 3 dp
    # Its quirk: when no pair shares a token it reports 1.0 (maximal
    # homogenization, meant for "all identical"); we report 0.
    disjoint = ["alpha beta", "gamma delta", "epsilon zeta"]
    assert div.homogenization_score(disjoint, verbose=False) == 1.0
    assert homogenization_rougel(disjoint) == 0.0


# --- compression ratio ---------------------------------------------------------------


def test_compression_ratio_xz_matches_diversity_package() -> None:
    div = _load_diversity("compression")
    for texts in (CORPUS, DISTINCT, [CORPUS[0]] * 20):
        ours = compression_ratio(texts, algorithm="xz")
        assert ours == pytest.approx(div.compression_ratio(texts, algorithm="xz"), abs=5e-4)
    assert compression_ratio([CORPUS[0]] * 20) > compression_ratio(CORPUS)


def test_compression_ratio_gzip_is_single_compression() -> None:
    raw = " ".join(CORPUS * 5).encode()
    ours = compression_ratio(CORPUS * 5, algorithm="gzip")
    assert ours == pytest.approx(len(raw) / len(gzip.compress(raw, mtime=0)), rel=1e-2)
    joined = " ".join(CORPUS).encode()
    expected_xz = len(joined) / len(lzma.compress(joined))
    assert compression_ratio(CORPUS, "xz") == pytest.approx(expected_xz)
    # the diversity package gzips twice, so its gzip ratio is lower than the true one
    div = _load_diversity("compression")
    assert div.compression_ratio(CORPUS * 5, algorithm="gzip") < ours - 0.1
    with pytest.raises(ValueError):
        compression_ratio(CORPUS, algorithm="zip")


def test_ngram_diversity_package_definition_differs() -> None:
    """Document the `diversity` package's n-gram score: a *sum* over n=1..4 of
    distinct-n on whitespace tokens of the joined texts (n-grams cross responses)."""
    div = _load_diversity("ngram_diversity")
    texts = ["a b", "a b"]
    # joined "a b a b": uni 2/4, bi 2/3 ("b a" crosses), tri 2/2, four 1/1 -> 3.167
    assert div.ngram_diversity_score(texts, num_n=4) == pytest.approx(0.5 + 2 / 3 + 1 + 1, abs=1e-3)
    # ours: per response, no crossing: bigram distinct = 1/2
    assert distinct_n(texts, 2) == 0.5


def long_repetitive_texts(seed: int) -> list[str]:
    """Texts of 0 to 300 words (several 64-bit words of LCS bitset) from 12 words: n-grams
    repeat within and across texts, counts tie, and one text is empty."""
    rng = random.Random(seed)
    words = [f"w{i}" for i in range(12)]
    texts = [" ".join(rng.choice(words) for _ in range(rng.randint(1, 300))) for _ in range(9)]
    return texts + ["", texts[0]]  # an empty response and an exact repeat


def test_homogenization_of_long_texts_is_the_pairwise_loop_bit_for_bit() -> None:
    for seed in range(3):
        texts = long_repetitive_texts(seed)
        toks = [tokenize(t) for t in texts]
        n = len(toks)
        total = 0.0
        for i in range(n):
            for j in range(i + 1, n):
                total += rouge_l_f(toks[i], toks[j])
        assert homogenization_rougel(texts) == total / (n * (n - 1) / 2)


def test_self_bleu_of_long_repetitive_texts_matches_sacrebleu() -> None:
    import sacrebleu

    for seed in range(3):
        texts = long_repetitive_texts(seed)
        ref = [
            sacrebleu.sentence_bleu(texts[i], [c for j, c in enumerate(texts) if j != i]).score
            for i in range(len(texts))
        ]
        assert self_bleu(texts) == pytest.approx(sum(ref) / len(ref) / 100.0, abs=1e-12)


def test_distinct_and_ead_count_pooled_ngrams_like_python_sets() -> None:
    texts = long_repetitive_texts(4)
    toks = [tokenize(t) for t in texts]
    for n in (1, 2, 3, 5):
        pool = [tuple(t[i : i + n]) for t in toks for i in range(len(t) - n + 1)]
        assert distinct_n(texts, n) == len(set(pool)) / len(pool)


def test_lexical_metrics_are_the_functions_one_by_one() -> None:
    """The diversity table's row (one tokenization) equals each metric computed on its own."""
    from hivemind.metrics.lexical import lexical_metrics

    for texts in (long_repetitive_texts(5), CORPUS, ["only one"], ["", ""]):
        row = lexical_metrics(texts)
        alone = {
            "distinct_1": distinct_n(texts, 1),
            "distinct_2": distinct_n(texts, 2),
            "distinct_3": distinct_n(texts, 3),
            "ead": ead(texts),
            "self_bleu": self_bleu(texts),
            "homogenization_rougel": homogenization_rougel(texts),
            "compression_ratio": compression_ratio(texts, "xz"),
            "mean_length": mean_length(texts),
        }
        assert row.keys() == alone.keys()
        for name, value in alone.items():
            assert row[name] == value or (math.isnan(row[name]) and math.isnan(value)), name


def test_self_bleu_tokens_are_sacrebleus_13a_tokens() -> None:
    """The translate-based 13a split (the fast path, not the fallback) gives sacrebleu's own
    preprocessing on punctuation, digits, entities, hyphenated line breaks and non-ASCII."""
    from sacrebleu.metrics import BLEU

    from hivemind.metrics.lexical import _sacrebleu_13a_split

    split = _sacrebleu_13a_split()
    assert split.__name__ == "split"  # sacrebleu's rules are the ones checked: the fast path
    bleu = BLEU(effective_order=True)
    lines = [
        'He said "3.14, 2,000 - 10-12 km/h!" (really?) [yes] {no} a|b ~ `x` @home #1 $5 50% & <tag>',
        "Line one-\nwrapped\nnext line &quot;quoted&quot; &amp; &lt;b&gt; <skipped> end.   ",
        "Ünïcödé — “curly” quotes… 1.5x, v2.0-beta, e.g. U.S.A. x,y 3-4 a.b,c",
        "",
        "   only spaces   ",
        "tabs\tand\r\nreturns; colons: semi; end",
    ] + CORPUS
    for line in lines:
        assert split(line) == bleu._preprocess_segment(line).split(), line


def test_self_bleu_takes_sacrebleus_closest_reference_length_on_ties() -> None:
    """Hypotheses of 6 words between references of 5 and 7 (equally near: the shorter counts)."""
    import sacrebleu

    texts = ["a b c d e", "a b c d e f g", "a b c d e f", "b c d e f g", "a b c d e f g h i"]
    ref = [sacrebleu.sentence_bleu(texts[i], texts[:i] + texts[i + 1 :]).score for i in range(len(texts))]
    assert self_bleu(texts) == pytest.approx(sum(ref) / len(ref) / 100.0, abs=1e-12)

"""Lexical (surface-form) diversity of one query's responses (see METRICS.md).

Every metric here depends on response length, so report ``mean_length``
beside them. All functions take the K responses to a single query and are
pure; sacrebleu is imported lazily inside ``self_bleu``.
"""

from __future__ import annotations

import gzip
import lzma
import math
import re
from collections.abc import Sequence

import numpy as np

__all__ = [
    "tokenize",
    "ngrams",
    "distinct_n",
    "ead",
    "self_bleu",
    "lcs_length",
    "rouge_l_f",
    "homogenization_rougel",
    "compression_ratio",
    "mean_length",
]

_TOKEN_RE = re.compile(r"[^\W_]+")


def tokenize(text: str) -> list[str]:
    """Lowercase word tokenizer: maximal runs of Unicode letters/digits.

    Punctuation, whitespace and underscores separate tokens and are dropped
    ("Don't stop!" -> ["don", "t", "stop"]). On ASCII text this equals the
    default tokenizer of ``rouge-score`` (without stemming), so ROUGE-L here
    matches it; unlike that one, non-Latin scripts are kept. It is a fixed,
    model-free tokenizer so lexical numbers are comparable across models.
    """
    return _TOKEN_RE.findall(text.lower())


def ngrams(tokens: Sequence[str], n: int) -> list[tuple[str, ...]]:
    """The n-grams of one token sequence (none cross a response boundary)."""
    if n < 1:
        raise ValueError("n must be >= 1")
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def _pooled_counts(texts: Sequence[str], n: int) -> tuple[int, int]:
    """(unique, total) n-grams pooled over all texts."""
    pool: list[tuple[str, ...]] = []
    for t in texts:
        pool.extend(ngrams(tokenize(t), n))
    return len(set(pool)), len(pool)


def distinct_n(texts: Sequence[str], n: int) -> float:
    """distinct-n: unique / total n-grams pooled over the responses.

    Low when responses repeat each other. ``nan`` when there is no n-gram.
    """
    unique, total = _pooled_counts(texts, n)
    return unique / total if total else float("nan")


def ead(texts: Sequence[str], n_max: int = 5, vocab_size: int = 50257) -> float:
    """Expectation-adjusted distinct n-grams, averaged over n = 1..n_max.

    ``EAD_n = U_n / (V * (1 - ((V-1)/V) ** C_n))`` clipped to [0, 1]: the
    denominator is the expected number of distinct n-grams among C_n draws
    from V types, which removes distinct-n's bias against long outputs.
    Keep ``vocab_size`` fixed across models or EAD is incomparable. As in
    the Karouzos et al. code, an order with no n-grams counts as 0 (so very
    short responses score low rather than being skipped).
    """
    if vocab_size < 2:
        raise ValueError("vocab_size must be >= 2")
    values: list[float] = []
    log_keep = math.log1p(-1.0 / vocab_size)
    for n in range(1, n_max + 1):
        unique, total = _pooled_counts(texts, n)
        if total == 0:
            values.append(0.0)
            continue
        expected = vocab_size * -math.expm1(total * log_keep)
        values.append(min(max(unique / expected, 0.0), 1.0))
    return float(np.mean(values)) if values else float("nan")


def self_bleu(texts: Sequence[str]) -> float:
    """Self-BLEU in [0, 1]: mean over i of BLEU(y_i, refs = all other y_j).

    Same scores as ``sacrebleu.sentence_bleu`` with its defaults (13a tokenizer, exp
    smoothing, effective order) on the raw texts; sacrebleu's 0-100 score is divided by 100.
    Higher = more homogeneous. ``nan`` for < 2 texts.

    sacrebleu clips each n-gram's matches at its largest count in any one reference, so
    the K leave-one-out reference sets need not be rebuilt K times: each text's n-grams are
    counted once (sacrebleu's own tokenizer and n-gram extraction) and, per n-gram, the two
    largest counts over all texts are kept; the largest among the others is the first
    unless text i holds it alone. Statistics and score are then sacrebleu's
    (`BLEU.compute_bleu`, its closest-reference-length rule): O(K) counting, not O(K^2).
    """
    from sacrebleu.metrics import BLEU
    from sacrebleu.metrics.helpers import extract_all_word_ngrams

    n = len(texts)
    if n < 2:
        return float("nan")
    bleu = BLEU(effective_order=True)
    order = bleu.max_ngram_order
    counted = [extract_all_word_ngrams(bleu._preprocess_segment(t), 1, order) for t in texts]
    lengths = [length for _, length in counted]
    top: dict[tuple[str, ...], list[int]] = {}  # n-gram -> [largest count, its text, second largest]
    for i, (grams, _) in enumerate(counted):
        for gram, count in grams.items():
            best = top.get(gram)
            if best is None:
                top[gram] = [count, i, 0]
            elif count > best[0]:
                best[2], best[0], best[1] = best[0], count, i
            elif count > best[2]:
                best[2] = count
    scores = []
    for i, (grams, hyp_len) in enumerate(counted):
        correct, total = [0] * order, [0] * order
        for gram, count in grams.items():
            best = top[gram]
            in_refs = best[2] if best[1] == i else best[0]
            total[len(gram) - 1] += count
            correct[len(gram) - 1] += min(count, in_refs)
        ref_len = bleu._get_closest_ref_len(hyp_len, lengths[:i] + lengths[i + 1 :])
        scores.append(
            BLEU.compute_bleu(
                correct=correct,
                total=total,
                sys_len=hyp_len,
                ref_len=ref_len,
                smooth_method=bleu.smooth_method,
                smooth_value=bleu.smooth_value,
                effective_order=True,
                max_ngram_order=order,
            ).score
        )
    return float(np.mean(scores)) / 100.0


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence of two token lists.

    Bit-parallel algorithm (Allison-Dix / Hyyro) on Python ints: one pass
    over ``b`` with word-parallel operations on a bitset over ``a``, so two
    2,000-token responses take milliseconds instead of a 4M-cell DP.
    """
    if len(a) < len(b):
        a, b = b, a
    m = len(a)
    if m == 0 or len(b) == 0:
        return 0
    masks: dict[str, int] = {}
    for i, tok in enumerate(a):
        masks[tok] = masks.get(tok, 0) | (1 << i)
    full = (1 << m) - 1
    v = full
    for tok in b:
        u = v & masks.get(tok, 0)
        v = ((v + u) | (v - u)) & full
    return m - v.bit_count()


def rouge_l_f(a: Sequence[str], b: Sequence[str]) -> float:
    """ROUGE-L F1 of two token lists: 2PR/(P+R), P = lcs/|a|, R = lcs/|b|.

    Same definition as ``rouge-score``'s ``rougeL`` fmeasure (beta = 1,
    no stemming); symmetric in its arguments. 0 when either side is empty.
    """
    lcs = lcs_length(a, b)
    if lcs == 0:
        return 0.0
    p = lcs / len(a)
    r = lcs / len(b)
    return 2.0 * p * r / (p + r)


def homogenization_rougel(texts: Sequence[str]) -> float:
    """Homogenization: (1/N) sum_i (1/(N-1)) sum_{j != i} ROUGE-L-F(y_j, y_i).

    Our own LCS-based ROUGE-L on ``tokenize`` tokens (see ``rouge_l_f``);
    since F1 is symmetric this is the mean over unordered pairs. Higher =
    more homogeneous. ``nan`` for fewer than two texts.
    """
    n = len(texts)
    if n < 2:
        return float("nan")
    toks = [tokenize(t) for t in texts]
    total = 0.0
    for i in range(n):
        for j in range(i + 1, n):
            total += rouge_l_f(toks[i], toks[j])
    return total / (n * (n - 1) / 2)


def compression_ratio(texts: Sequence[str], algorithm: str = "xz") -> float:
    """Compression ratio: UTF-8 bytes of the space-joined texts / compressed bytes.

    Higher = more redundant (homogeneous) responses. The ``diversity``
    package's gzip path compresses twice (it gzips already-gzipped bytes),
    which shrinks the ratio; we compute a single, correct compression for
    both ``"gzip"`` (level 9, mtime 0) and ``"xz"`` (lzma defaults, which
    is what the ``diversity`` package's correct xz path does).
    """
    raw = " ".join(texts).encode("utf-8")
    if algorithm == "gzip":
        packed = gzip.compress(raw, compresslevel=9, mtime=0)
    elif algorithm == "xz":
        packed = lzma.compress(raw, format=lzma.FORMAT_XZ)
    else:
        raise ValueError(f"unknown algorithm {algorithm!r}; use 'gzip' or 'xz'")
    return len(raw) / len(packed)


def mean_length(texts: Sequence[str]) -> float:
    """Mean response length in ``tokenize`` tokens (report beside lexical metrics)."""
    if len(texts) == 0:
        return float("nan")
    return float(np.mean([len(tokenize(t)) for t in texts]))

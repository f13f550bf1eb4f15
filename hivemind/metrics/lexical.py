"""Lexical (surface-form) diversity of one query's responses (see METRICS.md).

Every metric here depends on response length, so report ``mean_length``
beside them. All functions take the K responses to a single query and are
pure; sacrebleu is imported lazily inside ``self_bleu``.
"""

from __future__ import annotations

import functools
import gzip
import lzma
import math
import re
from collections.abc import Callable, Iterator, Sequence

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
    "lexical_metrics",
    "ngram_incidence",
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


def _token_ids(token_lists: Sequence[Sequence[str]]) -> tuple[np.ndarray, np.ndarray]:
    """(every token as an integer id, dense over these texts; each text's start, and the end)."""
    every = [tok for tokens in token_lists for tok in tokens]
    vocab = {tok: i for i, tok in enumerate(dict.fromkeys(every))}  # ids in order of first use
    ids = list(map(vocab.__getitem__, every))
    starts = np.zeros(len(token_lists) + 1, np.int64)
    np.cumsum([len(tokens) for tokens in token_lists], out=starts[1:])
    return np.asarray(ids, np.int64), starts


def _gram_ids(ids: np.ndarray, starts: np.ndarray, n_max: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """For n = 1..n_max: (id of each n-gram, dense from 0; the text it lies in), over the n-grams
    within one text. An n-gram's id numbers the distinct pairs (its (n-1)-gram's id, its last
    token), so each order costs one integer sort whatever the vocabulary."""
    lengths = np.diff(starts)
    text = np.repeat(np.arange(lengths.size), lengths)
    ends = starts[text + 1]
    at = np.arange(ids.size)
    grams = ids  # token ids are dense over these very tokens: the 1-gram ids
    vocab = int(ids.max()) + 1 if ids.size else 1
    for n in range(1, n_max + 1):
        pos = np.flatnonzero(at + n <= ends)
        if n > 1:
            _, dense = np.unique(grams[pos] * vocab + ids[pos + n - 1], return_inverse=True)
            grams = np.zeros(ids.size, np.int64)
            grams[pos] = dense.reshape(-1)
        yield grams[pos], text[pos]


def _pooled_from(ids: np.ndarray, starts: np.ndarray, n_max: int) -> list[tuple[int, int]]:
    """(unique, total) n-grams pooled over the texts, for n = 1..n_max."""
    return [(int(g.max()) + 1 if g.size else 0, int(g.size)) for g, _ in _gram_ids(ids, starts, n_max)]


def ngram_incidence(texts: Sequence[str], n: int) -> tuple[np.ndarray, np.ndarray, int]:
    """(text, n-gram id) of every distinct n-gram of every text (``tokenize`` tokens), sorted by
    text then id, and the number of distinct n-grams: a sparse text x n-gram incidence."""
    if n < 1:
        raise ValueError("n must be >= 1")
    ids, starts = _token_ids([tokenize(t) for t in texts])
    *_, (grams, text) = _gram_ids(ids, starts, n)
    n_grams = int(grams.max()) + 1 if grams.size else 0
    pairs = np.unique(text * max(n_grams, 1) + grams)
    return pairs // max(n_grams, 1), pairs % max(n_grams, 1), n_grams


def _pooled_counts(texts: Sequence[str], n: int) -> tuple[int, int]:
    """(unique, total) n-grams pooled over all texts."""
    if n < 1:
        raise ValueError("n must be >= 1")
    return _pooled_from(*_token_ids([tokenize(t) for t in texts]), n)[-1]


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
    ids, starts = _token_ids([tokenize(t) for t in texts])
    return _ead_from(_pooled_from(ids, starts, n_max), vocab_size)


def _ead_from(counts: Sequence[tuple[int, int]], vocab_size: int) -> float:
    """EAD averaged over the orders whose (unique, total) n-gram counts are given."""
    values: list[float] = []
    log_keep = math.log1p(-1.0 / vocab_size)
    for unique, total in counts:
        if total == 0:
            values.append(0.0)
            continue
        expected = vocab_size * -math.expm1(total * log_keep)
        values.append(min(max(unique / expected, 0.0), 1.0))
    return float(np.mean(values)) if values else float("nan")


@functools.cache
def _sacrebleu_13a_split() -> Callable[[str], list[str]]:
    """sacrebleu's default BLEU preprocessing (13a tokenizer, no lowercasing), split into tokens.

    Its first rule puts spaces around every character of one class (the space among them): a
    regex substitution with a Python template expansion per match, so per word, and most of
    self-BLEU's time. Joining the pieces of a split on that same pattern (its one group is the
    whole match) with spaces gives the same string at C speed; the other rules, which match
    rarely, are sacrebleu's as they are. When sacrebleu's preprocessing is not the one this was
    checked against, its own is used.
    """
    from sacrebleu.metrics import BLEU
    from sacrebleu.tokenizers.tokenizer_re import TokenizerRegexp

    bleu = BLEU(effective_order=True)
    (first, template), *rest = TokenizerRegexp()._re
    if type(bleu.tokenizer).__name__ != "Tokenizer13a" or bleu.lowercase or template != r" \1 " or first.groups != 1:
        return lambda text: bleu._preprocess_segment(text).split()

    def split(text: str) -> list[str]:
        line = text.rstrip().replace("<skipped>", "").replace("-\n", "").replace("\n", " ")
        if "&" in line:
            line = line.replace("&quot;", '"').replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">")
        line = " ".join(first.split(f" {line} "))
        for pattern, repl in rest:
            line = pattern.sub(repl, line)
        return line.split()

    return split


def self_bleu(texts: Sequence[str]) -> float:
    """Self-BLEU in [0, 1]: mean over i of BLEU(y_i, refs = all other y_j).

    Same scores as ``sacrebleu.sentence_bleu`` with its defaults (13a tokenizer, exp
    smoothing, effective order) on the raw texts; sacrebleu's 0-100 score is divided by 100.
    Higher = more homogeneous. ``nan`` for < 2 texts.

    sacrebleu clips each n-gram's matches at its largest count in any one reference, so
    the K leave-one-out reference sets need not be rebuilt K times: the texts are tokenized
    once (sacrebleu's own tokenizer; its n-grams are the word n-grams of the split tokens),
    every n-gram's count in every text is found by integer sorting, and the largest count
    among the *other* texts is the largest count unless text i holds it alone (then the
    second largest). The match and total counts are integers, so the statistics are
    sacrebleu's exactly, and so is the score (`BLEU.compute_bleu`, its closest-reference-
    length rule): O(K) counting, not O(K^2).
    """
    from sacrebleu.metrics import BLEU

    n = len(texts)
    if n < 2:
        return float("nan")
    bleu = BLEU(effective_order=True)
    order = bleu.max_ngram_order
    split = _sacrebleu_13a_split()
    ids, starts = _token_ids([split(t) for t in texts])
    lengths = np.diff(starts)
    correct = np.zeros((order, n), np.int64)
    total = np.zeros((order, n), np.int64)
    for size, (grams, text) in enumerate(_gram_ids(ids, starts, order), start=1):
        if grams.size == 0:
            continue
        # one entry per (n-gram, text) holding it, n-gram by n-gram: its count in that text
        keys, counts = np.unique(grams * n + text, return_counts=True)
        gram, holder = keys // n, keys % n
        first = np.flatnonzero(np.r_[True, gram[1:] != gram[:-1]])
        per_entry = np.repeat(np.arange(first.size), np.diff(np.r_[first, gram.size]))  # its n-gram
        top = np.maximum.reduceat(counts, first)[per_entry]
        holds_top = counts == top
        alone = np.add.reduceat(holds_top.astype(np.int64), first)[per_entry] == 1
        second = np.maximum.reduceat(np.where(holds_top, 0, counts), first)[per_entry]
        # the largest count among the other texts: the largest, unless this text alone holds it
        in_refs = np.where(holds_top & alone, second, top)
        correct[size - 1] = np.bincount(holder, weights=np.minimum(counts, in_refs), minlength=n).astype(np.int64)
        total[size - 1] = np.bincount(holder, weights=counts, minlength=n).astype(np.int64)
    # sacrebleu's closest reference length (`BLEU._get_closest_ref_len`) for every text at once:
    # the other lengths nearest to its own, the shortest of those
    gap = np.abs(lengths[None, :] - lengths[:, None]).astype(np.float64)
    np.fill_diagonal(gap, np.inf)
    nearest = np.where(gap == gap.min(axis=1, keepdims=True), lengths[None, :], np.iinfo(np.int64).max)
    closest = nearest.min(axis=1).tolist()
    scores = []
    for i, hyp_len in enumerate(lengths.tolist()):
        scores.append(
            BLEU.compute_bleu(
                correct=correct[:, i].tolist(),
                total=total[:, i].tolist(),
                sys_len=hyp_len,
                ref_len=closest[i],
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
    return _homogenization_from(*_token_ids([tokenize(t) for t in texts]))


def _homogenization_from(ids: np.ndarray, starts: np.ndarray) -> float:
    """`homogenization_rougel` of token-id texts: `rouge_l_f` over every pair, in a compiled loop
    (`hivemind.metrics.compiled.rouge_l_pair_sum`: the same LCS, F1 and order of the sum)."""
    from hivemind.metrics.compiled import rouge_l_pair_sum

    n = starts.size - 1
    vocab = int(ids.max()) + 1 if ids.size else 1
    return rouge_l_pair_sum(ids, starts, vocab) / (n * (n - 1) / 2)


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


def lexical_metrics(texts: Sequence[str], vocab_size: int = 50257) -> dict[str, float]:
    """Every metric of this module for one deployment's responses to one query (a row of the
    diversity table), tokenizing once: the same values as the functions one by one."""
    tokens = [tokenize(t) for t in texts]
    ids, starts = _token_ids(tokens)
    counts = _pooled_from(ids, starts, 5)
    distinct = [unique / total if total else float("nan") for unique, total in counts[:3]]
    return {
        "distinct_1": distinct[0],
        "distinct_2": distinct[1],
        "distinct_3": distinct[2],
        "ead": _ead_from(counts, vocab_size),
        "self_bleu": self_bleu(texts),
        "homogenization_rougel": _homogenization_from(ids, starts) if len(texts) >= 2 else float("nan"),
        "compression_ratio": compression_ratio(texts, "xz"),
        "mean_length": float(np.mean([len(t) for t in tokens])) if tokens else float("nan"),
    }

"""Compiled inner loops (numba): gathers and bit-parallel scans numpy cannot make cheap.

Imported only by the functions that run them (numba's import and a first compilation cost about
a second; the machine code is cached on disk after that). Each loop releases the GIL, so the
analysis' worker threads (`hivemind.parallel`) run them side by side.
"""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(nogil=True, cache=True)
def same_label_pair_sums(S: np.ndarray, orders: np.ndarray, codes: np.ndarray, n_labels: int) -> np.ndarray:
    """For each permutation p, the sum of S[i, j] over rows i < j that share a label, where row i
    takes the label codes[orders[p, i]] (the labels shuffled by the permutation orders[p]).

    A within-label block of the cosine matrix is gathered as its upper triangle, rows in
    ascending order: D K (K - 1) / 2 reads of S per permutation, no temporary arrays.
    """
    P, n = orders.shape
    out = np.empty(P)
    counts = np.zeros(n_labels, np.int64)
    for c in codes:
        counts[c] += 1
    starts = np.zeros(n_labels + 1, np.int64)
    for d in range(n_labels):
        starts[d + 1] = starts[d] + counts[d]
    members = np.empty(n, np.int64)  # rows of each label, label after label, ascending
    fill = np.empty(n_labels, np.int64)
    for p in range(P):
        fill[:] = starts[:n_labels]
        for i in range(n):
            d = codes[orders[p, i]]
            members[fill[d]] = i
            fill[d] += 1
        total = 0.0
        for d in range(n_labels):
            for a in range(starts[d], starts[d + 1]):
                row = S[members[a]]
                acc = 0.0
                for b in range(a + 1, starts[d + 1]):
                    acc += row[members[b]]
                total += acc
        out[p] = total
    return out


@numba.njit(nogil=True, cache=True)
def draw_diversities(S: np.ndarray, draws: np.ndarray, k: int, eps: float) -> tuple[np.ndarray, np.ndarray]:
    """(mean pairwise distance, Vendi) of each draw's first k rows: row b of `draws` lists rows
    of S in draw order. The compiled twin of `hivemind.analysis.ensemble.draw_diversity`, with
    the k x k Gram matrix gathered from S in place and LAPACK called once per draw (equal to it
    within 1e-12: only the order of the sums differs)."""
    B = draws.shape[0]
    dist = np.zeros(B)
    vendi = np.ones(B)
    if k == 1:
        return dist, vendi
    G = np.empty((k, k))
    for b in range(B):
        off_diagonal = 0.0
        for i in range(k):
            row = S[draws[b, i]]
            for j in range(k):
                value = row[draws[b, j]]
                G[i, j] = value / k
                if i != j:
                    off_diagonal += value
        dist[b] = 1.0 - off_diagonal / (k * (k - 1))
        entropy = 0.0
        for w in np.linalg.eigvalsh(G):
            w = max(w, eps)
            entropy -= w * np.log(w)
        vendi[b] = np.exp(entropy)
    return dist, vendi


@numba.njit(nogil=True, cache=True)
def _popcount(x: np.uint64) -> int:
    x = x - ((x >> np.uint64(1)) & np.uint64(0x5555555555555555))
    x = (x & np.uint64(0x3333333333333333)) + ((x >> np.uint64(2)) & np.uint64(0x3333333333333333))
    x = (x + (x >> np.uint64(4))) & np.uint64(0x0F0F0F0F0F0F0F0F)
    return int((x * np.uint64(0x0101010101010101)) >> np.uint64(56))


@numba.njit(nogil=True, cache=True)
def rouge_l_pair_sum(ids: np.ndarray, starts: np.ndarray, vocab: int) -> float:
    """Sum over text pairs i < j (i outer) of ROUGE-L F1(text i, text j), texts given as token
    ids (text t is ids[starts[t]:starts[t + 1]]).

    The longest common subsequence by the bit-parallel algorithm of `lcs_length` (Allison-Dix /
    Hyyro), on 64-bit words: V' = (V + U) | (V - U) with U = V & match(token), where V - U is
    V & ~U (U's bits are V's) and only the addition carries between words. Integer LCS lengths,
    then F1 with the same float operations, summed in the same order: the same bits as the
    Python loop.
    """
    K = starts.size - 1
    total = 0.0
    longest = 0
    for t in range(K):
        longest = max(longest, starts[t + 1] - starts[t])
    words = max(1, (longest + 63) // 64)
    masks = np.zeros((vocab, words), np.uint64)
    V = np.empty(words, np.uint64)
    one = np.uint64(1)
    for i in range(K):
        a = ids[starts[i] : starts[i + 1]]
        m = a.size
        if m == 0:
            continue
        W = (m + 63) // 64
        top = (one << np.uint64(m - 64 * (W - 1))) - one if m % 64 else ~np.uint64(0)
        for p in range(m):
            masks[a[p], p // 64] |= one << np.uint64(p % 64)
        for j in range(i + 1, K):
            b = ids[starts[j] : starts[j + 1]]
            if b.size == 0:
                continue
            for w in range(W):
                V[w] = ~np.uint64(0)
            V[W - 1] = top
            for token in b:
                carry = np.uint64(0)
                for w in range(W):
                    v = V[w]
                    u = v & masks[token, w]
                    s = v + u
                    c = np.uint64(1) if s < v else np.uint64(0)
                    s2 = s + carry
                    if s2 < s:
                        c = np.uint64(1)
                    V[w] = s2 | (v & ~u)
                    carry = c
                V[W - 1] &= top
            ones = 0
            for w in range(W):
                ones += _popcount(V[w])
            lcs = m - ones
            if lcs == 0:
                continue
            precision = lcs / m
            recall = lcs / b.size
            total += 2.0 * precision * recall / (precision + recall)
        for p in range(m):
            masks[a[p], p // 64] = np.uint64(0)
    return total

"""Exact nearest-neighbour search over unit vectors, and near-duplicate response pairs.

The hivemind question "did two different models write (almost) the same answer?" becomes
"which pairs of unit vectors from different deployments have cosine >= t?". The exact answer (a
missed pair is a wrong result, not a slow one) comes from matrix products over the upper
triangle on CPU, and from FAISS's flat inner-product index on GPU when there is one. The
corpus-wide search is quadratic (18 s at 100K on two cores, so half an hour at 1M), so it may
instead use an approximate IVF index (`index="ivf"`): the same canonical cosines for the pairs
it finds, but it can miss some (its recall against exact is measured in
bench/analysis_scale.py); the analysis summary says which was used.

A FAISS GPU index has no range search, so on GPU it is emulated exactly: k-nearest search
with k doubling for the queries whose k-th similarity is still >= t (the remaining
neighbours can only be below t once the k-th is). GPU kNN is capped at `GPU_MAX_K`; the few
queries that need more fall back to the exact CPU range search. The emulation can be forced
on CPU, so tests compare it with FAISS's own CPU range search pair for pair.

Similarities are canonical: every backend (CPU range search, GPU or CPU kNN, numpy) only
proposes candidates within `SLACK` below the threshold, and each candidate's cosine is then
recomputed pair by pair in float64 and rounded to float32 (`exact_cosines`). BLAS and GPU
kernels change the last bits of a dot product with the batch shape and thread count; the
recomputation does not, so every path returns the same pairs with the same values.

faiss is imported lazily (inside functions) so importing hivemind stays cheap.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from hivemind.parallel import ordered_map

if TYPE_CHECKING:
    import polars as pl

GPU_MAX_K = 2048
"""Largest k a FAISS GPU k-selection accepts (CUDA builds)."""
NORM_TOLERANCE = 1e-3
"""How far a row's L2 norm may be from 1 before it is rejected as not normalised."""
SLACK = 1e-3
"""Candidates are gathered this far below the threshold, far above any float32 kernel's
rounding error on unit vectors, then kept or dropped by their canonical cosine."""
_REFINE_ROWS = 1 << 16
CORPUS_INDEXES = ("exact", "ivf")
"""Index kinds for the corpus-wide near-duplicate search: exact flat, or approximate IVF."""
IVF_NPROBE = 16
"""Inverted lists an IVF query visits (of about 2 sqrt(n)): recall vs time, see the bench."""


def exact_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise dot products of a and b, accumulated in float64 and rounded to float32.

    Products of float32 values are exact in float64, so the result does not depend on the
    order of summation (batch shape, threads, device): this is the canonical similarity.
    """
    out = np.empty(a.shape[0], dtype=np.float32)
    for start in range(0, a.shape[0], _REFINE_ROWS):
        part = slice(start, start + _REFINE_ROWS)
        out[part] = np.einsum("ij,ij->i", a[part].astype(np.float64), b[part].astype(np.float64))
    return out


def _refine(
    left: np.ndarray,
    right: np.ndarray,
    rows: np.ndarray,
    ids: np.ndarray,
    threshold: np.float32,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Keep the candidate pairs (left[rows], right[ids]) whose canonical cosine is >= t."""
    sims = np.empty(rows.shape[0], dtype=np.float32)
    for start in range(0, rows.shape[0], _REFINE_ROWS):
        part = slice(start, start + _REFINE_ROWS)
        sims[part] = exact_cosines(left[rows[part]], right[ids[part]])
    keep = sims >= threshold
    return rows[keep], ids[keep], sims[keep]


def gpu_available() -> bool:
    """True when faiss is installed with GPU support and sees at least one GPU."""
    try:
        import faiss

        return int(faiss.get_num_gpus()) > 0
    except Exception:  # noqa: BLE001 - no faiss, a CPU-only build, or a broken driver
        return False


def _as_unit_matrix(vectors: np.ndarray, dim: int | None = None) -> np.ndarray:
    """C-contiguous float32 2-D array of unit rows, or a ValueError naming the problem."""
    array = np.ascontiguousarray(vectors, dtype=np.float32)
    if array.ndim != 2:
        raise ValueError(f"expected a 2-D array of vectors, got shape {array.shape}")
    if dim is not None and array.shape[1] != dim:
        raise ValueError(f"expected vectors of dimension {dim}, got {array.shape[1]}")
    if array.shape[0]:
        norms = np.linalg.norm(array, axis=1)
        bad = np.flatnonzero(~(np.abs(norms - 1.0) <= NORM_TOLERANCE))
        if bad.size:
            raise ValueError(
                f"vectors must be L2-normalised (cosine = inner product); row {bad[0]} has norm {norms[bad[0]]:.6f}"
            )
    return array


@dataclass(frozen=True)
class RangeHits:
    """Flat range-search result: hit n is (rows[n], ids[n]) with similarity sims[n].

    Sorted by query row, then by id, so results from any backend compare directly.
    """

    rows: np.ndarray
    """Query row (position in the queries passed), int64."""
    ids: np.ndarray
    """Index id of the neighbour (insertion order), int64."""
    sims: np.ndarray
    """Inner product (cosine for unit vectors), float32."""

    def __len__(self) -> int:
        return int(self.rows.shape[0])

    def per_query(self, n_queries: int) -> list[tuple[int, np.ndarray, np.ndarray]]:
        """The same hits as one (query_row, ids, sims) tuple per query."""
        bounds = np.searchsorted(self.rows, np.arange(n_queries + 1))
        return [
            (q, self.ids[bounds[q] : bounds[q + 1]], self.sims[bounds[q] : bounds[q + 1]]) for q in range(n_queries)
        ]

    @staticmethod
    def build(rows: np.ndarray, ids: np.ndarray, sims: np.ndarray) -> RangeHits:
        """Sorted, typed hits from unordered parts."""
        rows = np.asarray(rows, dtype=np.int64)
        ids = np.asarray(ids, dtype=np.int64)
        order = np.lexsort((ids, rows))
        return RangeHits(rows[order], ids[order], np.asarray(sims, dtype=np.float32)[order])


class VectorIndex:
    """Exact inner-product index (faiss.IndexFlatIP) over unit float32 vectors.

    On GPU the vectors stay in a CPU index as well: it is the source the GPU copy is built
    from, the exact fallback for queries with more than `max_k` neighbours in range, and
    the vectors candidates are re-scored against.
    """

    def __init__(
        self,
        dim: int,
        use_gpu: bool | None = None,
        *,
        emulate_range: bool = False,
        initial_k: int = 16,
        max_k: int | None = None,
        batch_size: int = 4096,
    ) -> None:
        import faiss

        if dim < 1 or initial_k < 1 or batch_size < 1:
            raise ValueError("dim, initial_k and batch_size must be >= 1")
        if use_gpu and not gpu_available():
            raise RuntimeError("use_gpu=True but faiss sees no GPU (is faiss-gpu installed?)")
        self.dim = dim
        self.on_gpu = gpu_available() if use_gpu is None else bool(use_gpu)
        self.emulate_range = emulate_range or self.on_gpu
        """Range search by doubling-k kNN (always on GPU; forced on CPU for tests)."""
        self.initial_k = initial_k
        self.max_k = max_k if max_k is not None else (GPU_MAX_K if self.on_gpu else None)
        """Largest k the emulation uses before the exact CPU fallback (None: no cap)."""
        self.batch_size = batch_size
        self._cpu: Any = faiss.IndexFlatIP(dim)
        self._gpu: Any = None

    @property
    def ntotal(self) -> int:
        """Number of vectors added."""
        return int(self._cpu.ntotal)

    def vectors(self) -> np.ndarray:
        """Zero-copy view of the stored vectors (invalid after the next `add`)."""
        import faiss

        if not self.ntotal:
            return np.zeros((0, self.dim), dtype=np.float32)
        flat = faiss.rev_swig_ptr(self._cpu.get_xb(), self.ntotal * self.dim)
        return np.asarray(flat).reshape(self.ntotal, self.dim)

    def add(self, vectors: np.ndarray) -> None:
        """Append unit vectors; their ids continue from `ntotal`."""
        self._cpu.add(_as_unit_matrix(vectors, self.dim))
        self._gpu = None  # rebuilt from the CPU index on the next search

    def _search_index(self) -> Any:
        """The index kNN runs on: a GPU copy (built on demand) or the CPU index."""
        if not self.on_gpu:
            return self._cpu
        if self._gpu is None:
            import faiss

            self._gpu = faiss.index_cpu_to_all_gpus(self._cpu)
        return self._gpu

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The k most similar vectors per query: (sims float32, ids int64), best first.

        k is clipped to `ntotal`, so every returned id is real.
        """
        q = _as_unit_matrix(queries, self.dim)
        k = min(int(k), self.ntotal)
        if k <= 0 or q.shape[0] == 0:
            return np.zeros((q.shape[0], 0), np.float32), np.zeros((q.shape[0], 0), np.int64)
        if self.on_gpu and k > GPU_MAX_K:
            sims, ids = self._cpu.search(q, k)
        else:
            sims, ids = self._search_index().search(q, k)
        return sims, ids.astype(np.int64)

    def range_search(self, queries: np.ndarray, threshold: float) -> RangeHits:
        """Every (query, id) whose canonical cosine (`exact_cosines`) is >= threshold.

        The same pairs and values whatever the backend (CPU range search or kNN emulation).
        """
        q = _as_unit_matrix(queries, self.dim)
        threshold32 = np.float32(threshold)
        parts: list[RangeHits] = []
        if self.ntotal and q.shape[0]:
            for start in range(0, q.shape[0], self.batch_size):
                block = q[start : start + self.batch_size]
                loose = np.float32(threshold32 - SLACK)
                rows, ids = self._range_by_knn(block, loose) if self.emulate_range else self._range_cpu(block, loose)
                rows, ids, sims = _refine(block, self.vectors(), rows, ids, threshold32)
                parts.append(RangeHits(rows + start, ids, sims))
        if not parts:
            empty = np.zeros(0, np.int64)
            return RangeHits(empty, empty.copy(), np.zeros(0, np.float32))
        return RangeHits.build(
            np.concatenate([p.rows for p in parts]),
            np.concatenate([p.ids for p in parts]),
            np.concatenate([p.sims for p in parts]),
        )

    def _range_cpu(self, q: np.ndarray, threshold: np.float32) -> tuple[np.ndarray, np.ndarray]:
        """Candidates (rows, ids) with sim >= t from FAISS's CPU range search (which keeps
        sim > radius: radius is the float32 just below t)."""
        radius = float(np.nextafter(threshold, np.float32(-np.inf)))
        lims, _, ids = self._cpu.range_search(q, radius)
        rows = np.repeat(np.arange(q.shape[0], dtype=np.int64), np.diff(lims).astype(np.int64))
        return rows, ids.astype(np.int64)

    def _range_by_knn(self, q: np.ndarray, threshold: np.float32) -> tuple[np.ndarray, np.ndarray]:
        """Candidates (rows, ids) with sim >= t from kNN, doubling k for every query whose
        k-th similarity is still >= t (once it is below t, all in range are in the first k).
        Queries still open at `max_k` go to the CPU range search."""
        ntotal = self.ntotal
        cap = ntotal if self.max_k is None else min(self.max_k, ntotal)
        k = min(self.initial_k, cap)
        open_rows = np.arange(q.shape[0])
        rows: list[np.ndarray] = []
        ids: list[np.ndarray] = []
        index = self._search_index()
        while open_rows.size:
            d, i = index.search(np.ascontiguousarray(q[open_rows]), k)
            finished = np.full(open_rows.size, True) if k >= ntotal else d[:, -1] < threshold
            hit_r, hit_c = np.nonzero((d >= threshold) & finished[:, None])
            rows.append(open_rows[hit_r])
            ids.append(i[hit_r, hit_c].astype(np.int64))
            open_rows = open_rows[~finished]
            if open_rows.size and k >= cap:  # capped below ntotal: exact CPU fallback
                rest_rows, rest_ids = self._range_cpu(q[open_rows], threshold)
                rows.append(open_rows[rest_rows])
                ids.append(rest_ids)
                break
            k = min(2 * k, cap)
        return np.concatenate(rows).astype(np.int64), np.concatenate(ids)


def _codes(labels: Sequence[Hashable], n: int, what: str) -> np.ndarray:
    """Dense int codes for labels (equal labels, equal codes), checked against n rows."""
    if len(labels) != n:
        raise ValueError(f"{what} has {len(labels)} entries for {n} vectors")
    seen: dict[Hashable, int] = {}
    return np.fromiter((seen.setdefault(x, len(seen)) for x in labels), np.int64, count=n)


def _dense_pairs(
    vectors: np.ndarray, rows: np.ndarray, deps: np.ndarray, threshold: np.float32, block: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs i < j among `rows` (ascending) from different deployments with cosine >= t:
    candidates by blocked matrix products (memory stays block x len(rows)), then refined."""
    sub = vectors[rows]
    dep = deps[rows]
    out_i, out_j, out_s = [], [], []
    loose = np.float32(threshold - SLACK)
    for start in range(0, rows.size - 1, block):
        sims = sub[start : start + block] @ sub[start:].T
        a, b = np.nonzero(sims >= loose)
        ga, gb = a + start, b + start
        keep = (gb > ga) & (dep[ga] != dep[gb])
        ga, gb, exact = _refine(sub, sub, ga[keep], gb[keep], threshold)
        out_i.append(rows[ga])
        out_j.append(rows[gb])
        out_s.append(exact)
    if not out_i:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
    return np.concatenate(out_i), np.concatenate(out_j), np.concatenate(out_s)


def _ivf_lists(matrix: np.ndarray, nprobe: int) -> tuple[np.ndarray, np.ndarray, int]:
    """(each row's inverted list, the lists each row visits (n, nprobe), nlist) of a FAISS
    IVF index over the rows: about 2 sqrt(n) lists from k-means on a fixed sample (a rerun
    gives the same lists); a row is stored in its nearest list and visits its nprobe nearest."""
    import faiss

    n, dim = matrix.shape
    nlist = max(1, min(int(2 * np.sqrt(n)), n // 40))
    quantizer = faiss.IndexFlatIP(dim)
    ivf = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
    sample = np.random.default_rng(0).choice(n, size=min(n, 40 * nlist), replace=False)
    ivf.train(np.ascontiguousarray(matrix[np.sort(sample)]))
    _, visits = ivf.quantizer.search(matrix, min(nprobe, nlist))
    return visits[:, 0].astype(np.int64), visits.astype(np.int64), nlist


def _ivf_range(
    matrix: np.ndarray, deps: np.ndarray, threshold: np.float32, nprobe: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs i < j from different deployments (codes `deps`) with canonical cosine >= t that an
    IVF index over the rows finds.

    The pairs FAISS's `IndexIVFFlat.range_search` finds with the same lists (`_ivf_lists`): row
    i meets row j when j's list is among the nprobe lists i visits, so each query scans about
    nprobe / nlist of the corpus instead of all of it; a pair whose sides fall in lists the
    query does not visit is missed. FAISS compares a query with a list's vectors one by one;
    here each list meets all the rows that visit it in one matrix product (the same products
    at BLAS speed). The cosines of the pairs found are the exact ones (`exact_cosines`).
    """
    stored, visits, nlist = _ivf_lists(matrix, nprobe)
    members_order = np.argsort(stored, kind="stable")
    member_bounds = np.searchsorted(stored[members_order], np.arange(nlist + 1))
    flat = visits.reshape(-1)
    by_list = np.argsort(flat, kind="stable")
    visitor_order = by_list // visits.shape[1]  # the rows visiting each list, ascending
    visitor_bounds = np.searchsorted(flat[by_list], np.arange(nlist + 1))
    loose = np.float32(threshold - SLACK)

    def scanned(inverted_list: int) -> tuple[np.ndarray, np.ndarray]:
        members = members_order[member_bounds[inverted_list] : member_bounds[inverted_list + 1]]
        visitors = visitor_order[visitor_bounds[inverted_list] : visitor_bounds[inverted_list + 1]]
        if members.size == 0 or visitors.size == 0:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        stored_rows = matrix[members]
        rows, ids = [], []
        for start in range(0, visitors.size, 8192):  # memory: at most 8192 x list size cosines
            part = visitors[start : start + 8192]
            a, b = np.nonzero(matrix[part] @ stored_rows.T >= loose)
            keep = (part[a] < members[b]) & (deps[part[a]] != deps[members[b]])  # before refining
            rows.append(part[a][keep])
            ids.append(members[b][keep])
        return np.concatenate(rows), np.concatenate(ids)

    found = list(ordered_map(scanned, range(nlist)))
    rows = np.concatenate([f[0] for f in found]) if found else np.zeros(0, np.int64)
    ids = np.concatenate([f[1] for f in found]) if found else np.zeros(0, np.int64)
    return _refine(matrix, matrix, rows, ids, threshold)


def _blocked_range(
    matrix: np.ndarray, deps: np.ndarray, threshold: np.float32, rows: int = 1024, columns: int = 16384
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every pair i < j from different deployments with canonical cosine >= t: the exact
    corpus-wide search on CPU, by matrix products over the upper triangle only (half of a range
    search's n^2 products), `rows` x `columns` cosines at a time on the worker threads; a block
    row whose largest cosine is below the candidates' bound is dropped after one max, so the
    scan costs little next to the product. Candidates are refined as every path's are."""
    n = matrix.shape[0]
    loose = np.float32(threshold - SLACK)
    tasks = [(a, c) for a in range(0, n, rows) for c in range(a, n, columns)]

    def scanned(task: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        a, c = task
        sims = matrix[a : a + rows] @ matrix[c : c + columns].T
        near = np.flatnonzero(sims.max(axis=1) >= loose)
        r, k = np.nonzero(sims[near] >= loose)
        i, j = a + near[r], c + k
        keep = (i < j) & (deps[i] != deps[j])
        return i[keep], j[keep]

    found = list(ordered_map(scanned, tasks))
    i = np.concatenate([f[0] for f in found]) if found else np.zeros(0, np.int64)
    j = np.concatenate([f[1] for f in found]) if found else np.zeros(0, np.int64)
    return _refine(matrix, matrix, i.astype(np.int64), j.astype(np.int64), threshold)


def near_duplicate_pairs(
    vectors: np.ndarray,
    deployments: Sequence[str],
    groups: Sequence[Hashable] | None,
    threshold: float,
    use_gpu: bool | None = None,
    *,
    block: int = 2048,
    index: str = "exact",
    nprobe: int = IVF_NPROBE,
) -> pl.DataFrame:
    """Pairs of responses from different deployments whose cosine is >= threshold.

    Columns i, j (row indices, i < j, each pair once) and cosine, sorted by (i, j). With
    `groups` (query ids) only pairs within one group count ("within a query"), found by a
    matrix product per group; without, the whole corpus is searched exactly (`_blocked_range` on
    CPU, `VectorIndex` on GPU), or with an approximate IVF index when `index` is "ivf" (may miss
    pairs; see `_ivf_range`).
    Low thresholds return O(n^2) rows: they are meant for near-duplicates (t around 0.9).
    """
    import polars as pl

    if index not in CORPUS_INDEXES:
        raise ValueError(f"unknown index {index!r}; use one of {', '.join(CORPUS_INDEXES)}")

    matrix = _as_unit_matrix(vectors)
    n = matrix.shape[0]
    deps = _codes(deployments, n, "deployments")
    threshold32 = np.float32(threshold)
    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    if groups is not None:
        codes = _codes(groups, n, "groups")
        order = np.argsort(codes, kind="stable")  # rows ascending within each group
        bounds = np.searchsorted(codes[order], np.arange(int(codes.max(initial=-1)) + 2))
        within = [order[bounds[g] : bounds[g + 1]] for g in range(bounds.size - 1)]
        within = [rows for rows in within if rows.size > 1 and np.unique(deps[rows]).size > 1]
        parts.extend(ordered_map(lambda rows: _dense_pairs(matrix, rows, deps, threshold32, block), within))
    elif n > 1 and np.unique(deps).size > 1 and index != "exact":
        parts.append(_ivf_range(matrix, deps, threshold32, nprobe))
    elif n > 1 and np.unique(deps).size > 1 and not (gpu_available() if use_gpu is None else use_gpu):
        parts.append(_blocked_range(matrix, deps, threshold32))
    elif n > 1 and np.unique(deps).size > 1:
        flat = VectorIndex(matrix.shape[1], use_gpu=use_gpu)
        flat.add(matrix)
        hits = flat.range_search(matrix, float(threshold32))
        keep = (hits.rows < hits.ids) & (deps[hits.rows] != deps[hits.ids])
        parts.append((hits.rows[keep], hits.ids[keep], hits.sims[keep]))
    i = np.concatenate([p[0] for p in parts]) if parts else np.zeros(0, np.int64)
    j = np.concatenate([p[1] for p in parts]) if parts else np.zeros(0, np.int64)
    s = np.concatenate([p[2] for p in parts]) if parts else np.zeros(0, np.float32)
    order = np.lexsort((j, i))
    return pl.DataFrame(
        {
            "i": pl.Series("i", i[order], dtype=pl.Int64),
            "j": pl.Series("j", j[order], dtype=pl.Int64),
            "cosine": pl.Series("cosine", s[order].astype(np.float64), dtype=pl.Float64),
        }
    )

"""Per-query (or per-list) work on threads, results in order, every random draw in order.

The analysis spends its time in kernels that release the GIL (LAPACK eigenvalues, BLAS
products, the compiled loops of `hivemind.metrics.compiled`, xz), one query at a time; the
pair searches one query or one inverted list at a time. Where seeds matter (ensemble draws,
gap permutations) their meaning is one generator consumed group after group, so the draws stay
in this thread, in order, and only the arithmetic on them runs on worker threads: the numbers
are those of the serial loop."""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def analysis_threads() -> int:
    """Worker threads: HIVEMIND_ANALYSIS_THREADS, else the cores this process may use."""
    value = os.environ.get("HIVEMIND_ANALYSIS_THREADS")
    if value:
        return max(1, int(value))
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


def ordered_map(fn: Callable[[T], R], tasks: Iterable[T], threads: int | None = None) -> Iterator[R]:
    """fn(task) for each task, results in task order; tasks are produced lazily in this thread
    (so draws made while producing them keep their order) with at most 2 x threads in flight."""
    from threadpoolctl import threadpool_limits

    threads = threads or analysis_threads()
    if threads == 1:
        yield from map(fn, tasks)
        return
    # one BLAS thread per worker: OpenBLAS threads inside each worker's small LAPACK and BLAS
    # calls would only contend with the other workers for the same cores (measured: 25% slower)
    with threadpool_limits(limits=1, user_api="blas"), ThreadPoolExecutor(threads) as pool:
        pending: deque[Future[R]] = deque()
        for task in tasks:
            pending.append(pool.submit(fn, task))
            if len(pending) >= 2 * threads:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()

"""Benchmark: the full `analyze_responses` at 10K / 100K (/ 1M) responses, each step timed.

Synthetic study as bench/analysis.py builds it (queries x 20 deployments x 50 samples, 384-d
clustered unit vectors), with synthetic texts of ~80 words when lexical metrics are on (each
deployment repeats a template with a fifth of its words changed, so self-BLEU and ROUGE-L see
real overlap). Each size runs in a child process, so its peak memory (max RSS) is its own.
Printed beside the figures measured before the analysis was vectorised (issue 13, same
machine class: 2 cores): 20K no lexical 37 s (ensemble_per_query 18.6 s, gap_tests 18.1 s),
100K 228 s at 1.25 GB, 20K with lexical 130 s; targets: 100K <= 20 s without lexical and
<= 60 s with, 1M <= 10 min at <= 8 GB apart from the corpus-wide near-duplicate search.

`--recall` also measures the approximate IVF corpus index against the exact one on 100K
(pairs found / exact pairs, both times). At 1M the corpus-wide search uses IVF (exact is about
half an hour of two cores); the output says which index each row used.

Run:
    .venv/bin/python bench/analysis_scale.py                # 10K and 100K, no lexical
    .venv/bin/python bench/analysis_scale.py --lexical      # with lexical metrics
    .venv/bin/python bench/analysis_scale.py --million      # adds 1M (IVF corpus index)
    .venv/bin/python bench/analysis_scale.py --ensemble-k sparse   # fewer k on the ensemble curves
    .venv/bin/python bench/analysis_scale.py --recall       # IVF vs exact on 100K
    .venv/bin/python bench/analysis_scale.py --quick        # 10K only
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT))

DEPLOYMENTS, SAMPLES = 20, 50
BEFORE = {  # (responses, lexical) -> seconds measured before (issue 13, 2 cores)
    (20_000, False): "37 s (ensemble 18.6 s, gap_tests 18.1 s)",
    (100_000, False): "228 s, 1.25 GB peak",
    (20_000, True): "130 s (self-BLEU most of it)",
}
TARGET = {100_000: (20.0, 60.0), 1_000_000: (600.0, None)}
STEPS = (
    "pair_similarity",
    "random_pair_baseline",
    "nearest_neighbour_counts",
    "deployment_matrix",
    "category_breakdown",
    "verbatim_overlap",
    "gap_tests",
    "ensemble_per_query",
    "ensemble_curves",
    "hivemind_gap",
    "diversity_table",
    "diversity_summary",
    "quality_table",
    "quality_split",
    "conditions_view",
    "interventions_view",
    "lineage_view",
    "near_duplicates",
    "corpus_near_duplicates",
)


def synthetic_texts(n_queries: int, seed: int = 0, words: int = 80) -> list[str]:
    """One text per response (query, deployment, sample order): a per-(query, deployment)
    template of `words` words from a 5,000-word vocabulary with a fifth of them redrawn."""
    rng = np.random.default_rng(seed)
    vocab = np.array([f"w{i}" for i in range(5000)])
    out: list[str] = []
    for _ in range(n_queries * DEPLOYMENTS):
        template = rng.integers(0, vocab.size, words)
        draws = np.repeat(template[None, :], SAMPLES, axis=0)
        change = rng.random(draws.shape) < 0.2
        draws[change] = rng.integers(0, vocab.size, int(change.sum()))
        out.extend(" ".join(row) + "." for row in vocab[draws])
    return out


def run_one(n: int, lexical: bool, index: str, ensemble_k: str = "all") -> dict[str, Any]:
    """Analyse one synthetic study of n responses in this process; seconds per step, peak RSS."""
    import polars as pl
    from analysis import make_study

    from hivemind.analysis import run

    n_queries = max(1, n // (DEPLOYMENTS * SAMPLES))
    responses, vectors = make_study(n_queries, DEPLOYMENTS, SAMPLES)
    if lexical:
        responses = responses.with_columns(pl.Series("text", synthetic_texts(n_queries)))
    steps: dict[str, float] = {}

    cpu: dict[str, float] = {}
    peak_raised: dict[str, float] = {}  # GB a step added to the process's peak RSS
    loaded_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6

    def timed(name: str, fn: Any) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            start, start_cpu = time.perf_counter(), time.process_time()
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            try:
                return fn(*args, **kwargs)
            finally:
                steps[name] = steps.get(name, 0.0) + time.perf_counter() - start
                cpu[name] = cpu.get(name, 0.0) + time.process_time() - start_cpu
                raised = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak) / 1e6
                if raised > 0.01:
                    peak_raised[name] = peak_raised.get(name, 0.0) + raised

        return wrapper

    for name in STEPS:
        setattr(run, name, timed(name, getattr(run, name)))
    start, start_cpu = time.perf_counter(), time.process_time()
    result = run.analyze_responses(responses, vectors, lexical=lexical, corpus_index=index, ensemble_k=ensemble_k)
    total = time.perf_counter() - start
    return {
        "n": responses.height,
        "lexical": lexical,
        "index": index,
        "seconds": total,
        "steps": steps,
        "cpu_seconds": time.process_time() - start_cpu,
        "cpu_steps": cpu,
        "peak_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6,
        "loaded_gb": loaded_gb,
        "peak_raised_gb": peak_raised,
        "corpus_pairs": result.summary["headline"]["near_duplicate_pairs_corpus"],
    }


def recall(n: int) -> dict[str, Any]:
    """IVF vs exact corpus-wide pairs (cosine >= 0.9) on the synthetic study's vectors with
    planted near-duplicates; seconds are CPU seconds (the machine may be shared)."""
    from analysis import make_study

    from hivemind.vectors.index import near_duplicate_pairs

    _, vectors = make_study(max(1, n // (DEPLOYMENTS * SAMPLES)), DEPLOYMENTS, SAMPLES)
    # the synthetic study has no pair >= 0.9: plant one in 100 rows, a near copy of the same
    # sample of the previous deployment (another model repeating an answer), so recall is measured
    rng = np.random.default_rng(1)
    copies = np.arange(SAMPLES, n, 2 * SAMPLES)  # sources (copies - SAMPLES) are never copies
    vectors[copies] = vectors[copies - SAMPLES] + 0.02 * rng.standard_normal(
        (copies.size, vectors.shape[1]), dtype=np.float32
    )
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    deployments = np.tile(np.repeat(np.arange(DEPLOYMENTS), SAMPLES), n // (DEPLOYMENTS * SAMPLES)).astype(str)
    out: dict[str, Any] = {"n": n}
    found = {}
    for index in ("ivf", "exact"):
        start = time.process_time()
        found[index] = near_duplicate_pairs(vectors, deployments.tolist(), None, 0.9, use_gpu=False, index=index)
        out[f"{index}_s"] = time.process_time() - start
    exact = found["exact"].select("i", "j")
    hit = found["ivf"].select("i", "j").join(exact, on=["i", "j"], how="inner").height
    out.update(
        exact_pairs=exact.height,
        ivf_pairs=found["ivf"].height,
        recall=hit / exact.height if exact.height else float("nan"),
    )
    return out


def versus_previous(n_queries: int = 2) -> None:
    """CPU seconds of the ensemble draws and the gap permutations, previous implementation
    (kept as the reference in tests/test_analysis_vectorised.py) vs now, on the same groups."""
    sys.path.insert(0, str(ROOT / "tests"))
    from analysis import make_study
    from test_analysis_vectorised import (
        _previous_ensemble_per_query,
        _previous_gap_permutation_test,
    )

    from hivemind.analysis.data import build_groups
    from hivemind.analysis.ensemble import ensemble_per_query
    from hivemind.analysis.significance import gap_permutation_test

    responses, vectors = make_study(n_queries, DEPLOYMENTS, SAMPLES)
    groups = build_groups(responses)
    pairs = [
        ("ensemble_per_query", _previous_ensemble_per_query, ensemble_per_query),
        ("gap permutation test", _previous_gap_permutation_test, gap_permutation_test),
    ]
    for name, before, now in pairs:
        spent = []
        for fn in (before, now):
            start, start_cpu = time.perf_counter(), time.process_time()
            fn(groups, vectors)
            spent.append((time.perf_counter() - start, time.process_time() - start_cpu))
        (bw, bc), (nw, nc) = spent
        print(
            f"{name}, {responses.height:,} responses: previous {bw:.1f} s ({bc:.1f} CPU s), now {nw:.1f} s "
            f"({nc:.1f} CPU s): {bc / nc:.1f}x less CPU"
        )
    import sacrebleu

    from hivemind.metrics.lexical import self_bleu

    texts = synthetic_texts(1)
    sets = [texts[d * SAMPLES : (d + 1) * SAMPLES] for d in range(4)]
    start = time.process_time()
    ref = [
        sum(sacrebleu.sentence_bleu(t[i], t[:i] + t[i + 1 :]).score for i in range(len(t))) / len(t) / 100 for t in sets
    ]
    before = time.process_time() - start
    start = time.process_time()
    now = [self_bleu(t) for t in sets]
    spent = time.process_time() - start
    assert max(abs(a - b) for a, b in zip(ref, now)) <= 1e-12
    print(
        f"self-BLEU, 4 x {SAMPLES} texts of ~80 words: sacrebleu.sentence_bleu per hypothesis {before:.2f} CPU s, "
        f"hivemind {spent:.2f} CPU s (same scores): {before / spent:.0f}x less CPU"
    )


def child(args: list[str]) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, cwd=ROOT, check=False)
    if proc.returncode:
        raise SystemExit(proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lexical", action="store_true", help="lexical metrics on (synthetic texts)")
    parser.add_argument("--million", action="store_true", help="also 1M responses (IVF corpus index)")
    parser.add_argument("--recall", action="store_true", help="IVF vs exact corpus search on 100K")
    parser.add_argument("--quick", action="store_true", help="10K only")
    parser.add_argument("--index", choices=("exact", "ivf"), default="exact", help="corpus index below 1M")
    parser.add_argument("--ensemble-k", choices=("all", "sparse"), default="all", help="k of the ensemble curves")
    parser.add_argument(
        "--versus-previous",
        action="store_true",
        help="ensemble draws and gap permutations vs the previous implementation (2K responses)",
    )
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--recall-one", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one, args.lexical, args.index, args.ensemble_k)))
        return
    if args.recall_one:
        print(json.dumps(recall(args.recall_one)))
        return
    sizes = [10_000] if args.quick else [10_000, 100_000]
    if args.million:
        sizes.append(1_000_000)
    print(
        f"full analyze_responses, {DEPLOYMENTS} deployments x {SAMPLES} samples per query, 384-d, "
        f"lexical {'on' if args.lexical else 'off'}, ensemble k {args.ensemble_k} (each size in its own process)"
    )
    rows = []
    for n in sizes:
        index = "ivf" if n >= 1_000_000 else args.index
        extra = ["--lexical"] if args.lexical else []
        r = child(["--one", str(n), "--index", index, "--ensemble-k", args.ensemble_k, *extra])
        rows.append(r)
        top = sorted(r["steps"].items(), key=lambda kv: -kv[1])[:4]
        target = TARGET.get(n, (None, None))[1 if args.lexical else 0]
        print(
            f"{n:>9,} responses: {r['seconds']:7.1f} s ({r['cpu_seconds']:.1f} CPU s), peak {r['peak_gb']:.2f} GB, corpus index {index} "
            f"({r['corpus_pairs']} pairs); target {f'<= {target:.0f} s' if target else '-'}; "
            f"before: {BEFORE.get((n, args.lexical), 'not measured')}"
        )
        raised = sorted(r["peak_raised_gb"].items(), key=lambda kv: -kv[1])[:3]
        print(
            f"           memory: {r['loaded_gb']:.2f} GB with the study loaded; steps that raised the peak: "
            + (", ".join(f"{k} +{v:.2f} GB" for k, v in raised) or "none")
        )
        print(
            "           slowest steps: "
            + ", ".join(f"{k} {v:.1f} s / {r['cpu_steps'][k]:.1f} CPU s ({v / r['seconds']:.0%})" for k, v in top)
        )
    if len(rows) > 1:
        per = [(r["seconds"] / r["n"] * 1e6, r["cpu_seconds"] / r["n"] * 1e6) for r in rows]
        print(
            "microseconds per response (wall / CPU): "
            + ", ".join(f"{r['n']:,}: {w:.0f} / {c:.0f}" for r, (w, c) in zip(rows, per))
            + " (linear scaling keeps these equal)"
        )
    if args.versus_previous:
        versus_previous()
    if args.recall:
        r = child(["--recall-one", "100000"])
        print(
            f"corpus near-duplicates on {r['n']:,} (cosine >= 0.9): exact {r['exact_pairs']} pairs in "
            f"{r['exact_s']:.1f} CPU s, IVF {r['ivf_pairs']} pairs in {r['ivf_s']:.1f} CPU s: recall {r['recall']:.4f}"
        )


if __name__ == "__main__":
    main()

"""The explorer: `STORE/<study>/explorer.html`, every number opened onto its responses.

The page is static: one HTML file (its style and script inline) and data files beside it in
`explorer/`: `index.js` (a row per query with its figures) and `q/<n>.js` (one query's
responses, classes, nearest cross-deployment neighbours, near-duplicate pairs and 2-D map).
The data files are JSONP (`hivemindData({...});`): a `<script src>` of a file next to the page
loads from disk, where Chromium refuses `fetch()` on `file://`. The page loads one query's
file when it is opened, so it stays small at 100K responses. Nothing is loaded from
anywhere else. `read_data` gives a data file back as the JSON object the REST service returns.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from hivemind.layout import atomic_write_text

if TYPE_CHECKING:
    import polars as pl

    from hivemind.analysis.summary import Summary
    from hivemind.store.journal import Store

PAGE = "explorer.html"
DATA = "explorer"
INDEX = "index.js"
PREFIX = "hivemindData("
SUFFIX = ");\n"
MAX_PAIRS = 60
"""Near-duplicate pairs kept per query in its data file (the most similar; the count is all)."""


def shard_name(n: int) -> str:
    return f"q/{n}.js"


def _jsonp(data: Any) -> str:
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return PREFIX + text.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029") + SUFFIX


def read_data(path: str | Path) -> Any:
    """The JSON object in an explorer data file (`index.js` or a query's `q/<n>.js`)."""
    text = Path(path).read_text(encoding="utf-8")
    if not (text.startswith(PREFIX) and text.endswith(SUFFIX)):
        raise ValueError(f"{path} is not an explorer data file")
    return json.loads(text[len(PREFIX) : -len(SUFFIX)])


def _num(value: Any, digits: int = 4) -> float | None:
    if value is None:
        return None
    value = float(value)
    return None if not np.isfinite(value) else round(value, digits)


def _texts(store: Store, study: str, responses: pl.DataFrame) -> pl.DataFrame:
    """The analysed responses with their scored text and the query text (from the samples)."""
    import polars as pl

    from hivemind.analysis.data import answer_texts

    if "text" in responses.columns and "query_text" in responses.columns:
        return responses
    samples = store.samples_frame(study)
    keys = ["query_id", "deployment", "condition", "sample_index"]
    wanted = [c for c in ("text", "query_text") if c in samples.columns and c not in responses.columns]
    side = samples.select(*keys, *wanted).unique(keys, keep="first")
    out = responses.join(side, on=keys, how="left")
    if "text" in wanted:
        out = out.with_columns(answer_texts(out["text"].cast(pl.Utf8)).alias("text"))
    for name in ("text", "query_text"):
        if name not in out.columns:
            out = out.with_columns(pl.lit(None, dtype=pl.Utf8).alias(name))
    return out.sort("row")


def _vectors(store: Store, embedder_id: str | None, texts: list[str]) -> np.ndarray | None:
    """The cached embedding of every text, or None when any is missing (then no map)."""
    from hivemind.inputs.spec import sha256_hex
    from hivemind.vectors.embed import EmbeddingCache

    if not embedder_id or not texts or not store.layout.embedding_cache.is_file():
        return None
    hashes = [sha256_hex(t) for t in texts]
    found = EmbeddingCache(store.layout.embedding_cache).get_many(embedder_id, hashes)
    if any(h not in found for h in hashes) or len({v.shape[0] for v in found.values()}) != 1:
        return None
    return np.stack([found[h] for h in hashes]).astype(np.float32)


def _projection(X: np.ndarray) -> np.ndarray:
    """2-D PCA of a query's vectors, scaled into [-1, 1] (zeros for fewer than two)."""
    if X.shape[0] < 2:
        return np.zeros((X.shape[0], 2))
    centred = X - X.mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    xy = centred @ vt[:2].T
    if xy.shape[1] < 2:
        xy = np.pad(xy, ((0, 0), (0, 2 - xy.shape[1])))
    scale = np.abs(xy).max()
    return xy / scale if scale > 0 else xy


def _classes(X: np.ndarray, threshold: float) -> list[int]:
    from hivemind.metrics.classes import threshold_classes

    return threshold_classes((X @ X.T) >= threshold) if X.shape[0] else []


def _query_data(
    n: int,
    part: pl.DataFrame,
    X: np.ndarray | None,
    threshold: float,
    imported: dict[tuple[str, str, str, int], str],
    dups: pl.DataFrame,
    pair_sims: pl.DataFrame,
    deployments: list[str],
    conditions: list[str],
) -> dict[str, Any]:
    """One query's data file: responses (with class, nearest other-deployment response and
    map position), near-duplicate pairs and the per deployment-pair similarities."""
    rows = part["row"].to_list()
    dep = part["deployment"].to_list()
    cond = part["condition"].to_list()
    sample = part["sample_index"].to_list()
    texts = part["text"].to_list()
    qid = part["query_id"][0]
    local = X[np.asarray(rows)] if X is not None else None
    klass = [0] * len(rows)
    nearest: list[tuple[int, float] | None] = [None] * len(rows)
    for c in dict.fromkeys(cond):
        for d in dict.fromkeys(dep):
            members = [i for i in range(len(rows)) if cond[i] == c and dep[i] == d]
            if local is not None and members:
                for i, label in zip(members, _classes(local[members], threshold)):
                    klass[i] = label
        if local is None:
            continue
        members = [i for i in range(len(rows)) if cond[i] == c]
        S = local[members] @ local[members].T
        same = np.asarray([dep[i] for i in members])
        S[same[:, None] == same[None, :]] = -np.inf
        for a, i in enumerate(members):
            b = int(np.argmax(S[a]))
            if np.isfinite(S[a, b]):
                nearest[i] = (members[b], float(S[a, b]))
    xy = _projection(local) if local is not None else None
    position = {r: i for i, r in enumerate(rows)}
    responses = []
    for i in range(len(rows)):
        entry: dict[str, Any] = {
            "r": rows[i],
            "d": deployments.index(dep[i]),
            "c": conditions.index(cond[i]),
            "s": sample[i],
            "t": texts[i] or "",
            "k": klass[i],
        }
        theirs = imported.get((qid, dep[i], cond[i], int(sample[i])))
        if theirs is not None:
            entry["x"] = str(theirs)
        if nearest[i] is not None:
            entry["nn"] = rows[nearest[i][0]]  # type: ignore[index]
            entry["nc"] = _num(nearest[i][1], 3)  # type: ignore[index]
        if xy is not None:
            entry["xy"] = [round(float(xy[i, 0]), 3), round(float(xy[i, 1]), 3)]
        responses.append(entry)
    pairs = [
        [position[i], position[j], _num(cos, 3)]
        for i, j, cos in (dups.select("i", "j", "cosine").head(MAX_PAIRS).iter_rows() if dups.height else [])
        if i in position and j in position
    ]
    sims = [
        [conditions.index(c), deployments.index(a), deployments.index(b), _num(s)]
        for c, a, b, s in (
            pair_sims.select("condition", "deployment_a", "deployment_b", "similarity").iter_rows()
            if pair_sims.height
            else []
        )
        if c in conditions and a in deployments and b in deployments
    ]
    return {
        "n": n,
        "id": qid,
        "text": part["query_text"][0] or "",
        "category": part["category"][0],
        "responses": responses,
        "pairs": pairs,
        "n_pairs": dups.height,
        "sims": sims,
        "mapped": xy is not None,
    }


def _index_row(
    n: int, qid: str, part: pl.DataFrame, qsim: pl.DataFrame, n_dup: int, conditions: list[str]
) -> dict[str, Any]:
    figures = {
        c: [_num(r["intra"]), _num(r["inter"]), _num(r["gap"])]
        for r in (qsim.iter_rows(named=True) if qsim.height else [])
        if (c := r["condition"]) in conditions
    }
    return {
        "n": n,
        "id": qid,
        "text": part["query_text"][0] or "",
        "category": part["category"][0],
        "n_responses": part.height,
        "deployments": sorted(set(part["deployment"].to_list())),
        "conditions": sorted(set(part["condition"].to_list())),
        "figures": figures,
        "n_dup": n_dup,
    }


def _per_deployment(pairs: pl.DataFrame) -> dict[tuple[str, str, str], list[float | None]]:
    """(query, condition, deployment) -> [intra, mean inter with the others] (the bins' values)."""
    import polars as pl

    from hivemind.analysis.similarity import _symmetric

    if pairs.height == 0:
        return {}
    per = _symmetric(pairs).group_by(["query_id", "condition", "deployment_a", "kind"]).agg(pl.col("similarity").mean())
    out: dict[tuple[str, str, str], list[float | None]] = {}
    for q, c, d, kind, s in per.iter_rows():
        out.setdefault((q, c, d), [None, None])[0 if kind == "intra" else 1] = _num(s)
    return out


def write_explorer(store: Store, study: str, summary: Summary, tables: dict[str, pl.DataFrame]) -> Path:
    """Write `STORE/<study>/explorer.html` and its data files; returns the page's path."""
    from hivemind.imports.importer import imported_classes

    responses = _texts(store, study, tables["responses"]).sort("row")
    X = _vectors(store, summary.embedder.id, [t or "" for t in responses["text"].to_list()])
    return build_explorer(
        store.layout.study(study),
        study,
        responses,
        X,
        tables,
        deployments=list(summary.deployments),
        conditions=[c for c in summary.conditions if c],
        baseline=summary.baseline_condition,
        threshold=float(summary.near_duplicate_threshold or 0.9),
        embedder=summary.embedder.id,
        imported=imported_classes(store, study),
        references=list(summary.references),
    )


def build_explorer(
    directory: Path,
    study: str,
    responses: pl.DataFrame,
    X: np.ndarray | None,
    tables: dict[str, pl.DataFrame],
    *,
    deployments: list[str],
    conditions: list[str],
    baseline: str | None,
    threshold: float,
    embedder: str | None,
    imported: dict[tuple[str, str, str, int], str],
    references: list[str] | None = None,
) -> Path:
    """The explorer of analysed `responses` (row, query_id, query_text, category, condition,
    deployment, sample_index, text; row i has vector `X[i]`, None for no map and neighbours)
    into `directory`: `explorer.html` and `explorer/` (replaced whole, the old one kept until
    the new one is complete)."""
    import polars as pl

    from hivemind.report.explorer_page import page

    deployments = list(dict.fromkeys(deployments + responses["deployment"].to_list()))
    conditions = list(dict.fromkeys(conditions + responses["condition"].to_list()))
    if X is not None and X.shape[0] != responses.height:
        X = None
    empty = pl.DataFrame()
    dups = tables.get("near_duplicates", empty)
    pairs = tables.get("pairs", empty)
    qsim = tables.get("query_similarity", empty)
    dup_by = {k[0]: g for k, g in dups.group_by("query_id")} if dups.height else {}
    pairs_by = {k[0]: g for k, g in pairs.group_by("query_id")} if pairs.height else {}
    qsim_by = {k[0]: g for k, g in qsim.group_by("query_id")} if qsim.height else {}
    per_dep = _per_deployment(pairs)

    folder = Path(directory) / DATA
    fresh = folder.with_name(f".{DATA}.new")
    shutil.rmtree(fresh, ignore_errors=True)
    (fresh / "q").mkdir(parents=True)
    rows = []
    for n, ((qid,), part) in enumerate(responses.group_by("query_id", maintain_order=True)):
        query_dups = dup_by.get(qid, empty)
        data = _query_data(
            n, part, X, threshold, imported, query_dups, pairs_by.get(qid, empty), deployments, conditions
        )
        (fresh / shard_name(n)).write_text(_jsonp(data), encoding="utf-8")
        row = _index_row(n, str(qid), part, qsim_by.get(qid, empty), query_dups.height, conditions)
        row["per_deployment"] = {
            c: {d: per_dep[(qid, c, d)] for d in deployments if (qid, c, d) in per_dep} for c in conditions
        }
        rows.append(row)
    index = {
        "study": study,
        "deployments": deployments,
        "references": [d for d in references or [] if d in deployments],
        "conditions": conditions,
        "baseline": baseline,
        "threshold": threshold,
        "embedder": embedder,
        "mapped": X is not None,
        "imported_classes": bool(imported),
        "queries": rows,
    }
    (fresh / INDEX).write_text(_jsonp(index), encoding="utf-8")
    old = folder.with_name(f".{DATA}.old")
    shutil.rmtree(old, ignore_errors=True)
    if folder.exists():
        folder.rename(old)
    fresh.rename(folder)
    shutil.rmtree(old, ignore_errors=True)
    return atomic_write_text(Path(directory) / PAGE, page(study))

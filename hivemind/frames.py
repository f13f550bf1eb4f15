"""`hivemind.analyze(frame)`: a DataFrame of responses in, the analysis tables out.

The shortest path from a notebook: the frame is imported into a study (as `hivemind import`
would import a file), embedded and analysed by the same pipeline as a sampled study. Given a
`store`, vectors are cached there and a second call embeds nothing twice.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hivemind.imports.importer import PROVIDER, Columns, import_responses
from hivemind.store.journal import Store, StoreError

if TYPE_CHECKING:
    from hivemind.pipeline import AnalysisOutputs

OPTIONAL = {
    "id": "query_id",
    "sample_index": "sample_index",
    "category": "category",
    "answer": "answer",
    "classes": "partition",
}
"""Columns picked up when present (Columns field -> default column name)."""


def _drop_imported_study(store: Store, study: str) -> None:
    """Forget a study made only of imported rows (a re-run of `analyze` on a new frame).

    A study holding sampled deployments is never touched: its rows cost money."""
    providers = {r["provider"] for r in store._rows("SELECT provider FROM deployments WHERE study = ?", (study,))}
    if not providers and study not in store.studies():
        return
    if providers - {PROVIDER}:
        raise StoreError(f"study {study!r} holds sampled deployments; analyse a frame under another name")
    with store.transaction() as db:
        for table in ("samples", "queries", "deployments", "imported_samples"):
            db.execute(f"DELETE FROM {table} WHERE study = ?", (study,))
        db.execute("DELETE FROM studies WHERE name = ?", (study,))


def analyze(
    frame: Any,
    *,
    store: str | Path | None = None,
    study: str = "frame",
    query: str = "query",
    deployment: str = "deployment",
    text: str = "text",
    embedder: Any = None,
    **options: Any,
) -> AnalysisOutputs:
    """Embed and analyse a polars or pandas DataFrame of responses; returns `AnalysisOutputs`.

    `frame` needs a query, a deployment and a text column (names given by `query`,
    `deployment`, `text`); `query_id`, `sample_index`, `category`, `answer` and `partition`
    (imported equivalence classes) are used when present. Without a `store` the study lives in
    a temporary directory that is kept (its path is `outputs.directory`). `options` go to
    `analyze_store` (threshold, n_boot, n_perm, draws, seed, lexical, use_gpu).
    """
    import polars as pl

    from hivemind.pipeline import run_pipeline

    if not isinstance(frame, pl.DataFrame):
        frame = pl.from_pandas(frame) if hasattr(frame, "to_numpy") else pl.DataFrame(frame)
    for role, column in (("query", query), ("deployment", deployment), ("text", text)):
        if column not in frame.columns:
            raise ValueError(f"the frame has no {role} column {column!r} (columns: {frame.columns})")
    columns = Columns(
        query=query, model=deployment, text=text, **{f: c for f, c in OPTIONAL.items() if c in frame.columns}
    )
    records = [(f"row {i}", row) for i, row in enumerate(frame.to_dicts(), start=1)]
    store_dir = Path(store) if store is not None else Path(tempfile.mkdtemp(prefix="hivemind-frame-"))
    with Store(store_dir) as db:  # one handle: the import, then the pipeline's analyze step
        _drop_imported_study(db, study)
        import_responses(
            Path("DataFrame"), study, db, columns=columns, records=records, on_unmatched="add", source_name="DataFrame"
        )
        outputs = run_pipeline(study, db, steps=["analyze"], embedder=embedder, **options).analysis
    assert outputs is not None
    return outputs

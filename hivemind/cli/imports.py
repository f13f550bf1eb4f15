"""`hivemind import` and `hivemind init`: bring your own responses; start a project anywhere."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from hivemind.cli.common import StoreOption, console, fail

STARTER_SPEC = """\
# A first study: two scripted mock deployments (no model, no key, runs anywhere in seconds).
# Swap in the local models of providers.yaml (smollm2-135m-instruct, ...) or hosted ones, then
#   hivemind run study.yaml --store hivemind-store
name: my-first-study
query_set: open-ended-v1        # shipped: open-ended-v1, verifiable-v1, noveltybench-curated; or a file
deployments: [mock-a, mock-b]   # names from providers.yaml
samples: 4                      # responses per (query, deployment, condition): equal K for all
max_queries: 5
params: {temperature: 1.0, max_tokens: 96}
# conditions:                   # crossed with every deployment
#   - {name: default}
#   - {name: reworded, paraphrase: 1}   # noveltybench-curated: the same request, reworded
"""


class OnUnmatched(StrEnum):
    error = "error"
    skip = "skip"
    add = "add"


Column = Annotated[str | None, typer.Option(show_default=False)]


def import_file(
    file: Annotated[Path, typer.Argument(help="JSONL, CSV/TSV, JSON or Parquet file of responses.")],
    study: Annotated[str, typer.Option("--study", help="Study to create, or to add deployments to.")],
    store: StoreOption = Path("hivemind-store"),
    deployment: Annotated[
        str | None, typer.Option(help="One deployment name for every row (a file without a model column).")
    ] = None,
    query_set: Annotated[
        str | None, typer.Option(help="New study: match rows against this query set (a shipped name or a file).")
    ] = None,
    condition: Annotated[
        str | None, typer.Option(help="Condition the responses belong to (added to the study when new).")
    ] = None,
    reference: Annotated[
        bool,
        typer.Option(help="The file's deployments are reference arms (human answers): not models under test."),
    ] = False,
    unmatched: Annotated[
        OnUnmatched,
        typer.Option(help="Rows matching no query: fail (error), leave out and list (skip), or add as queries."),
    ] = OnUnmatched.error,
    replace: Annotated[bool, typer.Option(help="Re-import deployments this study already imported.")] = False,
    query_col: Column = None,
    id_col: Column = None,
    model_col: Column = None,
    text_col: Column = None,
    index_col: Column = None,
    category_col: Column = None,
    answer_col: Column = None,
    classes_col: Column = None,
    condition_col: Column = None,
) -> None:
    """Import responses you already have into a study (analyze/report/status/export it as usual)."""
    from hivemind.imports.importer import Columns, import_responses

    columns = Columns(
        query=query_col,
        id=id_col,
        model=model_col,
        text=text_col,
        sample_index=index_col,
        category=category_col,
        answer=answer_col,
        classes=classes_col,
        condition=condition_col,
    )
    result = import_responses(
        file,
        study,
        store,
        columns=columns,
        deployment=deployment,
        query_set=query_set,
        condition=condition,
        on_unmatched=unmatched.value,
        replace=replace,
        reference=reference,
    )  # a HivemindError: a clean exit (`CleanErrors`)
    per = ", ".join(f"{d}: {n}" for d, n in result.deployments.items())
    console.print(
        f"[green]imported[/] {result.imported} of {result.rows} responses into study "
        f"{result.study!r} ({per}); {result.queries} queries"
        + (", with equivalence classes" if result.has_classes else "")
        + (" as a reference arm" if result.reference else "")
        + (f"; conditions {', '.join(result.conditions)}" if result.conditions else "")
    )
    console.print(
        f"queries matched: {result.match_rate:.1%} (by id {result.matched_by_id}, by text "
        f"{result.matched_by_text}; new {result.new_queries})"
    )
    if result.k_file > result.k_study:
        console.print(
            f"equal K: the study analyses {result.k_study} responses per query and deployment; "
            f"the file has up to {result.k_file} (sample indices from {result.k_study} on wait in the store)"
        )
    if result.unmatched:
        console.print(f"[yellow]{len(result.unmatched)} rows matched no query and were left out:[/]")
        for row in result.unmatched[:20]:
            console.print(f"  {row['where']}: {row['query_id'] or row['query']!r} ({row['deployment']})", markup=False)
        if len(result.unmatched) > 20:
            console.print(
                f"  ... (all listed in {store / study / 'imports' / (result.sha256[:16] + '.json')})", markup=False
            )


def init(
    directory: Annotated[Path, typer.Argument(help="Where to write them.")] = Path("."),
    force: Annotated[bool, typer.Option(help="Overwrite existing files.")] = False,
) -> None:
    """Write a starter providers.yaml (the shipped zoo) and study.yaml into a directory."""
    from hivemind.inputs.zoo import REPO_ZOO

    directory.mkdir(parents=True, exist_ok=True)
    targets = {
        directory / "providers.yaml": REPO_ZOO.read_text(encoding="utf-8"),
        directory / "study.yaml": STARTER_SPEC,
    }
    existing = [str(p) for p in targets if p.exists()]
    if existing and not force:
        fail(f"{', '.join(existing)} already exist (--force overwrites)")
    for path, text in targets.items():
        path.write_text(text, encoding="utf-8")
        print(path)
    console.print("next: hivemind run study.yaml --store hivemind-store")

"""The `hivemind` command line: a thin door onto the pipeline (no logic of its own).

Only typer, rich and the light modules are imported at start-up; torch, litellm and llama_cpp
load inside the commands that need them, so `hivemind --help` stays fast.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from hivemind.cli.common import CleanErrors, StoreOption, ZooOption, console, fail, require_store

if TYPE_CHECKING:
    from hivemind.executors import Executor
    from hivemind.inputs.spec import StudySpec
    from hivemind.pipeline import AnalysisOutputs
    from hivemind.study import StudyRun

app = typer.Typer(
    cls=CleanErrors,  # every HivemindError: a one-line message, exit code 2
    name="hivemind",
    help="Measure how alike different language models answer open-ended queries.",
    no_args_is_help=True,
    add_completion=False,
)
zoo_app = typer.Typer(help="Inspect and check the model zoo (providers.yaml).", no_args_is_help=True)
app.add_typer(zoo_app, name="zoo")


ExecutorOption = Annotated[
    str, typer.Option(help="Where the work runs: 'local' (this process) or 'ray' (Ray actors and tasks).")
]
EmbedderOption = Annotated[
    str | None,
    typer.Option(
        help="Embedder for the analysis: an entry of the zoo's `embedders:` section, else a "
        "sentence-transformers name or local folder (default: the spec's `embedder`)."
    ),
]
RayAddressOption = Annotated[
    str | None,
    typer.Option(help="Ray cluster to join (e.g. 'auto' or 'ray://head:10001'); default: start a local Ray instance."),
]


def _open_executor(executor: str, ray_address: str | None) -> Executor:
    """The executor the options name, or a clean exit (unknown name, Ray not installed)."""
    from hivemind.executors import open_executor

    try:
        opened = open_executor(executor, ray_address)
    except ValueError as exc:
        fail(str(exc))
    except ImportError as exc:
        fail(f"--executor {executor} needs Ray: pip install 'hivemind-study[ray]' ({exc})")
    if opened.name != "local":
        console.print(f"executor: {opened.describe()}")
    return opened


@app.command()
def run(
    spec: Annotated[
        Path, typer.Argument(help="Study spec (YAML or JSON), or the name of a study in --store to resume.")
    ],
    store: StoreOption = Path("hivemind-store"),
    analyze: Annotated[bool, typer.Option(help="Analyze and write the report after sampling.")] = True,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
    executor: ExecutorOption = "local",
    ray_address: RayAddressOption = None,
    verbose: Annotated[
        bool, typer.Option("--verbose", help="Show local engines' own output (default: STORE/logs/).")
    ] = False,
    replace: Annotated[
        bool, typer.Option(help="Import a `responses:` file again when it changed since it was imported.")
    ] = False,
    embedder: EmbedderOption = None,
    over_budget: Annotated[
        bool, typer.Option("--over-budget", help="Run even when `hivemind plan` prices it above budget_usd.")
    ] = False,
    batch: Annotated[
        bool,
        typer.Option(
            "--batch",
            help="Sample every deployment that has a batch API (OpenAI, Anthropic) through it: half price, "
            "hours not seconds; a rerun resumes open batches.",
        ),
    ] = False,
) -> None:
    """Sample a study (resuming where it stopped), import its `responses:` files, analyze, report."""
    if verbose:
        os.environ["HIVEMIND_VERBOSE"] = "1"
    from hivemind.pipeline import SAMPLING_STEPS, STEPS, PipelineRun, run_pipeline

    def show(step: str, run: PipelineRun) -> None:
        if step == "sample":
            for outcome in run.imports or []:
                console.print(
                    f"[green]responses[/] {outcome.file}: "
                    + ("already imported (same sha256)" if outcome.skipped else f"imported {outcome.imported}"),
                    markup=True,
                )
        elif step == "export" and run.sampling is not None:
            _sampled(run.study_run())
        elif step == "analyze" and run.analysis is not None:
            _print_analysis(run.analysis)
        elif step == "report":
            console.print(f"[bold green]report:[/] {run.report_path}")

    study_spec = _spec_or_stored(spec, store)
    if batch:
        study_spec = study_spec.model_copy(update={"batch": True})
    if study_spec.budget_usd is not None and not over_budget:  # priced before the first request
        from hivemind.sampling.plan import over_budget_line, plan_study

        line = over_budget_line(plan_study(study_spec, store))
        if line:
            fail(f"{line}; see `hivemind plan`, or pass --over-budget (budget_usd still stops it once spent)")
    with _open_executor(executor, ray_address) as opened:
        run_pipeline(
            study_spec,
            store,
            steps=STEPS if analyze else SAMPLING_STEPS,
            progress=progress,
            executor=opened,
            after_step=show,
            replace=replace,
            **({"embedder": embedder} if embedder else {}),
        )


def _spec_or_stored(spec: Path, store: Path) -> StudySpec:
    """A spec file, or, when no such file exists, the spec of the study of that name in the store
    (a store resumes from itself: its deployments and queries are kept in it)."""
    from hivemind.layout import StoreLayout
    from hivemind.store.journal import Store
    from hivemind.study import load_spec

    if spec.exists() or not StoreLayout(store).exists():
        return load_spec(spec)
    with Store(store) as opened:
        names = opened.studies()
        if str(spec) in names:
            console.print(f"resuming study {str(spec)!r} from {store}")
            return opened.study_spec(str(spec))
    fail(f"{spec} is neither a spec file nor a study in {store} (its studies: {', '.join(names) or 'none'})")


def _sampled(run: StudyRun) -> None:
    """One line on what sampling did, one on where the samples are."""
    report = run.sampling
    console.print(
        f"[green]sampled[/] {report.sampled} now, {report.skipped} already in the store; "
        f"{sum(report.failed.values())} errors; {report.retries} retries; "
        f"${report.cost_usd:.4f}" + (" [yellow](stopped: budget reached)[/]" if report.stopped_by_budget else "")
    )
    console.print(f"samples: {run.samples_path}")


def _print_analysis(outputs: AnalysisOutputs) -> None:
    """Where the analysis went, after its warnings (e.g. many truncated responses)."""
    for warning in outputs.typed_summary.warnings:
        console.print(f"[yellow]warning:[/] {warning}")
    console.print(f"analysis: {outputs.directory}")


StudyOption = Annotated[str | None, typer.Option(help="Study name (default: the latest in the store).")]
StoreArgument = Annotated[Path, typer.Argument(help="Study store directory.")]


@app.command()
def analyze(
    store: StoreArgument,
    study: StudyOption = None,
    complete_only: Annotated[
        bool | None,
        typer.Option(
            "--complete-only/--all-responses",
            help="Leave out responses cut off at max_tokens (finish reason 'length'), or keep them "
            "(default: the spec's analysis.complete_only).",
        ),
    ] = None,
    answer_checker: Annotated[
        str | None,
        typer.Option(
            help="How verifiable answers are judged: final, exact, numeric[:TOLERANCE], regex or "
            "module:function (default: the spec's analysis.answer_checker)."
        ),
    ] = None,
    executor: ExecutorOption = "local",
    ray_address: RayAddressOption = None,
    embedder: EmbedderOption = None,
    zoo: Annotated[
        Path | None,
        typer.Option("--zoo", help="Zoo file whose `embedders:` --embedder names (default: the study's zoo)."),
    ] = None,
) -> None:
    """Embed every response, index it, and write the analysis tables and JSON summary."""
    from hivemind.pipeline import analyze_store

    require_store(store)
    with _open_executor(executor, ray_address) as opened:
        _print_analysis(
            analyze_store(
                store,
                study,
                embedder,
                complete_only=complete_only,
                answer_checker=answer_checker,
                executor=opened,
                zoo=zoo,
            )
        )


@app.command()
def report(store: StoreArgument, study: StudyOption = None) -> None:
    """Write the self-contained HTML report (analyzing first if needed)."""
    from hivemind.pipeline import write_report

    console.print(f"[bold green]report:[/] {write_report(require_store(store), study)}")


@app.command()
def status(store: StoreOption = Path("hivemind-store")) -> None:
    """Samples per deployment for every study in a store."""
    from hivemind.store.batches import BatchJournal
    from hivemind.store.journal import Store

    with Store(require_store(store)) as db:
        table = Table("study", "deployment", "ok", "failed", "cost $")
        for study in db.studies():
            cost = db.total_cost(study)
            for deployment, counts in sorted(db.progress(study).items()):
                table.add_row(study, deployment, str(counts["ok"]), str(counts["failed"]), f"{cost:.4f}")
        Console().print(table)
        batches = BatchJournal.open_in(db)
        if batches:  # submitted work the provider still holds: a rerun of the study collects it
            table = Table("open batch", "study", "deployment", "state", "provider's status", "requests", "age")
            for b in batches:
                age = b["age_s"]
                shown = f"{age / 3600:.1f} h" if age >= 3600 else f"{age / 60:.0f} min" if age >= 60 else f"{age:.0f} s"
                remote = b["remote_id"] or "(not created yet)"
                row = (b["study"], b["deployment"], b["state"], b["remote_status"] or "", str(b["items"]), shown)
                table.add_row(f"{b['protocol']} {remote}", *row)
            Console().print(table)
            Console().print("rerun the study (`hivemind run SPEC`) to collect them; nothing is submitted twice")


@app.command()
def plan(
    spec: Annotated[Path, typer.Argument(help="Study spec (YAML or JSON), or the name of a study in --store.")],
    store: StoreOption = Path("hivemind-store"),
    as_json: Annotated[bool, typer.Option("--json", help="Print the plan as JSON (`rows` and `total`).")] = False,
    batch: Annotated[bool, typer.Option("--batch", help="Plan it as `hivemind run --batch` would run it.")] = False,
) -> None:
    """What a study will send and may cost (from litellm's price map), before any request."""
    import json

    from hivemind.sampling.plan import over_budget_line, plan_study

    study_spec = _spec_or_stored(spec, store)
    planned = plan_study(study_spec.model_copy(update={"batch": True}) if batch else study_spec, store)
    if as_json:
        print(json.dumps(planned, indent=2))
        return
    table = Table(
        "deployment", "condition", "requests", "prompt tok", "completion tok max", "cost $ max", "batch $", "time"
    )  # fmt: skip
    for row in planned["rows"]:
        prompt = f"{row['prompt_tokens']}{'~' if row['prompt_tokens_estimated'] else ''}"
        completion = "?" if row["completion_tokens_max"] is None else str(row["completion_tokens_max"])
        wall = "batch, <= 24 h" if row["batch"] else _duration(row["min_wall_s"])
        table.add_row(
            row["deployment"], row["condition"], str(row["requests"]), prompt, completion,
            _money(row["cost_usd_max"]), _money(row["cost_usd_batch_max"]), wall,
        )  # fmt: skip
    Console().print(table)
    total = planned["total"]
    console.print(
        f"total: {total['requests']} requests to send, "
        + ("cost unknown" if total["cost_usd_run_max"] is None else f"at most ${_money(total['cost_usd_run_max'])}")
        + (" (batched deployments at the batch price)" if any(r["batch"] for r in planned["rows"]) else "")
        + (f", {_duration(total['min_wall_s'])} under the zoo's rpm/tpm" if total["min_wall_s"] else "")
        + (f" (unpriced: {', '.join(total['unpriced'])})" if total["unpriced"] else "")
        + (" [dim](~ prompt tokens estimated: litellm does not know the tokenizer)[/]" if total["prompt_tokens_estimated"] else "")
    )  # fmt: skip
    judge = planned.get("judge")
    if judge:
        console.print(
            f"judge {judge['deployment']}: at most {judge['calls_max']} calls over {judge['groups']} groups "
            f"(n (n - 1) / 2 per group of n, before the cache), cost {'unknown' if judge['cost_usd_max'] is None else 'at most $' + _money(judge['cost_usd_max'])}",
            highlight=False,
        )
    embedding = planned.get("embedding") or {}
    if embedding.get("remote"):
        cost = embedding["cost_usd_max"]
        console.print(
            f"embedder {embedding['embedder']} ({embedding['model']}): at most {embedding['tokens_max']} tokens "
            f"(every new answer at max_tokens; cached ones send nothing), cost "
            + ("unknown" if cost is None else f"at most ${_money(cost)}"),
            highlight=False,
        )
    line = over_budget_line(planned)
    if line:
        console.print(f"[yellow]over budget:[/] {line}; `hivemind run` needs --over-budget", highlight=False)


def _duration(seconds: float | None) -> str:
    """A lower bound on wall time, or '' where no rate limit bounds it."""
    if seconds is None:
        return ""
    return (
        f">= {seconds / 3600:.1f} h"
        if seconds >= 3600
        else f">= {seconds / 60:.1f} min"
        if seconds >= 60
        else f">= {seconds:.0f} s"
    )


def _money(value: float | None) -> str:
    return "?" if value is None else f"{value:.4f}"


@app.command()
def export(
    store: StoreOption = Path("hivemind-store"),
    study: Annotated[str | None, typer.Option(help="Study name (default: every study).")] = None,
) -> None:
    """Write each study's samples to Parquet."""
    from hivemind.store.journal import Store

    with Store(require_store(store)) as db:
        for name in [study] if study else db.studies():
            db.study_spec(name)  # a clear error for an unknown study
            print(db.export_parquet(name))


@zoo_app.command("list")
def zoo_list(zoo: ZooOption = None) -> None:
    """Show every deployment of the zoo."""
    from hivemind.inputs.zoo import load_zoo

    loaded = load_zoo(zoo)
    table = Table("name", "provider", "model", "family/stage", "concurrency", "key variable", "enabled")
    for d in loaded.deployments:
        lineage = "/".join(x for x in (d.family, d.stage) if x) or "-"
        table.add_row(
            d.name,
            d.provider,
            d.model,
            lineage,
            str(d.max_concurrency),
            d.api_key_env or "-",
            "yes" if d.enabled else "no",
        )
    Console().print(table)
    if loaded.embedders:
        embedders = Table("embedder", "provider", "model", "dimensions", "endpoint", "key variable")
        for e in loaded.embedders:
            embedders.add_row(e.name, e.provider, e.model, str(e.dimensions or "-"), e.endpoint(), e.api_key_env or "-")
        Console().print(embedders)


@zoo_app.command("check")
def zoo_check(
    names: Annotated[list[str] | None, typer.Argument(help="Deployments (default: enabled ones).")] = None,
    zoo: ZooOption = None,
) -> None:
    """Send one short request to each deployment and report whether it answers."""
    from hivemind.inputs.zoo import load_zoo
    from hivemind.sampling.zoo_check import check_deployments

    deployments = load_zoo(zoo).select(names or None)
    results = check_deployments(deployments)
    table = Table("deployment", "status", "latency s", "answer / error")
    for result in results:
        table.add_row(
            result.name,
            "[green]ok[/]" if result.ok else "[red]failed[/]",
            f"{result.latency_s:.2f}",
            result.detail[:80],
        )
    Console().print(table)
    if not all(r.ok for r in results):
        raise typer.Exit(code=1)


from hivemind.cli.service import scan_app, serve  # noqa: E402 (service and scan doors)

app.command()(serve)
app.add_typer(scan_app, name="scan")

from hivemind.cli.imports import import_file, init  # noqa: E402 (bring your own responses; starter files)

app.command("import")(import_file)
app.command()(init)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()

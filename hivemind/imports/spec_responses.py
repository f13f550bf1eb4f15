"""A spec's `responses:` section: files of released answers imported before the analysis.

Each `ResponseSource` (file, deployment, condition, reference, column mapping) goes through
`hivemind.imports.importer.import_responses`, idempotently by the file's sha256: a file already in
the study is not imported again; a different file for a (deployment, condition) the study
already holds is refused unless `replace`. After the imports the stored spec is the YAML's
with the imported deployments, conditions and reference arms added, so sampled and imported
deployments can share one study.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hivemind.imports.importer import Columns, file_sha256, import_responses
from hivemind.inputs.spec import Condition, ResponseSource, StudySpec
from hivemind.store.journal import Store, StoreError

PACKAGE_PREFIX = "package:"
"""`file: package:noveltybench-gpt4o/gpt-4o.jsonl` names a file shipped in `hivemind/data/`."""


@dataclass
class SourceOutcome:
    """What one `responses:` entry did: imported (with the import's summary) or already there."""

    file: str
    sha256: str
    imported: int
    skipped: bool
    summary: dict[str, Any] | None = None


def resolve_source(file: str, base: Path | None = None) -> Path:
    """The path of a `responses:` file: `package:NAME` in the shipped data, else relative to `base`."""
    if file.startswith(PACKAGE_PREFIX):
        from hivemind.inputs.queries import SHIPPED_DIR

        return SHIPPED_DIR / file[len(PACKAGE_PREFIX) :]
    path = Path(file)
    if not path.is_absolute() and base is not None and (base / path).exists():
        return base / path
    return path


def _held(store: Store, study: str, digest: str) -> list[tuple[str, str]]:
    rows = store._rows(
        "SELECT DISTINCT deployment, condition FROM imported_samples WHERE study = ? AND source_sha256 = ?",
        (study, digest),
    )
    return [(r[0], r[1]) for r in rows]


def _arm_sources(store: Store, study: str, deployment: str, condition: str) -> set[str]:
    rows = store._rows(
        "SELECT DISTINCT source_sha256 FROM imported_samples WHERE study = ? AND deployment = ? AND condition = ?",
        (study, deployment, condition),
    )
    return {r[0] for r in rows}


def import_spec_responses(spec: StudySpec, store: Store, *, replace: bool = False) -> list[SourceOutcome]:
    """Import every `responses:` file of `spec` that the study does not hold yet; then store the
    spec with the imported deployments, conditions and references added. Returns one outcome per file."""
    outcomes: list[SourceOutcome] = []
    imported: list[tuple[str, str, bool]] = []  # (deployment, condition, reference)
    for number, source in enumerate(spec.responses):
        path = resolve_source(source.file)
        if not path.is_file():
            raise StoreError(f"responses[{number}].file: no such file {str(path)!r}")
        digest = file_sha256(path)
        already = _held(store, spec.name, digest) if spec.name in store.studies() else []
        if already:
            outcomes.append(SourceOutcome(source.file, digest, 0, True))
            imported += [(d, c, source.reference) for d, c in already]
            continue
        condition = source.condition or _default_condition(spec)
        if source.deployment and not replace and spec.name in store.studies():
            other = _arm_sources(store, spec.name, source.deployment, condition)
            if other:
                raise StoreError(
                    f"responses[{number}]: {source.file} changed since it was imported as deployment "
                    f"{source.deployment!r}, condition {condition!r} (sha256 {digest[:12]} vs "
                    f"{sorted(other)[0][:12]}); run with --replace to import it again"
                )
        result = _import(spec, store, source, path, condition, replace)
        outcomes.append(SourceOutcome(source.file, digest, result.imported, False, result.summary()))
        imported += [(d, c, source.reference) for d in result.deployments for c in result.conditions]
    _store_merged(spec, store, imported)
    return outcomes


def _default_condition(spec: StudySpec) -> str:
    return spec.effective_conditions()[0].name


def _import(spec: StudySpec, store: Store, source: ResponseSource, path: Path, condition: str, replace: bool) -> Any:
    new_study = spec.name not in store.studies()
    return import_responses(
        path,
        spec.name,
        store,
        columns=Columns(**source.columns),
        deployment=source.deployment,
        query_set=spec.query_set if new_study else None,
        condition=condition,
        on_unmatched=source.on_unmatched,
        replace=replace,
        source_name=source.file,
        reference=source.reference,
    )


def _store_merged(spec: StudySpec, store: Store, imported: list[tuple[str, str, bool]]) -> None:
    """The YAML's spec, plus what the imports brought, as the study's stored spec."""
    stored = store.study_spec(spec.name)
    deployments = list(spec.deployments)
    deployments += [d for d in stored.deployments if d not in deployments]
    names = [c.name for c in spec.conditions]
    conditions = list(spec.conditions)
    if not conditions and spec.deployments:  # sampled deployments answer under the implicit default
        conditions, names = [Condition(name="default")], ["default"]
    for condition in [c for _, c, _ in imported] + [c.name for c in stored.conditions]:
        if condition not in names:
            names.append(condition)
            conditions.append(Condition(name=condition))
    references = list(dict.fromkeys([*spec.references, *stored.references, *(d for d, _, r in imported if r)]))
    merged = spec.model_copy(
        update={
            "deployments": deployments,
            "conditions": [] if names == ["default"] else conditions,
            "references": references,
        }
    )
    StudySpec.model_validate(merged.model_dump())  # a merged spec that would not load again is an error here
    with store.transaction() as db:
        db.execute("UPDATE studies SET spec_json = ? WHERE name = ?", (merged.model_dump_json(), spec.name))

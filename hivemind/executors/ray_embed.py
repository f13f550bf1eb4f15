"""Embedding with Ray Data: the batches `Embedder.encode_ids` would run, run by actors.

The driver still tokenizes, chunks, deduplicates and reads/writes the embedding cache
(`hivemind.vectors.embed.embed_texts` is unchanged); only the forward passes move. Batches are cut
exactly as in one process (all chunks sorted longest first, `batch_size` per batch), so every
actor sees the same padded tensors the single process would, and each returns its rows already
normalised, as `encode_ids` does.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from hivemind.vectors.embed import Embedder


class BatchEmbedder:
    """A Ray Data callable class: loads the model once per actor, embeds one batch per row."""

    def __init__(self, model: str, device: str, batch_size: int, chunk_overlap: int, threads: int | None) -> None:
        if threads:
            import torch

            torch.set_num_threads(threads)  # the driver's count: same kernels, same bits
        self.embedder = Embedder(
            model, device=device, batch_size=batch_size, chunk_overlap=chunk_overlap, progress=False
        )

    def __call__(self, rows: dict[str, Any]) -> dict[str, Any]:
        vectors = []
        for flat, lengths in zip(rows["ids"], rows["lengths"]):
            inputs = np.split(np.asarray(flat, dtype=np.int64), np.cumsum(lengths)[:-1])
            vectors.append(self.embedder.encode_ids([x.tolist() for x in inputs]).tobytes())
        return {"batch": np.asarray(rows["batch"]), "vectors": np.asarray(vectors, dtype=object)}


class RayEmbedder(Embedder):
    """An `Embedder` whose forward passes run on Ray Data actors (same id, same cache rows)."""

    def __init__(self, base: Embedder, concurrency: int, threads: int | None = None) -> None:
        self.__dict__.update(base.__dict__)  # same model, id and settings; the model stays loaded here
        self.base = base
        self.concurrency = max(1, concurrency)
        self.threads = threads
        """torch threads per actor: the driver's count gives the driver's bits (on the same CPUs);
        None leaves Ray's one per CPU (faster when CPUs are few; last-bit differences)."""

    def encode(self, texts: Sequence[str], progress: bool | None = None) -> np.ndarray:
        out = super().encode(texts, progress)
        self.base.texts_encoded += len(texts)  # the caller's embedder counts what was embedded
        return out

    def encode_ids(self, inputs: Sequence[Sequence[int]], progress: bool = False) -> np.ndarray:
        import logging

        import ray.data

        logging.getLogger("ray.data").setLevel(logging.WARNING)  # no per-second progress lines
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False
        context.enable_operator_progress_bars = False
        order = np.argsort([-len(x) for x in inputs], kind="stable")
        batches = [order[i : i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        if len(batches) < 2 or self.concurrency < 2:
            return super().encode_ids(inputs, progress)
        too_long = [len(x) for x in inputs if len(x) > self.max_tokens]
        if too_long:
            raise ValueError(f"input of {max(too_long)} ids exceeds {self.max_tokens}")
        items = [
            {
                "batch": b,
                "ids": np.concatenate([np.asarray(inputs[i], np.int64) for i in batch]),
                "lengths": np.asarray([len(inputs[i]) for i in batch], np.int64),
            }
            for b, batch in enumerate(batches)
        ]
        # Ray hides GPUs from actors that do not ask for one: a CUDA embedder asks for one each
        gpus = int(ray.cluster_resources().get("GPU", 0)) if self.device.startswith("cuda") else 0
        resources = {"num_gpus": 1} if gpus else {"num_cpus": 1}
        dataset = ray.data.from_items(items).map_batches(
            BatchEmbedder,
            batch_size=1,
            concurrency=min(gpus or self.concurrency, len(batches)),
            **resources,
            fn_constructor_args=(
                f"{self.model_path}:{self.precision}",  # the actors run at the study's precision
                "cuda" if gpus else "cpu",
                self.batch_size,
                self.chunk_overlap,
                None if gpus else self.threads,
            ),
        )
        out = np.zeros((len(inputs), self.dim), dtype=np.float32)
        for row in dataset.iter_rows():
            batch = batches[int(row["batch"])]
            out[batch] = np.frombuffer(row["vectors"], dtype=np.float32).reshape(len(batch), -1)
        return out

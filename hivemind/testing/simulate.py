"""Simulated studies built straight from vectors, for calibration (bench/calibration.py, tests).

Every answer is a unit vector: a direction shared by all answers of the embedder (so answers
to different queries are not orthogonal: the random-pair baseline's floor), the query's topic,
the deployment's own take on that query and the sample's noise, each a Gaussian direction:

    v = common * g + topic * t_q + take_m * u_{q,m} + noise * e_{q,m,s},  then normalised

(plus, optionally, a theme shared by groups of queries: `Design.clusters`).

take_m = 0 for every m is the null: deployments that answer alike (gap 0, hivemind gap about
0 given the draws); a larger take makes a deployment more distinct. `missing` drops a
deployment from a random share of the queries (issue 26: the headline must stand on the queries
every deployment answered). The frame is `prepare_responses`' output, so the analysis functions
take it as they take a real study's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import polars as pl


@dataclass(frozen=True)
class Design:
    """What a simulated study looks like; `simulate` draws one."""

    queries: int = 40
    deployments: int = 4
    k: int = 4
    dim: int = 48
    common: float = 0.8
    topic: float = 1.0
    takes: tuple[float, ...] = (0.6, 0.6, 0.6, 0.6)
    """Per deployment: the weight of its own take (0 = answers like the others)."""
    noise: float = 0.9
    missing: dict[int, float] = field(default_factory=dict)
    """Deployment index -> share of queries it does not answer (chosen at random)."""
    clusters: int = 0
    """Queries fall at random into this many themes (0: none), each a direction of weight
    `theme` shared by every answer to its queries: answers to different queries then resemble
    each other more or less depending on which themes a query sample holds, i.e. a noisy
    random-pair baseline."""
    theme: float = 0.0

    def __post_init__(self) -> None:
        if len(self.takes) != self.deployments:
            raise ValueError(f"{len(self.takes)} takes for {self.deployments} deployments")


def null_design(**overrides: object) -> Design:
    """Deployments alike (every take 0): the gap's true value is 0."""
    deployments = int(overrides.get("deployments", Design.deployments))  # type: ignore[call-overload]
    return Design(**{**overrides, "takes": (0.0,) * deployments})  # type: ignore[arg-type]


def simulate_vectors(design: Design, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(vectors (n, dim) float32, query index, deployment index, sample index), one row per answer."""
    rng = np.random.default_rng(seed)
    Q, D, K, dim = design.queries, design.deployments, design.k, design.dim
    g = np.eye(dim)[0]  # one fixed direction: the embedder's, not the study's (a fixed truth)
    topics = rng.standard_normal((Q, 1, 1, dim)) / np.sqrt(dim)
    takes = rng.standard_normal((Q, D, 1, dim)) / np.sqrt(dim) * np.asarray(design.takes)[None, :, None, None]
    noise = rng.standard_normal((Q, D, K, dim)) / np.sqrt(dim)
    V = design.common * g + design.topic * topics + takes + design.noise * noise
    if design.clusters > 0:
        themes = rng.standard_normal((design.clusters, dim)) / np.sqrt(dim)
        V = V + design.theme * themes[rng.integers(0, design.clusters, Q)][:, None, None, :]
    present = np.ones((Q, D), dtype=bool)
    for dep, share in design.missing.items():
        present[rng.random(Q) < share, dep] = False
    q, m, s = np.meshgrid(np.arange(Q), np.arange(D), np.arange(K), indexing="ij")
    keep = np.broadcast_to(present[:, :, None], (Q, D, K)).reshape(-1)
    V = V.reshape(-1, dim)[keep]
    V /= np.linalg.norm(V, axis=1, keepdims=True)
    return V.astype(np.float32), q.reshape(-1)[keep], m.reshape(-1)[keep], s.reshape(-1)[keep]


def simulate(design: Design, seed: int) -> tuple[pl.DataFrame, np.ndarray]:
    """(responses, vectors): one simulated study, as `prepare_responses` returns it."""
    import polars as pl

    from hivemind.analysis.data import prepare_responses

    V, q, m, s = simulate_vectors(design, seed)
    names = [f"m{i}" for i in range(design.deployments)]
    frame = pl.DataFrame(
        {
            "query_id": [f"q{i:05d}" for i in q],
            "deployment": [names[i] for i in m],
            "condition": ["default"] * q.size,
            "sample_index": s.astype(np.int64),
            "text": [f"answer {i}" for i in range(q.size)],
            "category": ["sim"] * q.size,
        }
    )
    responses, _ = prepare_responses(frame, deployment_order=names)
    # prepare_responses sorts by query, deployment, sample: the order simulate_vectors made
    return responses, V

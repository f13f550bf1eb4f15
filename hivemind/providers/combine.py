"""Next-token arithmetic for composite deployments: combine logits, then sample (pure numpy).

Forms, each over components that share one tokenizer (z = a component's next-token logits):

    contrastive     z_expert - beta * z_amateur, restricted to the expert's plausible tokens
                    (p_expert >= alpha * max p_expert)                       Li et al. 2023
    proxy_tuning    z_base + alpha * (z_tuned - z_untuned)                   Liu et al. 2024
    logit_ensemble  sum_i w_i z_i / sum_i w_i
    prob_ensemble   log(sum_i w_i softmax(z_i) / sum_i w_i)

Sampling follows llama.cpp's order (top-k, top-p, min-p on the combined scores, then temperature)
so that a composite with a zero coefficient samples from the same distribution as its large
model alone; temperature 0 is greedy. Randomness comes only from the `Generator` passed in,
seeded by the sample's own seed.

Diversity-guided decoding (optional) rescores the top-k tokens by a novelty reward: 1 - the
largest cosine between the partial response with that token and the responses already sampled
for the same query.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

FORMS: dict[str, tuple[str, ...]] = {
    "contrastive": ("expert", "amateur"),
    "proxy_tuning": ("base", "tuned", "untuned"),
    "logit_ensemble": ("member",),
    "prob_ensemble": ("member",),
}
"""Each form and the roles its components may take."""

NEG_INF = -np.inf


def log_softmax(z: np.ndarray) -> np.ndarray:
    """Numerically stable log-softmax of one row (-inf entries stay -inf)."""
    top = np.max(z)
    shifted = z - top
    return shifted - np.log(np.sum(np.exp(shifted)))


@dataclass(frozen=True)
class Recipe:
    """How to combine: the form, its coefficients, and each component's role and weight."""

    form: str
    roles: tuple[str, ...]
    weights: tuple[float, ...]
    alpha: float = 0.1
    """contrastive: plausibility fraction; proxy_tuning: strength of the tuned-untuned shift."""
    beta: float = 0.5
    """contrastive: weight of the amateur."""


def combine(recipe: Recipe, logits: Sequence[np.ndarray]) -> np.ndarray:
    """Combined next-token scores (log-space, -inf = excluded) from each component's logits."""
    rows = [np.asarray(z, dtype=np.float64) for z in logits]
    by_role: dict[str, np.ndarray] = {}
    for role, z in zip(recipe.roles, rows):
        by_role.setdefault(role, z)
    if recipe.form == "contrastive":
        expert, amateur = by_role["expert"], by_role["amateur"]
        scores = expert - recipe.beta * amateur
        log_p = log_softmax(expert)
        return np.where(log_p >= np.log(recipe.alpha) + np.max(log_p), scores, NEG_INF)
    if recipe.form == "proxy_tuning":
        return by_role["base"] + recipe.alpha * (by_role["tuned"] - by_role["untuned"])
    weights = np.asarray(recipe.weights, dtype=np.float64)
    if recipe.form == "logit_ensemble":
        return sum(w * z for w, z in zip(weights, rows)) / weights.sum()
    if recipe.form == "prob_ensemble":
        with np.errstate(divide="ignore"):
            mixed = sum(w * np.exp(log_softmax(z)) for w, z in zip(weights, rows)) / weights.sum()
            return np.log(mixed)
    raise ValueError(f"unknown form {recipe.form!r} (known: {', '.join(FORMS)})")


@dataclass(frozen=True)
class Sampling:
    """The study's decoding parameters, with llama-cpp-python's chat defaults for unset ones."""

    temperature: float = 0.2
    top_p: float = 0.95
    min_p: float = 0.05
    top_k: int = 40
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0


def penalise(scores: np.ndarray, generated: Sequence[int], sampling: Sampling) -> np.ndarray:
    """OpenAI-style presence / frequency penalties over the tokens generated so far."""
    if not generated or (sampling.presence_penalty == 0 and sampling.frequency_penalty == 0):
        return scores
    ids, counts = np.unique(np.asarray(generated), return_counts=True)
    out = scores.copy()
    out[ids] -= sampling.presence_penalty + sampling.frequency_penalty * counts
    return out


def sample_token(scores: np.ndarray, sampling: Sampling, rng: np.random.Generator) -> int:
    """One token id from combined scores: greedy at temperature 0, else top-k/top-p/min-p/temp."""
    if sampling.temperature <= 0:
        return int(np.argmax(scores))
    finite = np.flatnonzero(np.isfinite(scores))
    if finite.size == 0:
        raise ValueError("every token was excluded: nothing to sample")
    candidates = finite
    if 0 < sampling.top_k < candidates.size:
        candidates = candidates[np.argpartition(-scores[candidates], sampling.top_k - 1)[: sampling.top_k]]
    candidates = candidates[np.argsort(-scores[candidates], kind="stable")]
    logp = log_softmax(scores[candidates])
    if sampling.top_p < 1.0:
        mass = np.cumsum(np.exp(logp))
        keep = int(np.searchsorted(mass, sampling.top_p)) + 1  # smallest prefix reaching top_p
        candidates, logp = candidates[:keep], logp[:keep]
    if sampling.min_p > 0.0:
        keep_mask = logp >= np.log(sampling.min_p) + logp[0]
        candidates, logp = candidates[keep_mask], logp[keep_mask]
    logits = scores[candidates] / sampling.temperature
    probs = np.exp(logits - logits.max())
    cumulative = np.cumsum(probs)
    index = int(np.searchsorted(cumulative, rng.random() * cumulative[-1], side="right"))
    return int(candidates[min(index, candidates.size - 1)])


def novelty_rewards(candidates: np.ndarray, previous: np.ndarray) -> np.ndarray:
    """1 - max cosine of each candidate's (unit) vector to the (unit) vectors already sampled."""
    if previous.size == 0:
        return np.zeros(len(candidates))
    return 1.0 - np.max(np.asarray(candidates, dtype=np.float64) @ np.asarray(previous, dtype=np.float64).T, axis=1)


def rescore_top_k(
    scores: np.ndarray, k: int, rewards_of: Callable[[np.ndarray], np.ndarray], weight: float
) -> np.ndarray:
    """ARGS-style step (Khanov et al. 2024): only the top-k tokens stay, scored logit + weight * reward."""
    finite = np.flatnonzero(np.isfinite(scores))
    top = finite[np.argsort(-scores[finite], kind="stable")[:k]]
    out = np.full_like(scores, NEG_INF)
    out[top] = scores[top] + weight * rewards_of(top)
    return out

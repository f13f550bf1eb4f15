"""Prices from litellm's bundled price map (never fetched): what a model's tokens cost, live and
at the batch price. `hivemind plan` prices a study before it runs; batch sampling records each
row at the batch price."""

from __future__ import annotations

import os
from typing import Any


def litellm_offline() -> Any:
    """litellm, reading its bundled cost map (no network)."""
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import litellm

    litellm.suppress_debug_info = True
    return litellm


def model_info(model: str) -> dict[str, Any] | None:
    """litellm's price-map entry for `model` (with or without its provider prefix), else None."""
    litellm = litellm_offline()
    try:
        return dict(litellm.get_model_info(model))
    except Exception:  # litellm raises its own "not mapped" errors, of several kinds
        return None


def token_cost(prompt: int, completion: int | None, info: dict[str, Any] | None, suffix: str = "") -> float | None:
    """Dollars for `prompt` + `completion` tokens at the map's price (`suffix` "_batches": the batch
    price), or None where the map has no such price."""
    if info is None or completion is None:
        return None
    per_in, per_out = info.get(f"input_cost_per_token{suffix}"), info.get(f"output_cost_per_token{suffix}")
    if per_in is None or per_out is None:
        return None
    return float(prompt * per_in + completion * per_out)

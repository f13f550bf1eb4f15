"""Hosted models (OpenAI, Anthropic, Gemini, OpenRouter, Together, ...) through litellm.

litellm is imported on first use only: it costs seconds at import and `hivemind --help` must
stay fast; it is imported with its bundled cost map, so importing it reaches for no network.
litellm's own retries are off so the sampler's single retry policy applies, and it never drops
a parameter on its own: `unsupported_params` tells the study beforehand what a model would not
honour, the study stops on it unless the condition allows dropping it, and only then is it left
out of the request (and recorded with the row).
"""

from __future__ import annotations

import os
from typing import Any

from hivemind.inputs.samples import Completion, SampleRequest
from hivemind.inputs.spec import Deployment, canonical_json
from hivemind.providers.base import (
    RETRYABLE_STATUS,
    Provider,
    ProviderError,
    parse_retry_after,
    register,
)

# Sampling parameters outside OpenAI's schema go to the provider as they are, so whether they
# work depends on the provider behind litellm: these honour them; every other provider (OpenAI
# first) is taken to reject them, unless litellm lists them among the model's parameters.
PROVIDER_SPECIFIC: dict[str, frozenset[str]] = {
    "anthropic": frozenset({"top_k"}),
    "gemini": frozenset({"top_k"}),
    "vertex_ai": frozenset({"top_k"}),
    "hosted_vllm": frozenset({"min_p", "top_k"}),
    "openrouter": frozenset({"min_p", "top_k"}),
    "together_ai": frozenset({"min_p", "top_k"}),
}


def _import_litellm() -> Any:
    # Without this, every import tries three times to fetch litellm's remote cost map (and warns
    # when offline). Setting the variable yourself, e.g. to False, still wins.
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import litellm

    litellm.suppress_debug_info = True
    litellm.telemetry = False
    return litellm


@register("litellm")
class LiteLLMProvider(Provider):
    """`model` is a litellm model string such as `openai/gpt-4o-mini` or `anthropic/claude-...`.

    For an OpenAI-compatible server that takes `min_p`/`top_k` (vLLM, llama.cpp server), use
    litellm's `hosted_vllm/` prefix or `provider: openai`, which sends every parameter.
    """

    def __init__(self, deployment: Deployment) -> None:
        super().__init__(deployment)
        self._route: tuple[str, str, frozenset[str]] | None = None
        self._refused: dict[str, frozenset[str]] = {}

    def _routing(self) -> tuple[str, str, frozenset[str]]:
        """(model, litellm provider, parameters that model honours), worked out once."""
        if self._route is None:
            litellm = _import_litellm()
            try:
                model, provider, _, _ = litellm.get_llm_provider(
                    model=self.deployment.model, api_base=self.deployment.api_base
                )
            except Exception as exc:  # litellm.BadRequestError: no provider prefix it knows
                raise ValueError(
                    f"deployment {self.deployment.name!r}: litellm cannot route model "
                    f"{self.deployment.model!r} ({str(exc).splitlines()[0]})"
                ) from None
            listed = litellm.get_supported_openai_params(model=model, custom_llm_provider=provider) or []
            self._route = (model, provider, frozenset(listed) | PROVIDER_SPECIFIC.get(provider, frozenset()))
        return self._route

    def unsupported_params(self, params: dict[str, Any]) -> set[str]:
        """What litellm says this model does not take: by name, and by value for the ones it
        checks itself (e.g. reasoning models that take only temperature 1). Nothing is sent."""
        key = canonical_json(params)
        if key not in self._refused:
            litellm = _import_litellm()
            from litellm.utils import get_optional_params

            model, provider, supported = self._routing()
            refused = {name for name in params if name not in supported}
            for name in params.keys() - refused:  # one at a time, so each refusal has its name
                try:
                    get_optional_params(
                        model=model, custom_llm_provider=provider, drop_params=False, **{name: params[name]}
                    )
                except litellm.UnsupportedParamsError:
                    refused.add(name)
            self._refused[key] = frozenset(refused)
        return set(self._refused[key])

    async def generate(self, request: SampleRequest) -> Completion:
        litellm = _import_litellm()
        params = request.params.explicit()
        refused = self.unsupported_params(params) - set(request.dropped_params)
        if refused:  # only a caller that skipped the study's check gets here
            raise ProviderError(
                f"{self.deployment.model} does not honour {', '.join(sorted(refused))}; "
                "not sent (allow dropping it in the condition to sample without it)",
                retryable=False,
            )
        kwargs = {k: v for k, v in params.items() if k not in request.dropped_params}
        if "seed" in self._routing()[2]:  # providers without seeds vary between samples anyway
            kwargs["seed"] = request.seed
        try:
            response = await litellm.acompletion(
                model=self.deployment.model,
                messages=[m.model_dump() for m in request.messages],
                api_base=self.deployment.api_base,
                api_key=self.api_key() or ("none" if self.deployment.api_base else None),
                timeout=self.deployment.timeout_s,
                num_retries=0,
                drop_params=False,
                **kwargs,
            )
        except Exception as exc:  # litellm maps every provider's errors onto its own classes
            raise self._classify(exc) from None
        return self._completion(litellm, response)

    def _classify(self, exc: Exception) -> ProviderError:
        status = getattr(exc, "status_code", None)
        headers = getattr(getattr(exc, "response", None), "headers", None) or getattr(
            exc, "litellm_response_headers", None
        )
        retry_after = parse_retry_after(headers.get("retry-after")) if headers else None
        name = type(exc).__name__
        transient = name in {
            "Timeout",
            "APIConnectionError",
            "RateLimitError",
            "ServiceUnavailableError",
            "InternalServerError",
        }
        return ProviderError(
            f"{name}: {self.redact(str(exc))[:300]}",
            retryable=transient or status in RETRYABLE_STATUS,
            retry_after=retry_after,
            status=status if isinstance(status, int) else None,
        )

    def _completion(self, litellm: Any, response: Any) -> Completion:
        choices = getattr(response, "choices", None) or []
        if len(choices) < 1:
            raise ProviderError("response had no choices", retryable=True)
        usage = getattr(response, "usage", None)
        cost = (getattr(response, "_hidden_params", None) or {}).get("response_cost")
        if cost is None:
            try:
                cost = litellm.completion_cost(completion_response=response)
            except Exception:  # unknown price (local servers): cost stays unknown, not zero
                cost = None
        return Completion(
            text=choices[0].message.content or "",
            finish_reason=choices[0].finish_reason,
            prompt_tokens=getattr(usage, "prompt_tokens", None),
            completion_tokens=getattr(usage, "completion_tokens", None),
            cost_usd=cost,
            model=getattr(response, "model", None),
        )

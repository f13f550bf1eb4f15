"""Hosted models (OpenAI, Anthropic, Gemini, OpenRouter, Together, ...) through litellm.

litellm is imported on first use only: it costs seconds at import and `hivemind --help` must
stay fast. litellm's own retries are switched off so the sampler's single retry policy applies.
"""

from __future__ import annotations

from typing import Any

from hivemind.providers.base import (
    RETRYABLE_STATUS,
    Provider,
    ProviderError,
    parse_retry_after,
    register,
)
from hivemind.spec import Completion, SampleRequest

# OpenAI-schema parameters litellm maps per provider; the rest go in `extra_body`.
_STANDARD = {"temperature", "top_p", "max_tokens", "stop", "presence_penalty", "frequency_penalty"}


def _import_litellm() -> Any:
    import litellm

    litellm.suppress_debug_info = True
    litellm.telemetry = False
    return litellm


@register("litellm")
class LiteLLMProvider(Provider):
    """`model` is a litellm model string such as `openai/gpt-4o-mini` or `anthropic/claude-...`."""

    async def generate(self, request: SampleRequest) -> Completion:
        litellm = _import_litellm()
        params = request.params.explicit()
        kwargs: dict[str, Any] = {k: v for k, v in params.items() if k in _STANDARD}
        extra = {k: v for k, v in params.items() if k not in _STANDARD}
        if extra:
            kwargs["extra_body"] = extra
        try:
            response = await litellm.acompletion(
                model=self.deployment.model,
                messages=[m.model_dump() for m in request.messages],
                api_base=self.deployment.api_base,
                api_key=self.api_key() or ("none" if self.deployment.api_base else None),
                seed=request.seed,
                n=1,
                timeout=self.deployment.timeout_s,
                num_retries=0,
                drop_params=True,
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
        transient = name in {"Timeout", "APIConnectionError", "RateLimitError",
                             "ServiceUnavailableError", "InternalServerError"}
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

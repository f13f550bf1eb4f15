"""In-process GGUF models through llama-cpp-python, run off the event loop.

One `Llama` per (file, context size) per process, shared by every deployment that uses it
(conditions of one model reuse the loaded weights). Each model lives on its own worker thread:
it is loaded there and every call runs there, one at a time, while the event loop serves the
other deployments. The thread matters: llama.cpp called from a thread other than the one that
created the model ran 30% slower here (2 cores), so a shared pool would cost a third of the speed.

Options: the GGUF source (see `hivemind.providers.gguf`), plus
  mode: chat | completion   chat uses the file's template (or `chat_format`); completion renders
                            `prompt_template` (base models have no chat template)
  chat_format: NAME         llama-cpp-python chat format override (e.g. gemma)
  prompt_template: STR      completion mode; `{prompt}` is the user text, `{system}` the system one
  n_ctx: INT                context window (default 2048); n_threads: INT (default: all cores)
"""

from __future__ import annotations

import asyncio
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from hivemind.providers.base import Provider, ProviderError, register
from hivemind.providers.gguf import resolve_gguf
from hivemind.spec import Completion, Deployment, SampleRequest

DEFAULT_TEMPLATE = "{system}Question: {prompt}\nAnswer:"


@dataclass
class LoadedModel:
    """A loaded `Llama` and the single thread that owns it (loads it and runs every call)."""

    llama: Any
    thread: ThreadPoolExecutor


_MODELS: dict[tuple[str, int, str | None], LoadedModel] = {}
_MODELS_LOCK = threading.Lock()


def load_llama(path: str, n_ctx: int, chat_format: str | None, n_threads: int | None) -> LoadedModel:
    """Load (once per process) on the model's own thread and return it with that thread."""
    key = (path, n_ctx, chat_format)
    with _MODELS_LOCK:
        if key not in _MODELS:
            thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"llama-{os.path.basename(path)}")

            def load() -> Any:
                from llama_cpp import Llama

                return Llama(model_path=path, n_ctx=n_ctx, n_threads=n_threads or os.cpu_count(),
                             chat_format=chat_format, verbose=False)

            _MODELS[key] = LoadedModel(thread.submit(load).result(), thread)
        return _MODELS[key]


def sampling_kwargs(request: SampleRequest) -> dict[str, Any]:
    """llama-cpp-python's names for our parameters; its defaults fill what the study leaves unset."""
    params = request.params.explicit()
    kwargs: dict[str, Any] = {"seed": request.seed}
    for name in ("temperature", "top_p", "min_p", "top_k", "max_tokens", "stop",
                 "presence_penalty", "frequency_penalty"):
        if name in params:
            kwargs[name] = params[name]
    kwargs.setdefault("max_tokens", 256)
    return kwargs


def render_prompt(request: SampleRequest, template: str) -> str:
    """Plain-completion prompt for base models: system text (if any) then the question."""
    system = "\n".join(m.content for m in request.messages if m.role == "system")
    user = "\n".join(m.content for m in request.messages if m.role == "user")
    return template.format(prompt=user, system=f"{system}\n\n" if system else "")


@register("llamacpp")
class LlamaCppProvider(Provider):
    """A GGUF model loaded in this process."""

    cancellable = False  # generation is bounded by max_tokens, not by a timeout

    def __init__(self, deployment: Deployment) -> None:
        super().__init__(deployment)
        mode = deployment.options.get("mode", "chat")
        if mode not in {"chat", "completion"}:
            raise ValueError(f"deployment {deployment.name!r}: options.mode must be chat or completion")
        self.mode: str = mode

    def check_ready(self) -> None:
        super().check_ready()
        resolve_gguf(self.deployment.options, f"deployment {self.deployment.name!r}")

    def max_connections(self) -> int:
        return 1  # one model, one decode at a time; parallelism comes from other deployments

    def _model(self) -> LoadedModel:
        options = self.deployment.options
        path = resolve_gguf(options, f"deployment {self.deployment.name!r}")
        return load_llama(str(path), int(options.get("n_ctx", 2048)),
                          options.get("chat_format"), options.get("n_threads"))

    def _generate_sync(self, model: Any, request: SampleRequest) -> Completion:
        """Runs on the model's own thread."""
        kwargs = sampling_kwargs(request)
        if self.mode == "chat":
            out = model.create_chat_completion(
                messages=[m.model_dump() for m in request.messages], **kwargs
            )
            choice = out["choices"][0]
            text = choice["message"].get("content") or ""
        else:
            template = self.deployment.options.get("prompt_template", DEFAULT_TEMPLATE)
            out = model.create_completion(render_prompt(request, template), **kwargs)
            choice = out["choices"][0]
            text = choice.get("text") or ""
        usage = out.get("usage") or {}
        return Completion(
            text=text.strip(),
            finish_reason=choice.get("finish_reason"),
            prompt_tokens=usage.get("prompt_tokens"),
            completion_tokens=usage.get("completion_tokens"),
            cost_usd=0.0,
            model=self.deployment.model,
        )

    async def generate(self, request: SampleRequest) -> Completion:
        try:
            loaded = await asyncio.to_thread(self._model)  # first call loads (seconds)
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(loaded.thread, self._generate_sync, loaded.llama, request)
        except (ValueError, RuntimeError) as exc:  # e.g. prompt longer than n_ctx: not transient
            raise ProviderError(f"{type(exc).__name__}: {exc}", retryable=False) from None

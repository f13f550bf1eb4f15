"""Local GGUF models through llama-cpp-python, each in a worker process of its own.

The model loads and generates in a worker (`hivemind.providers.worker`): a native crash there
(segfault, abort, out-of-memory kill) becomes error rows naming the deployment and the signal,
while the other deployments go on. Deployments with the same model settings share one worker
(conditions of one model reuse the loaded weights). In the worker, load and generation run on its
main thread: llama.cpp called from another thread than the one that created the model ran 30%
slower here (2 cores).

llama.cpp repacks weights into extra buffer types (AMX, ...) at load when the CPU offers them; on
AMX machines the first decode on repacked weights segfaults (ggml-org/llama.cpp issue 20824), so
repacking is off unless a deployment turns it on.

Options: the GGUF source (see `hivemind.providers.gguf`), plus
  mode: chat | completion   chat uses the file's template (or `chat_format`); completion renders
                            `prompt_template` (base models have no chat template)
  chat_format: NAME         llama-cpp-python chat format override (e.g. gemma)
  prompt_template: STR      completion mode; `{prompt}` is the user text, `{system}` the system one
  n_ctx: INT                context window (default 2048); n_threads: INT (default: all cores)
  weight_repacking: BOOL    let llama.cpp repack weights for the CPU's extra buffer types (default
                            false: faster on some CPUs, but segfaults on AMX ones)
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from hivemind.inputs.samples import Completion, SampleRequest
from hivemind.inputs.spec import Deployment
from hivemind.providers.base import register, require_module
from hivemind.providers.gguf import resolve_gguf
from hivemind.providers.worker import WorkerProvider

DEFAULT_TEMPLATE = "{system}Question: {prompt}\nAnswer:"
ENGINE = "hivemind.providers.llamacpp:llama_engine"


def set_weight_repacking(enabled: bool) -> Callable[[], None]:
    """Make every `Llama` loaded from now on in this process use (or skip) llama.cpp's extra
    buffer types, i.e. weight repacking; returns a function that undoes it.

    `Llama(...)` has no argument for `use_extra_bufts` (llama-cpp-python 0.3.36): it builds its
    model parameters from `llama_cpp.llama_cpp.llama_model_default_params()` and loads the model
    in the constructor, so the only hook is that function, wrapped here.
    """
    import llama_cpp.llama_cpp as lib

    original = lib.llama_model_default_params
    if not hasattr(lib.llama_model_params, "use_extra_bufts"):
        raise RuntimeError(
            "this llama-cpp-python has no use_extra_bufts model parameter "
            f"(version {getattr(__import__('llama_cpp'), '__version__', '?')}); "
            "upgrade to 0.3.36 or later"
        )

    def default_params() -> Any:
        params = original()
        params.use_extra_bufts = enabled
        return params

    lib.llama_model_default_params = default_params

    def undo() -> None:
        lib.llama_model_default_params = original

    return undo


_LOADING = threading.Lock()


@contextmanager
def extra_buffer_types(enabled: bool) -> Iterator[None]:
    """`set_weight_repacking` for the models loaded inside the block only (one block at a time:
    the setting is process-wide while it lasts)."""
    with _LOADING:
        undo = set_weight_repacking(enabled)
        try:
            yield
        finally:
            undo()


def open_llama(
    path: str,
    *,
    n_ctx: int = 2048,
    chat_format: str | None = None,
    n_threads: int | None = None,
    weight_repacking: bool = False,
    **kwargs: Any,
) -> Any:
    """Load a GGUF file as hivemind does everywhere: all cores, quiet, no weight repacking unless
    asked (engines that step several models together load each one with this)."""
    from llama_cpp import Llama

    with extra_buffer_types(weight_repacking):
        return Llama(
            model_path=path,
            n_ctx=n_ctx,
            n_threads=n_threads or os.cpu_count(),
            chat_format=chat_format,
            verbose=False,
            **kwargs,
        )


class LlamaEngine:
    """What runs in the worker process: one loaded model answering chat or completion payloads."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.llama = open_llama(
            config["path"],
            n_ctx=config["n_ctx"],
            chat_format=config["chat_format"],
            n_threads=config["n_threads"],
            weight_repacking=config["weight_repacking"],
        )

    def __call__(self, payload: dict[str, Any]) -> dict[str, Any]:
        if "messages" in payload:
            out = self.llama.create_chat_completion(messages=payload["messages"], **payload["kwargs"])
            choice = out["choices"][0]
            text = choice["message"].get("content") or ""
        else:
            out = self.llama.create_completion(payload["prompt"], **payload["kwargs"])
            choice = out["choices"][0]
            text = choice.get("text") or ""
        return {"text": text, "finish_reason": choice.get("finish_reason"), "usage": out.get("usage") or {}}

    def close(self) -> None:
        self.llama.close()


def llama_engine(config: dict[str, Any]) -> LlamaEngine:
    """The worker factory (`ENGINE`), run in the worker before llama.cpp is loaded.

    llama.cpp's CPU backend is built with OpenMP (libgomp), whose idle threads spin ~300k turns
    after each token unless the process itself has more threads than cores. One process per
    model hides that oversubscription from each process: three models on 2 cores sampled ~7x
    slower than in one process. A short spin (what libgomp uses when it sees oversubscription)
    restores it; a user's own GOMP_SPINCOUNT wins."""
    os.environ.setdefault("GOMP_SPINCOUNT", "1000")
    return LlamaEngine(config)


def sampling_kwargs(request: SampleRequest) -> dict[str, Any]:
    """llama-cpp-python's names for our parameters; its defaults fill what the study leaves unset."""
    params = request.params.explicit()
    kwargs: dict[str, Any] = {"seed": request.seed}
    for name in (
        "temperature",
        "top_p",
        "min_p",
        "top_k",
        "max_tokens",
        "stop",
        "presence_penalty",
        "frequency_penalty",
    ):
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
class LlamaCppProvider(WorkerProvider):
    """A GGUF model loaded in a worker process."""

    ENGINE = ENGINE

    def __init__(self, deployment: Deployment) -> None:
        super().__init__(deployment)
        mode = deployment.options.get("mode", "chat")
        if mode not in {"chat", "completion"}:
            raise ValueError(f"deployment {deployment.name!r}: options.mode must be chat or completion")
        repacking = deployment.options.get("weight_repacking", False)
        if not isinstance(repacking, bool):
            raise TypeError(f"deployment {deployment.name!r}: options.weight_repacking must be true or false")
        self.mode: str = mode

    def takes_conversation(self) -> bool:
        """Chat mode renders every turn with the file's template; completion mode has one prompt."""
        return self.mode == "chat"

    def check_ready(self) -> None:
        super().check_ready()
        require_module("llama_cpp", f"deployment {self.deployment.name!r} (provider llamacpp)")
        resolve_gguf(self.deployment.options, f"deployment {self.deployment.name!r}")

    def engine_config(self) -> dict[str, Any]:
        """What the worker needs to load the model (resolves and verifies the file: may hash it)."""
        options = self.deployment.options
        path = resolve_gguf(options, f"deployment {self.deployment.name!r}")
        return {
            "path": str(path),
            "n_ctx": int(options.get("n_ctx", 2048)),
            "chat_format": options.get("chat_format"),
            "n_threads": options.get("n_threads"),
            "weight_repacking": bool(options.get("weight_repacking", False)),
        }

    def payload(self, request: SampleRequest) -> dict[str, Any]:
        """The engine's input for one request: chat messages, or the rendered completion prompt."""
        kwargs = sampling_kwargs(request)
        if self.mode == "chat":
            return {"messages": [m.model_dump() for m in request.messages], "kwargs": kwargs}
        template = self.deployment.options.get("prompt_template", DEFAULT_TEMPLATE)
        return {"prompt": render_prompt(request, template), "kwargs": kwargs}

    def completion(self, result: dict[str, Any]) -> Completion:
        usage = result["usage"]
        return Completion(
            text=result["text"].strip(),
            finish_reason=result["finish_reason"],
            prompt_tokens=usage.get("prompt_tokens"),
            completion_tokens=usage.get("completion_tokens"),
            cost_usd=0.0,
            model=self.deployment.model,
        )

"""Composite deployments: several local GGUF models sharing a tokenizer, combined token by token.

Each component is stepped with `Llama.eval` and its next-token logits read with
`llama_get_logits_ith(ctx, -1)`; `hivemind.providers.combine` merges them by the declared form
and samples with the study's temperature / top-p / min-p and the sample's own seed. A component
may be the same GGUF under another prompt (`system_prompt` override), which gives prompt-contrast
forms with one model. The zoo entry's options (so the deployment's identity and every cache key)
hold each component's sha256, role, prompt and weight.

    provider: composite
    options:
      form: contrastive | proxy_tuning | logit_ensemble | prob_ensemble
      alpha: 0.1        contrastive: plausibility fraction; proxy_tuning: shift strength (1.0)
      beta: 0.5         contrastive: amateur weight
      mode: chat        chat renders the file's template; completion renders prompt_template
      n_ctx: 2048
      components:
        - {role: expert, gguf_package: ..., sha256: ..., system_prompt: ..., weight: 1.0}

Diversity-guided decoding (off unless a condition's `params: {novelty: ...}` or the deployment's
`options.novelty` asks for it, the condition's winning; ARGS-style, Khanov et al. 2024): every
`every` tokens the `top_k` candidate tokens are rescored by `score + weight * (1 - max cosine)` of
the partial response with that token against the responses this deployment already sampled for
the same query and condition in this process (embedded with `embedder`). Cost: `top_k` short
texts embedded per rescored step (MiniLM, 2 cores: about top_k / 200 s, next to ~0.1 s per token
of the 1.5B); responses sampled before a resume are not remembered.

    novelty: {weight: 2.0, top_k: 5, every: 4, embedder: all-MiniLM-L6-v2}

`CompositeEngine` is a plain class (load, `generate(request) -> Completion`); the provider runs it
in a worker process of its own, as local models run (a native crash becomes error rows). Models
load with `use_extra_bufts=False`: llama.cpp's AMX weight repacking segfaults at the first
decode on AMX CPUs.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field, ValidationError, model_validator

from hivemind.inputs.samples import Completion, Message, SampleRequest
from hivemind.inputs.spec import Deployment, Novelty, Strict
from hivemind.providers.base import register, require_module
from hivemind.providers.combine import (
    FORMS,
    Recipe,
    Sampling,
    combine,
    novelty_rewards,
    penalise,
    rescore_top_k,
    sample_token,
)
from hivemind.providers.gguf import resolve_gguf
from hivemind.providers.llamacpp import (
    DEFAULT_TEMPLATE,
    extra_buffer_types,
    render_prompt,
)
from hivemind.providers.worker import WorkerProvider

DEFAULT_MAX_TOKENS = 256  # as the llamacpp provider


class Component(Strict):
    """One model of a composite: its weights, role, weight and prompt override."""

    role: str = "member"
    """A role of the form: contrastive expert/amateur; proxy_tuning base/tuned/untuned; member."""
    weight: float = Field(1.0, ge=0.0)
    """Ensemble weight (logit_ensemble, prob_ensemble)."""
    label: str | None = None
    """Name used in messages; default: the GGUF package or file name."""
    gguf_path: str | None = None
    gguf_package: str | None = None
    hf_repo: str | None = None
    hf_file: str | None = None
    sha256: str = Field(pattern=r"^[0-9a-fA-F]{64}$")
    """Required: the weights are part of the deployment's identity."""
    system_prompt: str | None = None
    """Replaces the request's system message for this component ("" removes it); None keeps it."""
    prompt_template: str | None = None
    """Completion mode: this component's template (`{prompt}`, `{system}`)."""
    n_ctx: int | None = Field(None, ge=16)

    @property
    def name(self) -> str:
        return self.label or self.gguf_package or Path(self.gguf_path or self.hf_file or "?").name

    def source(self) -> dict[str, Any]:
        return self.model_dump(include={"gguf_path", "gguf_package", "hf_repo", "hf_file", "sha256"}, exclude_none=True)


class CompositeOptions(Strict):
    """A composite deployment's `options`."""

    form: Literal["contrastive", "proxy_tuning", "logit_ensemble", "prob_ensemble"]
    components: list[Component] = Field(min_length=1)
    """One component is allowed for ensembles: the model alone, e.g. with `novelty`."""
    alpha: float | None = Field(None, ge=0.0)
    beta: float = Field(0.5, ge=0.0)
    mode: Literal["chat", "completion"] = "chat"
    prompt_template: str = DEFAULT_TEMPLATE
    n_ctx: int = Field(2048, ge=16)
    n_threads: int | None = Field(None, ge=1)
    verbose: bool = False
    novelty: Novelty | None = None

    @model_validator(mode="after")
    def _roles_fit_the_form(self) -> CompositeOptions:
        allowed = FORMS[self.form]
        roles = [c.role for c in self.components]
        for position, role in enumerate(roles):
            if role not in allowed:
                raise ValueError(
                    f"components[{position}].role: {role!r} is not a role of form "
                    f"{self.form} (roles: {', '.join(allowed)})"
                )
        if allowed != ("member",) and sorted(roles) != sorted(allowed):
            raise ValueError(
                f"form {self.form} needs exactly one component per role ({', '.join(allowed)}); got {', '.join(roles)}"
            )
        if allowed == ("member",) and sum(c.weight for c in self.components) <= 0:
            raise ValueError("components: ensemble weights must not all be 0")
        if self.form == "contrastive" and self.alpha is not None and not 0 < self.alpha <= 1:
            raise ValueError("alpha: the plausibility fraction must be in (0, 1]")
        return self

    def recipe(self) -> Recipe:
        alpha = self.alpha if self.alpha is not None else (0.1 if self.form == "contrastive" else 1.0)
        return Recipe(
            form=self.form,
            roles=tuple(c.role for c in self.components),
            weights=tuple(c.weight for c in self.components),
            alpha=alpha,
            beta=self.beta,
        )


def parse_options(deployment: Deployment) -> CompositeOptions:
    """Validated options, errors naming the field (`options.components[1].sha256`)."""
    from hivemind.inputs.zoo import field_path

    try:
        return CompositeOptions.model_validate(deployment.options)
    except ValidationError as exc:
        lines = []
        for error in exc.errors():
            where = field_path(error["loc"])  # cross-field checks name their fields in the message
            message = error["msg"].removeprefix("Value error, ")
            lines.append(f"deployment {deployment.name!r}: options.{f'{where}: ' if where else ''}{message}")
        raise ValueError("\n".join(lines)) from None


# --- llama.cpp access ------------------------------------------------------------------------


def load_llama_no_repack(path: str, **kwargs: Any) -> Any:
    """`Llama(path, ...)` without llama.cpp's weight repacking (it segfaults on AMX CPUs), as the
    llamacpp provider loads models (`extra_buffer_types`)."""
    from llama_cpp import Llama

    with extra_buffer_types(False):
        return Llama(model_path=path, **kwargs)


@dataclass(frozen=True)
class Vocabulary:
    """What must match between components: size, a digest of the token table, and derived ids."""

    n_vocab: int
    digest: str
    eog: frozenset[int]
    unused: np.ndarray
    """Ids that are not real tokens (padding rows): masked before sampling."""


def read_vocabulary(llama: Any) -> Vocabulary:
    """Token table of a loaded model (text and attributes of every id)."""
    import llama_cpp

    vocab = llama_cpp.llama_model_get_vocab(llama.model)
    n_vocab = int(llama_cpp.llama_vocab_n_tokens(vocab))
    digest = hashlib.sha256()
    eog, unused = [], []
    bad = llama_cpp.LLAMA_TOKEN_ATTR_UNUSED | llama_cpp.LLAMA_TOKEN_ATTR_UNKNOWN
    for token in range(n_vocab):
        text = llama_cpp.llama_vocab_get_text(vocab, token) or b""
        attr = int(llama_cpp.llama_vocab_get_attr(vocab, token))
        digest.update(len(text).to_bytes(4, "little") + text + attr.to_bytes(4, "little"))
        if llama_cpp.llama_vocab_is_eog(vocab, token):
            eog.append(token)
        elif attr == llama_cpp.LLAMA_TOKEN_ATTR_UNDEFINED or attr & bad:
            unused.append(token)
    return Vocabulary(n_vocab, digest.hexdigest(), frozenset(eog), np.asarray(unused, dtype=np.int64))


_VOCABS: dict[str, Vocabulary] = {}


def vocabulary_of(path: Path) -> Vocabulary:
    """A GGUF's vocabulary, loading only the tokenizer (cheap), remembered per file."""
    key = str(path)
    if key not in _VOCABS:
        llama = load_llama_no_repack(key, vocab_only=True, verbose=False)
        try:
            _VOCABS[key] = read_vocabulary(llama)
        finally:
            llama.close()
    return _VOCABS[key]


def check_same_tokenizer(named: list[tuple[str, Path]]) -> Vocabulary:
    """The shared vocabulary, or a ValueError naming the first two models that differ."""
    first_name, first_path = named[0]
    reference = vocabulary_of(first_path)
    for name, path in named[1:]:
        other = vocabulary_of(path)
        if (other.n_vocab, other.digest) != (reference.n_vocab, reference.digest):
            raise ValueError(
                f"components {first_name!r} and {name!r} do not share a tokenizer "
                f"(n_vocab {reference.n_vocab} vs {other.n_vocab}, token table digest "
                f"{reference.digest[:12]} vs {other.digest[:12]}); logits can only be combined "
                "over one vocabulary"
            )
    return reference


# --- the engine ------------------------------------------------------------------------------


@dataclass
class Stepper:
    """One component's loaded model, stepped one token at a time."""

    spec: Component
    llama: Any
    n_ctx: int

    def prefill(self, tokens: list[int]) -> np.ndarray:
        """Evaluate the prompt (reusing the longest prefix already in the KV cache)."""
        llama = self.llama
        limit = min(llama.n_tokens, len(tokens) - 1)
        same = np.asarray(llama.input_ids[:limit]) == np.asarray(tokens[:limit], dtype=np.intc)
        common = int(np.argmin(same)) if not same.all() else limit
        llama.n_tokens = common
        llama.eval(tokens[common:])
        return self.logits()

    def feed(self, token: int) -> np.ndarray:
        self.llama.eval([token])
        return self.logits()

    def room(self) -> int:
        """Tokens that can still be evaluated before the context window is full."""
        return self.n_ctx - self.llama.n_tokens

    def logits(self) -> np.ndarray:
        """The last position's next-token logits (a copy: the buffer changes on the next eval)."""
        import llama_cpp

        pointer = llama_cpp.llama_get_logits_ith(self.llama.ctx, -1)
        if not pointer:
            raise RuntimeError(f"{self.spec.name}: llama.cpp returned no logits")
        return np.ctypeslib.as_array(pointer, shape=(self.llama.n_vocab(),)).copy()


class CompositeEngine:
    """Loads the components of one composite and generates completions from their combination."""

    def __init__(self, options: CompositeOptions, label: str, model: str = "composite") -> None:
        self.options = options
        self.label = label
        self.model = model
        self.recipe = options.recipe()
        paths = [resolve_gguf(c.source(), f"{label}: component {c.name!r}") for c in options.components]
        self.vocabulary = check_same_tokenizer([(c.name, p) for c, p in zip(options.components, paths)])
        threads = options.n_threads or os.cpu_count()
        self._embedders: dict[str, Any] = {}
        self._sampled: dict[tuple[str, str, str, str], list[np.ndarray]] = {}
        self.steppers = []
        for component, path in zip(options.components, paths):
            n_ctx = component.n_ctx or options.n_ctx
            llama = load_llama_no_repack(
                str(path), n_ctx=n_ctx, n_threads=threads, logits_all=False, verbose=options.verbose
            )
            # llama.cpp may pad the window; the declared size is the one never passed
            self.steppers.append(Stepper(component, llama, min(n_ctx, llama.n_ctx())))

    # prompts

    def messages_for(self, component: Component, request: SampleRequest) -> list[Message]:
        """The request's messages under the component's system-prompt override."""
        messages = list(request.messages)
        if component.system_prompt is None:
            return messages
        messages = [m for m in messages if m.role != "system"]
        if component.system_prompt:
            messages.insert(0, Message(role="system", content=component.system_prompt))
        return messages

    def prompt_text(self, index: int, request: SampleRequest) -> str:
        """What component `index` reads, rendered as its `create_chat_completion` would."""
        stepper = self.steppers[index]
        component = stepper.spec
        messages = self.messages_for(component, request)
        if self.options.mode == "completion":
            template = component.prompt_template or self.options.prompt_template
            return render_prompt(request.model_copy(update={"messages": tuple(messages)}), template)
        return self._chat_formatter(index)(messages=[m.model_dump() for m in messages]).prompt

    def _chat_formatter(self, index: int) -> Any:
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        llama = self.steppers[index].llama
        template = llama.metadata.get("tokenizer.chat_template")
        if not template:
            raise ValueError(
                f"{self.label}: component {self.steppers[index].spec.name!r} has no chat "
                "template in its GGUF; use mode: completion"
            )
        model = llama._model

        def text(token: int) -> str:
            return model.token_get_text(token) if token != -1 else ""

        return Jinja2ChatFormatter(
            template=template, eos_token=text(llama.token_eos()), bos_token=text(llama.token_bos())
        )

    def prompt_tokens(self, index: int, request: SampleRequest) -> list[int]:
        """Tokenized as llama-cpp-python does (special tokens parsed; BOS only in completion mode)."""
        text = self.prompt_text(index, request).encode("utf-8")
        return self.steppers[index].llama.tokenize(text, add_bos=self.options.mode == "completion", special=True)

    # one step

    def scores(self, logits: list[np.ndarray], generated: list[int], sampling: Sampling) -> np.ndarray:
        """Combined, masked, penalised next-token scores."""
        combined = combine(self.recipe, logits)
        combined[self.vocabulary.unused] = -np.inf
        return penalise(combined, generated, sampling)

    def prefill(self, request: SampleRequest) -> tuple[list[np.ndarray], int]:
        """Each component's logits after its prompt, and the largest prompt length."""
        logits, longest = [], 0
        for index, stepper in enumerate(self.steppers):
            tokens = self.prompt_tokens(index, request)
            if len(tokens) >= stepper.n_ctx:
                raise ValueError(
                    f"{self.label}: the prompt is {len(tokens)} tokens for component "
                    f"{stepper.spec.name!r}, which does not fit its context window (n_ctx "
                    f"{stepper.n_ctx}) with room to generate; raise n_ctx or shorten the prompt"
                )
            logits.append(stepper.prefill(tokens))
            longest = max(longest, len(tokens))
        return logits, longest

    def generate(self, request: SampleRequest) -> Completion:
        """One completion: step every component, combine, sample with the request's seed."""
        params = request.params
        sampling = sampling_from(request)
        max_tokens = params.max_tokens or DEFAULT_MAX_TOKENS
        stops = params.stop or []
        rng = np.random.default_rng(request.seed)
        logits, prompt_len = self.prefill(request)
        novelty = params.novelty or self.options.novelty  # a condition's setting wins
        memory_key = (request.study, request.deployment, request.query_id, request.condition)
        previous = np.asarray(self._sampled.get(memory_key, []), dtype=np.float32)
        generated: list[int] = []
        finish = "length"
        text = ""
        # Every sampled token must fit in every component's window: prompt + completion <= n_ctx.
        while len(generated) < max_tokens and min(s.room() for s in self.steppers) >= 1:
            scores = self.scores(logits, generated, sampling)
            if novelty is not None and previous.size and len(generated) % novelty.every == 0:
                scores = rescore_top_k(
                    scores,
                    novelty.top_k,
                    lambda top: novelty_rewards(
                        self.embed(novelty.embedder, [self.detokenize([*generated, int(t)]) for t in top]), previous
                    ),
                    novelty.weight,
                )
            token = sample_token(scores, sampling, rng)
            if token in self.vocabulary.eog:
                finish = "stop"
                break
            generated.append(token)
            text = self.detokenize(generated)
            hit = [text.index(s) for s in stops if s and s in text]
            if hit:
                text, finish = text[: min(hit)], "stop"
                break
            if len(generated) < max_tokens:
                logits = [stepper.feed(token) for stepper in self.steppers]
        if novelty is not None:
            self._sampled.setdefault(memory_key, []).append(self.embed(novelty.embedder, [text.strip()])[0])
        return Completion(
            text=text.strip(),
            finish_reason=finish,
            prompt_tokens=prompt_len,
            completion_tokens=len(generated),
            cost_usd=0.0,
            model=self.model,
        )

    def embed(self, embedder: str, texts: list[str]) -> np.ndarray:
        """Unit vectors from a novelty embedder (each loaded on first use)."""
        if embedder not in self._embedders:
            from hivemind.vectors.embed import Embedder

            self._embedders[embedder] = Embedder(embedder, device="cpu", progress=False)
        return self._embedders[embedder].encode(texts, progress=False)

    def detokenize(self, tokens: list[int]) -> str:
        return self.steppers[0].llama.detokenize(tokens).decode("utf-8", errors="ignore")

    def close(self) -> None:
        for stepper in self.steppers:
            stepper.llama.close()


def sampling_from(request: SampleRequest) -> Sampling:
    """The request's decoding parameters; llama-cpp-python's chat defaults fill unset ones."""
    explicit = request.params.explicit()
    names = ("temperature", "top_p", "min_p", "top_k", "presence_penalty", "frequency_penalty")
    return Sampling(**{name: explicit[name] for name in names if name in explicit})


# --- provider --------------------------------------------------------------------------------


def composite_engine(config: dict[str, Any]) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """The worker factory (`CompositeProvider.ENGINE`): the engine, loaded in the worker process,
    answering JSON-ready requests with JSON-ready completions."""
    os.environ.setdefault("GOMP_SPINCOUNT", "1000")  # see llamacpp.llama_engine
    engine = CompositeEngine(CompositeOptions.model_validate(config["options"]), config["label"], config["model"])

    class Serve:
        def __call__(self, payload: dict[str, Any]) -> dict[str, Any]:
            return engine.generate(SampleRequest.model_validate(payload)).model_dump(mode="json")

        def close(self) -> None:
            engine.close()

    return Serve()


@register("composite")
class CompositeProvider(WorkerProvider):
    """A composite of local GGUF models, run in a worker process of its own (one decode at a time)."""

    ENGINE = "hivemind.providers.composite:composite_engine"

    def __init__(self, deployment: Deployment) -> None:
        super().__init__(deployment)
        self.options = parse_options(deployment)

    def takes_conversation(self) -> bool:
        return self.options.mode == "chat"

    def unsupported_params(self, params: dict[str, Any]) -> set[str]:
        """None: the composite engine runs every parameter, `novelty` included."""
        return set()

    def check_ready(self) -> None:
        """Weights present and verified, and one tokenizer for all components (cheap: vocab only)."""
        super().check_ready()
        label = f"deployment {self.deployment.name!r}"
        require_module("llama_cpp", f"{label} (provider composite)")
        named = [(c.name, resolve_gguf(c.source(), f"{label}: component {c.name!r}")) for c in self.options.components]
        try:
            check_same_tokenizer(named)
        except ValueError as exc:
            raise ValueError(f"{label}: {exc}") from None

    def engine_config(self) -> dict[str, Any]:
        return {
            "options": self.options.model_dump(mode="json"),
            "label": f"deployment {self.deployment.name!r}",
            "model": self.deployment.model,
        }

    def payload(self, request: SampleRequest) -> dict[str, Any]:
        return request.model_dump(mode="json")

    def completion(self, result: dict[str, Any]) -> Completion:
        return Completion.model_validate(result)

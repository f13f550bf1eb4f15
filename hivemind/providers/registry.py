"""Which class serves a zoo entry's `provider:`: built-in kinds by lazy import, plus plugins.

Built-in providers are named here with their module and the optional package each needs, and a
module is imported only when a deployment asks for its kind: a study of hosted models never
imports llama.cpp, and a missing optional package is an error that says what to install.
Third-party providers come from the `hivemind.providers` entry-point group or `@register`.
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from importlib.metadata import entry_points

from hivemind.inputs.spec import Deployment
from hivemind.providers.base import REGISTERED, Provider, ProviderFactory

ENTRY_POINT_GROUP = "hivemind.providers"


@dataclass(frozen=True)
class Builtin:
    """A built-in provider kind: its module and the optional package it needs (if any)."""

    module: str
    needs: str | None = None
    install: str | None = None


BUILTIN: dict[str, Builtin] = {
    "llamacpp": Builtin("hivemind.providers.llamacpp", "llama_cpp", "pip install 'hivemind-study[local]'"),
    "composite": Builtin("hivemind.providers.composite", "llama_cpp", "pip install 'hivemind-study[local]'"),
    "openai": Builtin("hivemind.providers.openai"),
    "litellm": Builtin("hivemind.providers.litellm", "litellm", "pip install 'litellm>=1.84'"),
    "mock": Builtin("hivemind.providers.mock"),
}


class UnknownProviderError(ValueError):
    """A deployment names a provider kind nobody registered, or one whose package is missing."""


def _plugins() -> None:
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        if entry.name not in REGISTERED and entry.name not in BUILTIN:
            REGISTERED[entry.name] = entry.load()


def provider_factory(kind: str, deployment_name: str = "?") -> ProviderFactory:
    """The class (factory) for `kind`, importing its module on first use."""
    if kind not in REGISTERED and kind in BUILTIN:
        builtin = BUILTIN[kind]
        if builtin.needs and importlib.util.find_spec(builtin.needs) is None:
            raise UnknownProviderError(
                f"deployment {deployment_name!r}: provider {kind!r} needs the package {builtin.needs!r}, "
                f"which is not installed ({builtin.install})"
            )
        importlib.import_module(builtin.module)  # its @register fills REGISTERED
    if kind not in REGISTERED:
        _plugins()
    if kind not in REGISTERED:
        known = ", ".join(sorted(set(BUILTIN) | set(REGISTERED)))
        raise UnknownProviderError(f"deployment {deployment_name!r}: unknown provider {kind!r} (known: {known})")
    return REGISTERED[kind]


def available_providers() -> dict[str, ProviderFactory]:
    """Every provider kind that can be created here: built-ins whose packages are installed,
    then plugins (imports each built-in module; none of them imports a heavy library)."""
    for kind, builtin in BUILTIN.items():
        if kind not in REGISTERED and (builtin.needs is None or importlib.util.find_spec(builtin.needs)):
            importlib.import_module(builtin.module)
    _plugins()
    return dict(REGISTERED)


def create_provider(deployment: Deployment) -> Provider:
    """Instantiate the provider a deployment names, with a clear error for unknown kinds."""
    return provider_factory(deployment.provider, deployment.name)(deployment)

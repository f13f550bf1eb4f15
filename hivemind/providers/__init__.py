"""Providers: one small class per kind of model endpoint, registered by name."""

from hivemind.providers.base import (
    MissingKeyError,
    Provider,
    ProviderError,
    available_providers,
    create_provider,
    register,
)

__all__ = [
    "MissingKeyError",
    "Provider",
    "ProviderError",
    "available_providers",
    "create_provider",
    "register",
]

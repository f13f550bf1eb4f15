"""Providers: one small class per kind of model endpoint, registered by name."""

from hivemind.providers.base import MissingKeyError, Provider, ProviderError, register
from hivemind.providers.registry import available_providers, create_provider

__all__ = [
    "MissingKeyError",
    "Provider",
    "ProviderError",
    "available_providers",
    "create_provider",
    "register",
]

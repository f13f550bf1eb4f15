"""The provider registry: built-in kinds load lazily, by name; unknown or uninstallable kinds
are clear errors naming the deployment."""

from __future__ import annotations

import subprocess
import sys

import pytest

from hivemind.inputs.spec import Deployment
from hivemind.providers import registry
from hivemind.providers.registry import Builtin, UnknownProviderError, create_provider
from tests.conftest import REPO


def test_a_study_of_one_kind_imports_only_that_kind() -> None:
    probe = (
        "import sys; from hivemind.providers.registry import create_provider; "
        "from hivemind.inputs.spec import Deployment; "
        "create_provider(Deployment(name='m', provider='mock', model='mock')); "
        "print(sorted(m for m in sys.modules if m.startswith('hivemind.providers.')))"
    )
    out = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    loaded = eval(out.stdout)  # a list literal of module names
    assert "hivemind.providers.mock" in loaded
    assert not {"hivemind.providers.llamacpp", "hivemind.providers.composite", "hivemind.providers.litellm"} & set(
        loaded
    )


def test_unknown_kind_names_the_deployment_and_the_known_kinds() -> None:
    with pytest.raises(UnknownProviderError) as caught:
        create_provider(Deployment(name="mine", provider="nope", model="x"))
    message = str(caught.value)
    assert "'mine'" in message and "'nope'" in message
    assert all(kind in message for kind in ("llamacpp", "openai", "litellm", "mock", "composite"))


def test_missing_optional_package_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(
        registry.BUILTIN,
        "needs-missing",
        Builtin("hivemind.providers.mock", "no_such_package_hivemind", "pip install no-such"),
    )
    with pytest.raises(UnknownProviderError, match=r"'no_such_package_hivemind'.*pip install no-such"):
        create_provider(Deployment(name="d", provider="needs-missing", model="x"))

"""A pytest helper for plugin authors: a fresh plugin manager with a temporary plugin registered.

Enable it with ``pytest_plugins = ["gcert.testing"]`` in a ``conftest.py``; then::

    def test_my_mutation(gcert_registry):
        reg = gcert_registry(my_plugin_module)
        assert "my-mutation" in reg.mutations
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from gcert.plugins import PluginSettings, Registry, collect, get_plugin_manager, register_plugin

BUILTINS_ONLY = PluginSettings(autoload=False)


def make_registry(*plugins: object, builtins: bool = True) -> Registry:
    """A registry of gcert's built-ins (unless ``builtins=False``) plus ``plugins``; no third-party autoload."""
    settings = BUILTINS_ONLY if builtins else PluginSettings(autoload=False, allow=frozenset())
    pm = get_plugin_manager(settings)
    for plugin in plugins:
        register_plugin(pm, plugin)
    return collect(pm)


@pytest.fixture
def gcert_registry() -> Callable[..., Registry]:
    """Factory fixture: ``gcert_registry(plugin, ..., builtins=True)`` returns a fresh :class:`Registry`."""
    return make_registry

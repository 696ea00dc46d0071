"""A pytest helper for plugin authors: a fresh plugin manager with a temporary plugin registered.

Enable it with ``pytest_plugins = ["gcert.testing"]`` in a ``conftest.py``; then::

    def test_my_mutation(gcert_registry):
        reg = gcert_registry(my_plugin_module)
        assert "my-mutation" in reg.mutations
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

from gcert.data import conformance_dir
from gcert.plugins import PluginSettings, Registry, collect, get_plugin_manager, register_plugin
from gcert.regions import Box, LpBall, Segment

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


@pytest.fixture
def conformance() -> Path:
    """The conformance material (see :func:`gcert.data.conformance_dir`); the test is skipped without it."""
    path = conformance_dir()
    if not path.is_dir():
        pytest.skip(f"conformance material not found at {path} (set GCERT_CONFORMANCE)")
    return path


# --- random problems, for testing certifiers against dense sampling ------------------------------------

ACTIVATIONS: list[Callable[[], nn.Module]] = [
    nn.ReLU, nn.Sigmoid, nn.Tanh, lambda: nn.LeakyReLU(0.1), lambda: nn.Hardtanh(-0.5, 0.5),
]


def random_network(seed: int, conv: bool) -> nn.Module:
    """A small random network over 1x6x6 images with the layer kinds real networks use (4 outputs).

    The activation cycles with ``seed`` through ReLU, sigmoid, tanh, leaky ReLU and hardtanh; ``conv``
    networks add batch norm (random statistics), a transposed convolution and max- or average-pooling.
    """
    torch.manual_seed(seed)
    act = ACTIVATIONS[seed % len(ACTIVATIONS)]
    if conv:
        layers = [
            nn.Conv2d(1, 3, 3, padding=1), nn.BatchNorm2d(3), act(),
            nn.ConvTranspose2d(3, 2, 3, stride=2, padding=1, output_padding=1), act(),
            nn.MaxPool2d(2) if seed % 2 else nn.AvgPool2d(2),
            nn.Conv2d(2, 4, 3, stride=2), nn.Flatten(), nn.Linear(4 * 2 * 2, 4),
        ]
    else:
        layers = [nn.Flatten(), nn.Linear(36, 12), act(), nn.Linear(12, 8), act(), nn.Linear(8, 4)]
    net = nn.Sequential(*layers)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(-2, 2)
    return net.eval()


def random_region(kind: str, gen: torch.Generator, size: float = 1.0) -> Segment | Box | LpBall:
    """A region around a random 1x6x6 image: ``segment``, ``box``, ``linf`` or ``l2`` (``size`` scales it)."""
    center = torch.rand(1, 6, 6, generator=gen)
    if kind == "segment":
        return Segment(center, center + 0.5 * size * torch.randn(1, 6, 6, generator=gen))
    if kind == "box":
        return Box(center - 0.05 * size, center + 0.05 * size)
    return LpBall(center, 0.1 * size, math.inf if kind == "linf" else 2, clip=(0.0, 1.0))


def run_cli(*args: str) -> int:
    """Run ``gcert ARGS...`` in this process and return its exit code (0 when it returns normally)."""
    from gcert.cli import main

    try:
        main(list(args))
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0

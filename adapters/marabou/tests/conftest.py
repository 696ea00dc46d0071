"""Fixtures of the gcert-marabou tests: maraboupy (skip when absent) and the shared conformance material."""

from __future__ import annotations

import pytest
import torch

from gcert.testing import conformance  # noqa: F401 - the shared fixture, re-exported here
from gcert_marabou import plugin

torch.set_num_threads(1)


@pytest.fixture
def marabou():
    """maraboupy's Marabou module; the test is skipped (with the install command) when it is absent."""
    if not plugin.available():
        pytest.skip(plugin.INSTALL_HINT)
    return plugin.load()

"""Fixtures of the gcert-lirpa tests: auto_LiRPA (skip when absent) and the shared conformance material."""

from __future__ import annotations

import pytest
import torch

from gcert.testing import conformance  # noqa: F401 - the shared fixture, re-exported here
from gcert_lirpa import compat

# One thread, as the runner's workers use: alpha-CROWN's autograd with two OpenMP threads slowed down 60-fold
# on a busy two-core machine (threads spin-waiting for each other), while one thread is as fast for these sizes.
torch.set_num_threads(1)


@pytest.fixture
def lirpa():
    """auto_LiRPA, patched for torch 2.x; the test is skipped (with the install command) when it is absent."""
    if not compat.available():
        pytest.skip("auto_LiRPA is not installed: pip install --no-deps auto-LiRPA==0.3")
    return compat.load()


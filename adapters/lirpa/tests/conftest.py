"""Fixtures of the gcert-lirpa tests: auto_LiRPA (skip when absent) and the shared conformance material."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

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


def conformance_dir() -> Path:
    default = Path(__file__).resolve().parents[4] / "shared" / "conformance"
    return Path(os.environ.get("GCERT_CONFORMANCE", default))


@pytest.fixture
def conformance() -> Path:
    path = conformance_dir()
    if not path.is_dir():
        pytest.skip(f"conformance material not found at {path} (set GCERT_CONFORMANCE)")
    return path

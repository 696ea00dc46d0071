from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

pytest_plugins = ["gcert.testing"]

# One thread: the ops here are small, and tests also spawn pool workers; several OpenMP teams on 2 cores
# oversubscribe badly (seen: a 45 ms 8x8 conv2d under load).
torch.set_num_threads(1)


def conformance_dir() -> Path:
    default = Path(__file__).resolve().parents[2] / "shared" / "conformance"
    return Path(os.environ.get("GCERT_CONFORMANCE", default))


@pytest.fixture
def conformance() -> Path:
    path = conformance_dir()
    if not path.is_dir():
        pytest.skip(f"conformance material not found at {path} (set GCERT_CONFORMANCE)")
    return path

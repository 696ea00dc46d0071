"""The zoo's files: weights written by the recipes, their sha256, and the entries of ``manifest.json``."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from safetensors.torch import save_file
from torch import nn


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def save_module(module: nn.Module, path: Path) -> None:
    """A module's state as safetensors (contiguous, detached tensors)."""
    save_file({k: v.detach().contiguous() for k, v in module.state_dict().items()}, str(path))


def install(entry: dict[str, Any], folder: Path) -> None:
    """Put ``entry`` into ``folder``/manifest.json (read right before writing), replacing an entry of the same name."""
    path = folder / "manifest.json"
    data = json.loads(path.read_text()) if path.is_file() else {"default": {}, "entries": []}
    names = [e["name"] for e in data["entries"]]
    if entry["name"] in names:
        data["entries"][names.index(entry["name"])] = entry
    else:
        data["entries"].append(entry)
    path.write_text(json.dumps(data, indent=2) + "\n")

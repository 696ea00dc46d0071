"""Access to the model zoo shipped in the wheel (package ``gcert_zoo``): manifest, loading, verification.

The default job (``gcert run`` without ``--model``/``--data``) uses the manifest's ``default`` network.
"""

from __future__ import annotations

import hashlib
import json
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from safetensors.torch import load_file
from torch import nn

from gcert.errors import GcertError, UnknownNameError


def zoo_dir() -> Path:
    return Path(str(resources.files("gcert_zoo")))


@cache
def manifest() -> dict[str, Any]:
    return json.loads((zoo_dir() / "manifest.json").read_text())


def entries() -> list[dict[str, Any]]:
    return list(manifest()["entries"])


def entry(name: str) -> dict[str, Any]:
    for e in entries():
        if e["name"] == name:
            return e
    raise UnknownNameError("zoo entry", name, [e["name"] for e in entries()])


def network_names() -> list[str]:
    return [e["name"] for e in entries() if e["kind"] == "network"]


def has_network(name: str) -> bool:
    return name in network_names()


def default_network() -> str:
    return str(manifest()["default"]["network"])


def samples_path(name: str) -> Path:
    return zoo_dir() / entry(name)["samples"]


def load_network(name: str) -> tuple[nn.Module, tuple[int, ...]]:
    from gcert_zoo.architectures import ARCHITECTURES

    e = entry(name)
    module = ARCHITECTURES[e["architecture"]]()
    module.load_state_dict(load_file(str(zoo_dir() / e["weights"])))
    return module.eval(), tuple(e["input_shape"])


def inputs_for_generator(name: str) -> Path:
    """Sample inputs to mutate through a generator: a zoo generator's own, else the default network's."""
    if name in generator_names() or name in stylized_generator_names():
        return zoo_dir() / entry(name)["samples"]
    return samples_path(default_network())


def generator_names() -> list[str]:
    return [e["name"] for e in entries() if e["kind"] == "generator"]


def stylized_generator_names() -> list[str]:
    """Conditional generators ``G(a, delta)`` of stylized mutations (registered by the ``weather`` plugin)."""
    return [e["name"] for e in entries() if e["kind"] == "stylized-generator"]


def load_generator(name: str) -> nn.Module:
    """A zoo generator ``G``: control (batch, dim) -> images (batch, C, H, W), BatchNorm already folded."""
    from gcert_zoo.architectures import ARCHITECTURES

    e = entry(name)
    if e["kind"] != "generator":
        raise GcertError(f"zoo entry {name!r} is a {e['kind']}, not a generator")
    module = ARCHITECTURES[e["architecture"]]()
    module.load_state_dict(load_file(str(zoo_dir() / e["weights"])))
    return module.eval().requires_grad_(False)


def load_encoder(name: str) -> nn.Module:
    """The encoder shipped with a zoo generator: image batch -> control guesses (for inversion)."""
    from gcert_zoo.architectures import ARCHITECTURES

    e = entry(name)
    module = ARCHITECTURES[e["encoder_architecture"]]()
    module.load_state_dict(load_file(str(zoo_dir() / e["encoder"])))
    return module.eval().requires_grad_(False)


def measure(name: str) -> dict[str, Any]:
    """Re-measure an entry's figures from its shipped weights (deterministic; no training)."""
    from gcert_zoo import measure as m
    from gcert_zoo.recipes import network_figures

    e = entry(name)
    if e.get("dataset_source") == "driving":  # steering regressors and stylized generators measure their own
        from gcert_zoo.weather import entry_figures

        return entry_figures(e, zoo_dir())
    if e["kind"] == "generator":
        return m.generator_figures(e, load_generator(name), load_encoder(name))
    return network_figures(e, load_network(name)[0])


def verify_figures(name: str) -> list[str]:
    """Figures of the manifest that the shipped weights no longer reproduce within tolerance."""
    from gcert_zoo.measure import compare

    old = entry(name).get("metrics", {})
    return [f"{name}: {p}" for p in compare(old, measure(name))]


def verify(name: str, figures: bool = False) -> list[str]:
    """Problems with an entry's files (missing, or sha256 different from the manifest's) and, with
    ``figures``, its measured figures that do not reproduce (only checked when the files match).
    """
    e, problems = entry(name), []
    for key, sha_key in (("weights", "sha256"), ("samples", "samples_sha256"), ("encoder", "encoder_sha256")):
        if key not in e:
            continue
        path = zoo_dir() / e[key]
        if not path.is_file():
            problems.append(f"{name}: {e[key]} is missing")
        elif hashlib.sha256(path.read_bytes()).hexdigest() != e[sha_key]:
            problems.append(f"{name}: {e[key]} does not match its sha256 in the manifest")
    if figures and not problems:
        problems += verify_figures(name)
    return problems


def train(name: str, out: Path | None = None) -> dict[str, Any]:
    """Rebuild an entry with its recipe into ``out`` (default: the zoo folder) and return its new entry."""
    from gcert_zoo.recipes import RECIPES

    if name not in RECIPES:
        raise UnknownNameError("zoo recipe", name, RECIPES)
    try:
        return RECIPES[name](out or zoo_dir())
    except RuntimeError as exc:
        raise GcertError(str(exc)) from None

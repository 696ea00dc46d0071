"""Local zoo entries: a directory holding a regulated generator a user trained (``gcert generator regulate``),
its encoder, and ``gcert-generator.json`` (architecture dicts, sha256 of each weights file, figures, recipe).

``--generator DIR`` loads one with :func:`load_local_entry`, which checks every file against its sha256
before building anything, so a certificate never speaks about weights other than the measured ones.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from gcert.errors import InputError

MANIFEST = "gcert-generator.json"
FORMAT = "gcert-generator/1"
GENERATOR_FILE = "generator.safetensors"
ENCODER_FILE = "encoder.safetensors"


@dataclass
class LocalEntry:
    """A loaded local entry; ``generator`` (and ``encoder``) are eval, frozen, plain torch modules."""

    path: Path
    name: str
    generator: nn.Module
    encoder: nn.Module | None
    control_shape: tuple[int, ...]
    image_shape: tuple[int, ...]
    value_range: tuple[float, float]
    piecewise_linear: bool
    sha256: str
    manifest: dict[str, Any]


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def is_local_entry(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a directory holding ``gcert-generator.json`` (valid or not: loading checks)."""
    p = Path(path)
    return p.is_dir() and (p / MANIFEST).is_file()


def write_local_entry(out: Path, name: str, generator: nn.Module, encoder: nn.Module | None,
                      architecture: dict[str, Any], encoder_architecture: dict[str, Any] | None,
                      control_shape: tuple[int, ...], image_shape: tuple[int, ...],
                      value_range: tuple[float, float], figures: dict[str, Any], recipe: dict[str, Any],
                      extra: dict[str, Any] | None = None) -> Path:
    """Write the weights (safetensors) and then the manifest (last, via a temporary file, so a directory
    with a manifest always has the files it names). ``extra``: further manifest fields (the geometric kind's
    ``control_space`` and ``mutations``). Returns the manifest's path."""
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    manifest: dict[str, Any] = {
        "format": FORMAT, "name": name, "kind": "generator", "architecture": architecture,
        "encoder_architecture": encoder_architecture,
        "weights": GENERATOR_FILE, "sha256": "", "encoder": None, "encoder_sha256": None,
        "control_shape": list(control_shape), "image_shape": list(image_shape),
        "value_range": [float(v) for v in value_range], "piecewise_linear": True,
        **(extra or {}), "figures": figures, "recipe": recipe,
    }
    modules = [("weights", "sha256", GENERATOR_FILE, generator)]
    if encoder is not None:
        modules.append(("encoder", "encoder_sha256", ENCODER_FILE, encoder))
    for key, sha_key, filename, module in modules:
        path = out / filename
        save_file({k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}, str(path))
        manifest[key], manifest[sha_key] = filename, file_sha256(path)
    target = out / MANIFEST
    tmp = out / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(_json_safe(manifest), indent=2) + "\n")
    os.replace(tmp, target)
    return target


def _json_safe(obj: Any) -> Any:
    """Non-finite floats as strings ("inf", "nan"): strict JSON has no literal for them."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_json_safe(v) for v in obj]
    return obj


def _fix(manifest: dict[str, Any] | None, path: Path) -> str:
    data = (manifest or {}).get("recipe", {}).get("data") if isinstance(manifest, dict) else None
    return f"regenerate it with `gcert generator regulate --data {data or 'DATA'} --out {path} --force`"


def load_local_entry(path: str | os.PathLike[str]) -> LocalEntry:
    """Load the entry in directory ``path``: format, every sha256, and that the weights fit the architecture."""
    from safetensors.torch import load_file

    from gcert.generators.architectures import build

    root = Path(path)
    mpath = root / MANIFEST
    if not root.is_dir():
        raise InputError(f"--generator {path} is not a directory; give a folder written by "
                         "`gcert generator regulate --out DIR`")
    if not mpath.is_file():
        raise InputError(f"{mpath} does not exist: {path} is not a local generator entry; give a folder written "
                         "by `gcert generator regulate --out DIR`")
    try:
        manifest = json.loads(mpath.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{mpath} is not valid JSON ({type(exc).__name__}); {_fix(None, root)}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        got = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise InputError(f"{mpath} has format {got!r}, not {FORMAT!r}; {_fix(None, root)}")
    missing = [k for k in ("name", "architecture", "weights", "sha256", "control_shape", "image_shape",
                           "value_range", "piecewise_linear") if k not in manifest]
    if missing:
        raise InputError(f"{mpath} lacks {', '.join(missing)}; {_fix(manifest, root)}")
    modules: dict[str, nn.Module | None] = {"weights": None, "encoder": None}
    for key, sha_key, arch_key in (("weights", "sha256", "architecture"),
                                   ("encoder", "encoder_sha256", "encoder_architecture")):
        filename = manifest.get(key)
        if filename is None and key == "encoder":
            continue
        if not isinstance(filename, str) or Path(filename).name != filename:
            raise InputError(f"{mpath}: {key} must name a file in {root}, got {filename!r}; {_fix(manifest, root)}")
        fpath = root / filename
        if not fpath.is_file():
            raise InputError(f"{fpath} is missing; {_fix(manifest, root)}")
        if file_sha256(fpath) != manifest.get(sha_key):
            raise InputError(f"{fpath} does not match its sha256 in {mpath} (changed or damaged); "
                             f"{_fix(manifest, root)}")
        try:
            module = build(manifest[arch_key])
            module.load_state_dict(load_file(str(fpath)))
        except Exception as exc:  # noqa: BLE001 - a hand-edited architecture fails in many ways
            raise InputError(f"{fpath} does not fit {arch_key} in {mpath} ({type(exc).__name__}); "
                             f"{_fix(manifest, root)}") from None
        modules[key] = module.eval().requires_grad_(False)
    generator = modules["weights"]
    assert generator is not None
    arch = manifest["architecture"]
    try:
        control_shape = tuple(int(v) for v in manifest["control_shape"])
        image_shape = tuple(int(v) for v in manifest["image_shape"])
        value_range = (float(manifest["value_range"][0]), float(manifest["value_range"][1]))
    except (TypeError, ValueError, IndexError, KeyError):
        raise InputError(f"{mpath}: control_shape, image_shape or value_range is not a list of numbers; "
                         f"{_fix(manifest, root)}") from None
    # the manifest itself carries no checksum: what it says must agree with the architecture it names
    if (control_shape != (int(arch["latent"]),) or image_shape != (int(arch["channels"]), *map(int, arch["size"]))
            or value_range != tuple(float(v) for v in arch.get("value_range", (0.0, 1.0)))):
        raise InputError(f"{mpath}: control_shape {list(control_shape)}, image_shape {list(image_shape)} or "
                         f"value_range {list(value_range)} disagrees with its architecture; {_fix(manifest, root)}")
    return LocalEntry(
        path=root, name=str(manifest["name"]), generator=generator, encoder=modules["encoder"],
        control_shape=control_shape, image_shape=image_shape, value_range=value_range,
        piecewise_linear=bool(manifest["piecewise_linear"]), sha256=str(manifest["sha256"]), manifest=manifest,
    )

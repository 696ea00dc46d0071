"""Loading the network under test: ONNX files, TorchScript files, ``module:attr`` objects, zoo names.

Every loader returns a :class:`LoadedModel`: the module (eval mode, float32), the per-sample input
shape when the format declares one, where it came from, and a fingerprint of its weights.
"""

from __future__ import annotations

import hashlib
import importlib
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from gcert.errors import GcertError, ModelLoadError, one_line


@dataclass
class LoadedModel:
    module: nn.Module
    input_shape: tuple[int, ...] | None
    source: str
    sha256: str

    def to_record(self) -> dict[str, str]:
        return {"source": self.source, "sha256": self.sha256}


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel, put in front of networks that expect normalised inputs."""

    def __init__(self, mean: list[float], std: list[float]):
        super().__init__()
        bad_mean = next((m for m in mean if not math.isfinite(m)), None)
        if bad_mean is not None:
            raise GcertError(f"--mean {bad_mean} is not a finite number; give per-channel means, e.g. 0.1307")
        bad_std = next((v for v in std if not (math.isfinite(v) and v > 0)), None)
        if bad_std is not None:
            raise GcertError(f"--std {bad_std:g} must be a finite number > 0 (a per-channel standard deviation, "
                             "e.g. 0.3081)")
        self.register_buffer("mean", torch.tensor(mean).reshape(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).reshape(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return (x - self.mean.reshape(shape)) / self.std.reshape(shape)


def fingerprint(module: nn.Module) -> str:
    """sha256 over the names and values of all parameters and buffers."""
    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def load_model(ref: str | os.PathLike[str] | nn.Module, mean: list[float] | None = None,
               std: list[float] | None = None) -> LoadedModel:
    """Load ``ref``: a zoo network name, a ``.onnx`` file, a TorchScript file, ``module:attr``, or a module.

    With ``mean``/``std`` the network is prefixed by :class:`Normalize`, so data stays in [0, 1].
    """
    if isinstance(ref, nn.Module):
        loaded = LoadedModel(ref, _declared_shape(ref), type(ref).__name__, "")
    else:
        loaded = _load_ref(str(ref))
    module = loaded.module
    if mean is not None or std is not None:
        if mean is None or std is None:
            raise GcertError("give both --mean and --std (per channel, comma-separated), or neither")
        if len(mean) != len(std):
            raise GcertError(f"--mean has {len(mean)} values but --std has {len(std)}")
        module = nn.Sequential(Normalize(mean, std), module)
    module = module.float().eval()
    for p in module.parameters():
        p.requires_grad_(False)  # ScriptModules lack Module.requires_grad_
    loaded.module = module
    loaded.sha256 = fingerprint(module)
    return loaded


def traceable(module: nn.Module, example: torch.Tensor) -> nn.Module:
    """A torch.fx-traceable equivalent of ``module``: TorchScript goes through ONNX and gcert's importer.

    Native certifiers read the network as an fx graph, which TorchScript does not offer; the round trip
    is checked on ``example`` (a batch of inputs) and refused if the outputs differ by more than 1e-5.
    """
    if not isinstance(module, torch.jit.ScriptModule):
        return module
    import io
    import warnings

    from gcert.onnx_import import load_onnx

    buf = io.BytesIO()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(module, (example[:1],), buf, dynamo=False, input_names=["x"], output_names=["y"],
                              dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}})
    except Exception as exc:  # noqa: BLE001
        raise ModelLoadError(f"cannot convert the TorchScript model for analysis ({one_line(exc, with_type=False)}); "
                             "export it to ONNX yourself and pass the .onnx file") from None
    converted = load_onnx(onnx_model_from_bytes(buf.getvalue()))
    with torch.no_grad():
        diff = float((converted(example) - module(example)).abs().max())
    if diff > 1e-5:
        raise ModelLoadError(f"the TorchScript model changed by {diff:.2g} when converted for analysis; "
                             "export it to ONNX yourself and pass the .onnx file")
    return converted


def onnx_model_from_bytes(data: bytes) -> object:
    import onnx

    return onnx.load_from_string(data)


def _load_ref(ref: str) -> LoadedModel:
    from gcert import zoo

    if zoo.has_network(ref):
        module, shape = zoo.load_network(ref)
        return LoadedModel(module, shape, f"zoo:{ref}", "")
    if Path(ref).suffix.lower() == ".onnx" or Path(ref).is_file() or (":" in ref and not Path(ref).exists()):
        return load_module_ref(ref)
    known = ", ".join(zoo.network_names()) or "(none)"
    raise ModelLoadError(
        f"model {ref!r} is not a file, a module:attr object or a zoo network (zoo networks: {known})"
    )


def load_module_ref(ref: str, what: str = "model") -> LoadedModel:
    """Load a ``.onnx`` file, a TorchScript file or a ``module:attr`` object (an ``nn.Module``, a class or a
    factory taking no arguments) as an ``nn.Module``; ``what`` names it in the one-line errors (model, generator,
    encoder)."""
    path = Path(ref)
    if path.suffix.lower() == ".onnx":
        if not path.is_file():
            raise ModelLoadError(f"{what} file {ref} does not exist")
        from gcert.onnx_import import load_onnx

        module = load_onnx(path)
        return LoadedModel(module, tuple(module.input_shape), str(path), "")
    if path.is_file():
        try:
            module = torch.jit.load(str(path), map_location="cpu")
        except Exception as exc:  # noqa: BLE001
            raise ModelLoadError(
                f"cannot read {ref} as TorchScript ({one_line(exc, with_type=False)}); gcert loads .onnx, TorchScript "
                f"(torch.jit.save) and module:attr objects as the {what}"
            ) from None
        return LoadedModel(module, None, str(path), "")
    if ":" in ref and not path.exists():
        return _load_object(ref, what)
    raise ModelLoadError(f"{what} {ref!r} is not a file or a module:attr object")


def _load_object(ref: str, what: str = "model") -> LoadedModel:
    module_name, _, attr = ref.partition(":")
    try:
        obj: object = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise ModelLoadError(f"cannot import {what} {ref!r}: {one_line(exc, with_type=False)}; check the module "
                             "name and that it is on PYTHONPATH") from None
    except BaseException as exc:  # noqa: BLE001 - a user module that fails on import (syntax error, raise, exit)
        if isinstance(exc, KeyboardInterrupt):
            raise
        where = f" ({exc.filename}, line {exc.lineno})" if isinstance(exc, SyntaxError) else ""
        raise ModelLoadError(f"importing module {module_name!r} for {what} {ref!r} failed{where}: {one_line(exc)}; "
                             "fix the module") from None
    try:
        for part in attr.split("."):
            obj = getattr(obj, part)
    except AttributeError:
        raise ModelLoadError(f"cannot import {what} {ref!r}: module {module_name!r} has no attribute "
                             f"{attr!r}") from None
    if not isinstance(obj, nn.Module) and callable(obj):
        try:
            obj = obj()  # a class or a factory function
        except BaseException as exc:  # noqa: BLE001 - the user's factory failing is bad input, not a gcert bug
            if isinstance(exc, KeyboardInterrupt):
                raise
            raise ModelLoadError(f"calling {ref!r} to build the {what} failed: {one_line(exc)}; fix the factory, "
                                 f"or give an nn.Module or a factory that takes no arguments") from None
    if not isinstance(obj, nn.Module):
        raise ModelLoadError(f"{ref!r} is a {type(obj).__name__}, not a torch.nn.Module or a factory of one")
    return LoadedModel(obj, _declared_shape(obj), ref, "")


def _declared_shape(module: nn.Module) -> tuple[int, ...] | None:
    shape = getattr(module, "input_shape", None)
    return tuple(int(s) for s in shape) if shape is not None else None

"""The Python entry point: ``gcert.certify(model, mutation=..., inputs=..., certifier=...)``."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gcert.certificate import Certificate, read_certificates
from gcert.data import Dataset
from gcert.plugins import PluginSettings, Registry


def certify(
    model: str | os.PathLike[str] | nn.Module | None = None,
    *,
    mutation: str | Sequence[str],
    inputs: str | os.PathLike[str] | torch.Tensor | Dataset | None = None,
    labels: Sequence[int] | None = None,
    certifier: str | Sequence[str] = "interval",
    delta: float | Sequence[float] | None = None,
    options: dict[str, dict[str, Any]] | None = None,
    tau: float | None = None,
    out: str | os.PathLike[str] | None = None,
    workers: int = 1,
    registry: Registry | None = None,
    plugins: PluginSettings | None = None,
) -> list[Certificate]:
    """Certify ``model`` on ``inputs`` against each mutation with each certifier.

    ``inputs`` is a data path, a :class:`Dataset`, or a tensor of images (N, C, H, W) in [0, 1]
    (with ``labels``, else the model's predictions are the labels). Returns the certificates of
    this call; with ``out`` they also stream to that JSONL file and a rerun resumes.
    """
    from gcert.runner import Context, RunConfig, run

    if isinstance(inputs, torch.Tensor):
        n = inputs.shape[0]
        inputs = Dataset(inputs.float(), list(labels) if labels is not None else [None] * n,
                         [f"input:{i}" for i in range(n)], "tensor")
    config = RunConfig(
        mutations=_tuple(mutation), certifiers=_tuple(certifier),
        model=str(model) if isinstance(model, os.PathLike) else model,
        data=str(inputs) if isinstance(inputs, os.PathLike) else inputs,
        deltas=None if delta is None else tuple(float(d) for d in _tuple(delta)),
        options=options or {}, tau=tau, plugins=plugins or PluginSettings.from_env(),
    )
    context = Context(config, registry)
    keys = {t.key for t in context.tasks()}
    if out is None:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "results.jsonl"
            run(config, path, workers=workers, progress=False, context=context)
            return read_certificates(path)
    run(config, out, workers=workers, progress=False, context=context)
    return [c for c in read_certificates(out) if c.key in keys]


def _tuple(value: Any) -> tuple[Any, ...]:
    return tuple(value) if isinstance(value, list | tuple) else (value,)

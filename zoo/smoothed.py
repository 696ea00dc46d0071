"""Classifiers trained for randomized smoothing: the zoo's base CNNs fine-tuned on the smoothing distributions of
GL's Table 1 (one model per dataset, a mixture of the rows) with the consistency loss of Jeong and Shin (2020).

Each entry records its certified robust accuracy per Table 1 row, measured by the ``smoothing`` certifier.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gcert_zoo.datasets import SOURCES, digits_split
from gcert_zoo.files import save_module, sha256_file
from torch import nn
from torch.nn import functional as F

TABLE1 = ("contrast-brightness", "gamma-contrast", "brightness-translation", "contrast-translation", "translation",
          "contrast-brightness-translation", "translation-blur-brightness-contrast", "gamma", "gamma-below")
"""GL Table 1's rows, as the names of the built-in transforms (and mutations)."""

BASES = {"digits-smoothed": ("digits-cnn", "digits", "digits-samples.npz"),
         "shapes-smoothed": ("shapes-cnn", "shapes", "shapes-samples.npz"),
         "faces-smoothed": ("faces-cnn", "faces", "faces-samples.npz")}
STEPS = {"digits-smoothed": 4000, "shapes-smoothed": 1500, "faces-smoothed": 600}
CONSISTENCY = (10.0, 0.5)  # lambda (KL to the mean prediction) and eta (its entropy), Jeong and Shin 2020
COPIES = 2  # noisy copies of each image per step
CRA_SETTINGS = {"n": 1000, "n0": 100, "alpha": 1e-3, "seed": 0}


def _transforms() -> dict[str, Any]:
    from gcert_plugins.transforms import _transforms as builtins

    return {t.name: t for t in builtins()}


def augment(x: torch.Tensor, gen: torch.Generator, rows: tuple[str, ...] = TABLE1) -> torch.Tensor:
    """Each image under one random row's smoothing draw: ``clamp(phi(x, alpha), 0, 1)``, alpha from that row's
    distribution scaled to the image."""
    table = _transforms()
    out = torch.empty_like(x)
    picks = torch.randint(0, len(rows), (x.shape[0],), generator=gen)
    for r, row in enumerate(rows):
        idx = (picks == r).nonzero().reshape(-1)
        if len(idx):
            region = table[row].region(x[0].double())
            alpha = region.sample_smoothing(len(idx), gen)
            # the built-in phi also takes a batch of images with one parameter row each
            out[idx] = region.transform.phi(x[idx].double(), alpha).clamp(0, 1).to(x.dtype)
    return out


def consistency_loss(logits: torch.Tensor, y: torch.Tensor, copies: int) -> torch.Tensor:
    """Cross-entropy of every copy, plus lambda * KL(mean || copy) and eta * entropy(mean) (Jeong and Shin 2020).
    ``logits`` holds ``copies`` blocks of the same batch, one after the other."""
    lam, eta = CONSISTENCY
    blocks = logits.reshape(copies, -1, logits.shape[-1])
    ce = sum(F.cross_entropy(b, y) for b in blocks) / copies
    logp = F.log_softmax(blocks, dim=-1)
    mean = logp.exp().mean(dim=0).clamp_min(1e-12)
    kl = (mean * (mean.log() - logp)).sum(-1).mean()
    entropy = -(mean * mean.log()).sum(-1).mean()
    return ce + lam * kl + eta * entropy


def _training_data(source: str) -> tuple[torch.Tensor, torch.Tensor]:
    if source == "digits":
        xtr, ytr, _, _ = digits_split(0)
        return torch.from_numpy(xtr), torch.from_numpy(ytr)
    src = SOURCES[source]()
    rng = torch.Generator().manual_seed(1)
    parts = [src.sample(512, rng) for _ in range(4)]
    key = "kind" if source == "shapes" else "person"
    return torch.cat([p[1] for p in parts]), torch.cat([p[3][key] for p in parts])


def train_smoothed(name: str, out: Path, steps: int | None = None, log: Callable[[str], None] | None = None,
                   ) -> dict[str, Any]:
    """Fine-tune the base network of ``name`` for smoothing, write its weights, measure its figures."""

    base, source, samples = BASES[name]
    steps = STEPS[name] if steps is None else steps
    start = time.perf_counter()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # many tiny FFTs and convolutions: threads only add overhead
    try:
        return _train(name, out, base, source, samples, steps, start, log)
    finally:
        torch.set_num_threads(threads)


def _train(name: str, out: Path, base: str, source: str, samples: str, steps: int, start: float,
           log: Callable[[str], None] | None) -> dict[str, Any]:
    from gcert import zoo

    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    model, shape = zoo.load_network(base)
    model.train().requires_grad_(True)
    x, y = _training_data(source)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = 1e-3 * 0.5 * (1 + np.cos(np.pi * step / steps))
        idx = torch.randint(0, len(x), (64,), generator=gen)
        batch = torch.cat([augment(x[idx], gen) for _ in range(COPIES)])
        loss = consistency_loss(model(batch), y[idx], COPIES)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if log is not None and step % 250 == 0:
            log(f"{name} step {step}: loss {float(loss.detach()):.4f}")
    model.eval().requires_grad_(False)
    seconds = time.perf_counter() - start
    out.mkdir(parents=True, exist_ok=True)
    weights = out / f"{name}.safetensors"
    save_module(model, weights)
    base_entry = zoo.entry(base)
    entry = {
        "name": name, "kind": "network", "architecture": base_entry["architecture"], "input_shape": list(shape),
        "dataset": base_entry["dataset"], "smoothing": {"base": base, "rows": list(TABLE1)},
        "weights": weights.name, "sha256": sha256_file(weights),
        "samples": samples, "samples_sha256": base_entry["samples_sha256"],
        "recipe": (f"{base} fine-tuned {steps} steps, Adam lr 1e-3 cosine, batch 64 x {COPIES} copies, each image "
                   "under a random GL Table 1 row's smoothing draw (distributions scaled to the image), consistency "
                   f"loss lambda {CONSISTENCY[0]}, eta {CONSISTENCY[1]} (Jeong and Shin 2020), seed 0"),
        "training_seconds": round(seconds, 1),
    }
    entry["metrics"] = smoothed_figures(entry, model)
    return entry


def certified_accuracy(model: nn.Module, images: torch.Tensor, labels: np.ndarray, row: str,
                       options: dict[str, Any] | None = None) -> tuple[float, list[str]]:
    """Share of ``images`` whose label the ``smoothing`` certifier certifies on Table 1 row ``row``, and verdicts."""
    from gcert.problem import Problem
    from gcert.spec import Spec
    from gcert_plugins.pixel import PixelGenerator
    from gcert_plugins.smoothing import Smoothing

    cert = Smoothing()
    opts = cert.parse_options({**CRA_SETTINGS, **(options or {})})
    transform = _transforms()[row]
    k = int(model(images[:1]).shape[-1])
    verdicts = []
    for image, label in zip(images, labels, strict=True):
        problem = Problem(model, PixelGenerator(), transform.region(image), Spec.top1(int(label), k))
        verdicts.append(cert.certify(problem, opts).verdict)
    return sum(v == "certified" for v in verdicts) / len(verdicts), verdicts


def smoothed_figures(entry: dict[str, Any], model: nn.Module) -> dict[str, Any]:
    """Clean accuracy on the held-out samples and certified robust accuracy per Table 1 row (N 1,000, alpha 1e-3)."""
    from gcert import zoo

    data = np.load(zoo.zoo_dir() / entry["samples"])
    images, labels = torch.from_numpy(data["images"]).float(), data["labels"]
    with torch.no_grad():
        clean = float((model(images).argmax(1).numpy() == labels).mean())
    cra = {row: round(certified_accuracy(model, images, labels, row)[0], 4) for row in TABLE1}
    return {"sample_accuracy": round(clean, 4), "samples": len(labels), "certified_robust_accuracy": cra,
            "certification": {**CRA_SETTINGS, "method": "auto"}}


SMOOTHED_RECIPES: dict[str, Callable[[Path], dict[str, Any]]] = {
    name: (lambda out, _n=name: train_smoothed(_n, out, log=print)) for name in BASES
}

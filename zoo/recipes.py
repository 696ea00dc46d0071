"""Training recipes that rebuild the zoo from data a fresh machine has (scikit-learn's bundled digits).

Each recipe writes its weights and samples into a folder and returns the manifest entry it measured.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gcert_zoo.architectures import ARCHITECTURES
from safetensors.torch import save_file
from torch import nn


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def digits_split(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """scikit-learn's 1,797 8x8 digits scaled to [0, 1]; a fixed 80/20 split."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:
        raise RuntimeError("training the digits zoo entries needs scikit-learn: pip install scikit-learn") from exc
    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[:, None]
    y = digits.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(x))
    cut = int(0.8 * len(x))
    return x[order[:cut]], y[order[:cut]], x[order[cut:]], y[order[cut:]]


def train_digits_cnn(out: Path, seed: int = 0, epochs: int = 40, samples: int = 20) -> dict[str, Any]:
    torch.manual_seed(seed)
    xtr, ytr, xte, yte = digits_split(seed)
    model = ARCHITECTURES["digits_cnn"]()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    xt, yt = torch.from_numpy(xtr), torch.from_numpy(ytr)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        model.train()
        for idx in torch.randperm(len(xt), generator=gen).split(64):
            opt.zero_grad()
            nn.functional.cross_entropy(model(xt[idx]), yt[idx]).backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        accuracy = float((model(torch.from_numpy(xte)).argmax(1).numpy() == yte).mean())
    out.mkdir(parents=True, exist_ok=True)
    weights, sample_file = out / "digits-cnn.safetensors", out / "digits-samples.npz"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    np.savez_compressed(sample_file, images=xte[:samples], labels=yte[:samples],
                        ids=np.array([f"digits:{i}" for i in range(samples)]))
    return {
        "name": "digits-cnn", "kind": "network", "architecture": "digits_cnn", "input_shape": [1, 8, 8],
        "dataset": "scikit-learn digits (8x8, scaled to [0, 1]); 80/20 split, seed 0",
        "weights": weights.name, "sha256": sha256_file(weights),
        "samples": sample_file.name, "samples_sha256": sha256_file(sample_file),
        "recipe": f"Adam lr 3e-3, batch 64, {epochs} epochs, cross-entropy, seed {seed}",
        "metrics": {"test_accuracy": round(accuracy, 4)},
    }


RECIPES = {"digits-cnn": train_digits_cnn}

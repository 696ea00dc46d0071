"""A third-party world for the end-to-end test of ``--generator``: written the way a user's own code would be, and
importing nothing from gcert. A small variational autoencoder of scikit-learn's 8x8 digits (sigmoid output, not
regulated: no continuity term, no piecewise-linear output layer) and a classifier of the digits.

``train(folder)`` trains both and saves them; ``G``, ``E`` and ``classifier`` are factories that load them from the
folder named by ``$VAE_WORLD_DIR``, so every worker process builds the same modules.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import load_digits
from torch import nn

LATENT = 4


class Decoder(nn.Module):
    latent_dim = LATENT

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(LATENT, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64),
                                 nn.Sigmoid())

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z).reshape(-1, 1, 8, 8)


class Encoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU())
        self.mu, self.log_var = nn.Linear(64, LATENT), nn.Linear(64, LATENT)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # the mean: what seeds inversion
        return self.mu(self.body(x))

    def posterior(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.body(x)
        return self.mu(h), self.log_var(h)


def _classifier() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))


def digits() -> tuple[torch.Tensor, torch.Tensor]:
    d = load_digits()
    return torch.tensor(d.images / 16.0, dtype=torch.float32).unsqueeze(1), torch.tensor(d.target)


def train(folder: Path, steps: int = 1500, seed: int = 0) -> Path:
    """Train the VAE (ELBO, Bernoulli likelihood) and the classifier on the first 1,500 digits; save both, and the
    next 16 digits as test inputs (``samples.npz``)."""
    torch.manual_seed(seed)
    images, labels = digits()
    x, y = images[:1500], labels[:1500]
    enc, dec = Encoder(), Decoder()
    opt = torch.optim.Adam([*enc.parameters(), *dec.parameters()], lr=3e-3)
    for _ in range(steps):
        batch = x[torch.randint(0, len(x), (128,))]
        mu, log_var = enc.posterior(batch)
        z = mu + torch.randn_like(mu) * (0.5 * log_var).exp()
        recon = nn.functional.binary_cross_entropy(dec(z), batch, reduction="sum") / len(batch)
        kl = -0.5 * (1 + log_var - mu.pow(2) - log_var.exp()).sum() / len(batch)
        opt.zero_grad()
        (recon + kl).backward()
        opt.step()
    clf = _classifier()
    opt = torch.optim.Adam(clf.parameters(), lr=3e-3)
    for _ in range(600):
        i = torch.randint(0, len(x), (128,))
        loss = nn.functional.cross_entropy(clf(x[i]), y[i])
        opt.zero_grad()
        loss.backward()
        opt.step()
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(dec.state_dict(), folder / "decoder.pt")
    torch.save(enc.state_dict(), folder / "encoder.pt")
    torch.save(clf.state_dict(), folder / "classifier.pt")
    np.savez(folder / "samples.npz", images=images[1500:1516].numpy(), labels=labels[1500:1516].numpy())
    return folder


def _load(module: nn.Module, name: str) -> nn.Module:
    module.load_state_dict(torch.load(Path(os.environ["VAE_WORLD_DIR"]) / name, weights_only=True))
    return module.eval()


def G() -> nn.Module:  # noqa: N802 - the name a user would give it
    return _load(Decoder(), "decoder.pt")


def E() -> nn.Module:  # noqa: N802
    return _load(Encoder(), "encoder.pt")


def classifier() -> nn.Module:
    return _load(_classifier(), "classifier.pt")


def ink(before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
    """A measure for ``gcert directions --measure``: the change of the mean pixel value, in percent."""
    return (after.mean(dim=(1, 2, 3)) - before.mean(dim=(1, 2, 3))) * 100

"""``faces-pair``: do two cartoon faces show the same person? (GCert §7.2.3's face-verification network.)

Trained as a siamese network: one trunk ``e`` (a small ReLU CNN) embeds each face, and a head reads
``|e(x1) - e(x2)|`` (written with ReLUs: ``ReLU(d) + ReLU(-d)``) and answers two logits, [different, same].
It ships as one plain ``nn.Sequential`` on the two faces stacked on channels (6x32x32): grouped
convolutions (group 1 reads face 1, group 2 face 2, both with the trunk's weights), a block-diagonal
Linear, then ``Linear(64, 32)`` computing ``[d, -d]`` before a ReLU, the head's first Linear applied to
both halves, a ReLU and the output Linear. So every native certifier lowers it as it is.

:class:`Partnered` fixes the second face: its ``e`` part is evaluated once and folded into the bias of the
Linear that forms ``d``, leaving a plain network of one 3x32x32 face whose logits are the pair's.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gcert_zoo.datasets import FACES_SIZE, FacesSource
from gcert_zoo.files import save_module, sha256_file
from torch import nn

EMBED = 16
HIDDEN = 32
TRUNK_CHANNELS = (8, 16)
PAIR_SEED = 5
"""Seed of the training pool (faces drawn with :class:`FacesSource`, training split)."""
HELDOUT_PAIR_SEED = 20232
"""Seed of the held-out pairs that ``metrics`` and the benchmark use (not the training seed)."""


def faces_pair() -> nn.Sequential:
    """The shipped architecture: 6x32x32 (face 1 on channels 0-2, face 2 on 3-5) -> [different, same]."""
    a, b = TRUNK_CHANNELS
    side = FACES_SIZE // 4
    return nn.Sequential(
        nn.Conv2d(6, 2 * a, 3, stride=2, padding=1, groups=2), nn.ReLU(),
        nn.Conv2d(2 * a, 2 * b, 3, stride=2, padding=1, groups=2), nn.ReLU(),
        nn.Flatten(), nn.Linear(2 * b * side * side, 2 * HIDDEN), nn.ReLU(),
        nn.Linear(2 * HIDDEN, 2 * EMBED), nn.ReLU(),  # [ReLU(d), ReLU(-d)], d = e(x1) - e(x2)
        nn.Linear(2 * EMBED, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, 2),
    )


class Siamese(nn.Module):
    """The training form: a shared trunk on each face and a head on ``|e(x1) - e(x2)|``."""

    def __init__(self) -> None:
        super().__init__()
        a, b = TRUNK_CHANNELS
        side = FACES_SIZE // 4
        self.trunk = nn.Sequential(
            nn.Conv2d(3, a, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(a, b, 3, stride=2, padding=1), nn.ReLU(),
            nn.Flatten(), nn.Linear(b * side * side, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, EMBED))
        self.head = nn.Sequential(nn.Linear(EMBED, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d = self.trunk(x[:, :3]) - self.trunk(x[:, 3:])
        return self.head(d.abs())

    @torch.no_grad()
    def export(self) -> nn.Sequential:
        """The same function as :func:`faces_pair`'s plain layers (shared weights copied into both groups)."""
        net = faces_pair()
        c1, c2, f1, f2 = self.trunk[0], self.trunk[2], self.trunk[5], self.trunk[7]
        net[0].weight.copy_(torch.cat([c1.weight, c1.weight]))
        net[0].bias.copy_(torch.cat([c1.bias, c1.bias]))
        net[2].weight.copy_(torch.cat([c2.weight, c2.weight]))
        net[2].bias.copy_(torch.cat([c2.bias, c2.bias]))
        w, k = net[5].weight, f1.in_features
        w.zero_()
        w[:HIDDEN, :k], w[HIDDEN:, k:] = f1.weight, f1.weight
        net[5].bias.copy_(torch.cat([f1.bias, f1.bias]))
        # d = f2(h1) - f2(h2): the biases cancel
        net[7].weight.copy_(torch.cat([torch.cat([f2.weight, -f2.weight], 1), torch.cat([-f2.weight, f2.weight], 1)]))
        net[7].bias.zero_()
        h1, h2 = self.head[0], self.head[2]
        net[9].weight.copy_(torch.cat([h1.weight, h1.weight], 1))  # ReLU(d) + ReLU(-d) = |d|
        net[9].bias.copy_(h1.bias)
        net[11].weight.copy_(h2.weight)
        net[11].bias.copy_(h2.bias)
        return net.eval()


class Partnered(nn.Sequential):
    """``x -> net(stack(x, partner))`` for one 3x32x32 face ``x``, as plain layers.

    ``net`` is a :func:`faces_pair` network. Its grouped layers are cut to the first face's group; the
    second face's hidden features ``h2`` are computed once, and the Linear forming ``[d, -d]`` gets
    ``W[:, h2 part] @ h2`` added to its bias. Refuses a net whose dense layer mixes the two faces (the fold
    would then not be the pair network).
    """

    def __init__(self, net: nn.Sequential, partner: torch.Tensor):
        conv1, conv2, dense, diff = net[0], net[2], net[5], net[7]
        if conv1.groups != 2 or conv2.groups != 2:
            raise ValueError("Partnered needs the faces-pair layout: grouped convolutions (groups=2)")
        k, h = dense.in_features // 2, dense.out_features // 2
        with torch.no_grad():
            if dense.weight[:h, k:].abs().max() > 0 or dense.weight[h:, :k].abs().max() > 0:
                raise ValueError("Partnered needs a block-diagonal dense layer (each face's features apart)")
            a, b = conv1.out_channels // 2, conv2.out_channels // 2
            first = [_conv(conv1, slice(0, a)), nn.ReLU(), _conv(conv2, slice(0, b)), nn.ReLU(), nn.Flatten(),
                     _linear(dense.weight[:h, :k], dense.bias[:h]), nn.ReLU()]
            second = nn.Sequential(_conv(conv1, slice(a, 2 * a)), nn.ReLU(), _conv(conv2, slice(b, 2 * b)), nn.ReLU(),
                                   nn.Flatten(), _linear(dense.weight[h:, k:], dense.bias[h:]), nn.ReLU())
            p = partner.detach().float().reshape(1, *partner.shape[-3:])
            h2 = second(p).reshape(-1)
            folded = _linear(diff.weight[:, :h], diff.bias + diff.weight[:, h:] @ h2)
            rest = [_copy(m) for m in list(net)[8:]]
        super().__init__(*first, folded, *rest)
        self.eval().requires_grad_(False)


def _conv(conv: nn.Conv2d, out: slice) -> nn.Conv2d:
    """The group of ``conv`` that produces output channels ``out``, as an ungrouped convolution."""
    w = conv.weight[out]
    new = nn.Conv2d(w.shape[1], w.shape[0], conv.kernel_size, stride=conv.stride, padding=conv.padding)
    new.weight.data.copy_(w)
    new.bias.data.copy_(conv.bias[out])
    return new


def _linear(weight: torch.Tensor, bias: torch.Tensor) -> nn.Linear:
    new = nn.Linear(weight.shape[1], weight.shape[0])
    new.weight.data.copy_(weight)
    new.bias.data.copy_(bias)
    return new


def _copy(m: nn.Module) -> nn.Module:
    if isinstance(m, nn.Linear):
        return _linear(m.weight.detach(), m.bias.detach())
    return type(m)()


# --- pairs of rendered faces -------------------------------------------------------------------------

def sample_pairs(faces: torch.Tensor, person: torch.Tensor, n: int, rng: torch.Generator,
                 genuine_share: float = 0.5) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``n`` index pairs (i, k), i != k, into ``faces``: the first ``round(n * genuine_share)`` show the same
    person, the rest different people. Returns (i, k, same) with ``same`` 1 for genuine pairs."""
    n_same = round(n * genuine_share)
    first = torch.randint(0, len(faces), (4 * n + 16,), generator=rng)
    other = torch.randint(0, len(faces), (4 * n + 16,), generator=rng)
    same = person[first] == person[other]
    keep_same = (same & (first != other)).nonzero().reshape(-1)[:n_same]
    keep_diff = (~same).nonzero().reshape(-1)[: n - n_same]
    if len(keep_same) < n_same or len(keep_diff) < n - n_same:
        raise ValueError("not enough faces to draw that many pairs")
    idx = torch.cat([keep_same, keep_diff])
    label = torch.cat([torch.ones(n_same, dtype=torch.long), torch.zeros(n - n_same, dtype=torch.long)])
    return first[idx], other[idx], label


def render_pool(n: int, seed: int, split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` faces with every attribute random (orientation, hair, eyes, mouth) and identity jitter, and
    who they show."""
    src = FacesSource()
    rng = torch.Generator().manual_seed(seed)
    images, people = [], []
    for i in range(0, n, 512):
        _, x, _, state = src.sample(min(512, n - i), rng, split=split)
        images.append(x)
        people.append(state["person"])
    return torch.cat(images), torch.cat(people)


def heldout_pairs(n: int = 512, faces: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """Held-out pairs (n, 6, 32, 32) stacked on channels and their labels (1 same, 0 different), half each."""
    x, person = render_pool(faces, HELDOUT_PAIR_SEED, split="test")
    i, k, label = sample_pairs(x, person, n, torch.Generator().manual_seed(HELDOUT_PAIR_SEED + 1))
    return torch.cat([x[i], x[k]], 1), label


@torch.no_grad()
def pair_figures(model: nn.Module) -> dict[str, Any]:
    """Held-out pair accuracy, overall and on genuine / impostor pairs."""
    x, label = heldout_pairs()
    pred = model(x).argmax(1)
    right = (pred == label).float()
    return {"test_pair_accuracy": round(float(right.mean()), 4),
            "genuine_accuracy": round(float(right[label == 1].mean()), 4),
            "impostor_accuracy": round(float(right[label == 0].mean()), 4), "test_pairs": len(label)}


def build_pair(out: Path, steps: int = 3000, pool: int = 4096, samples: int = 20, log: Any = None) -> dict[str, Any]:
    """Train ``faces-pair`` on random pairs of a pool of rendered faces; write weights and sample pairs."""
    start = time.perf_counter()
    torch.manual_seed(0)
    x, person = render_pool(pool, PAIR_SEED)
    rng = torch.Generator().manual_seed(PAIR_SEED + 1)
    model = Siamese()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    batch = 64
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = 0.5 * 3e-3 * (1 + np.cos(np.pi * step / steps))
        i, k, label = sample_pairs(x, person, batch, rng)
        loss = nn.functional.cross_entropy(model(torch.cat([x[i], x[k]], 1)), label)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if log is not None and step % 500 == 0:
            log(f"faces-pair step {step}: loss {loss.item():.4f}")
    model.eval()
    net = model.export()
    seconds = time.perf_counter() - start
    out.mkdir(parents=True, exist_ok=True)
    weights, sample_file = out / "faces-pair.safetensors", out / "faces-pair-samples.npz"
    save_module(net, weights)
    pairs, labels = heldout_pairs(samples, faces=128)
    np.savez_compressed(sample_file, images=pairs.numpy().astype(np.float32), labels=labels.numpy().astype(np.int64),
                        ids=np.array([f"faces-pair:{j}" for j in range(samples)]))
    return {
        "name": "faces-pair", "kind": "network", "architecture": "faces_pair",
        "input_shape": [6, FACES_SIZE, FACES_SIZE],
        "dataset": f"pairs of procedural cartoon faces (two 3x32x32 faces stacked on channels; 1 same person, "
                   f"0 different), half genuine, drawn from {pool} faces with random orientation, hair, eyes, mouth "
                   f"and identity jitter, seed {PAIR_SEED}",
        "weights": weights.name, "sha256": sha256_file(weights),
        "samples": sample_file.name, "samples_sha256": sha256_file(sample_file),
        "recipe": f"siamese (shared ReLU trunk, head on |e(x1) - e(x2)|), exported to plain grouped layers; "
                  f"Adam lr 3e-3 with cosine decay, batch {batch} fresh random pairs, {steps} steps, cross-entropy, "
                  f"seed 0",
        "training_seconds": round(seconds, 1),
        "metrics": pair_figures(net),
    }

"""Inversion ``x -> z`` of an image into a generator's control space: an encoder's guess refined by
optimisation with restarts; the reconstruction error always comes with the control.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class Inversion:
    """A control ``z`` for an image and how far ``G(z)`` is from it.

    ``error`` is the root-mean-square pixel difference ``||G(z) - x||_2 / sqrt(#pixels)`` in the
    image's value range; ``max_error`` is the largest single pixel difference. A certificate about
    ``z`` speaks about ``G(z)``, so both belong in the record.
    """

    control: torch.Tensor
    error: float
    max_error: float
    restart: int


@torch.no_grad()
def reconstruction_error(generator: nn.Module, control: torch.Tensor, image: torch.Tensor) -> tuple[float, float]:
    """RMS and maximal pixel difference between ``G(control)`` and ``image`` (both without batch dim)."""
    out = generator(control.unsqueeze(0))[0]
    diff = (out - image.reshape(out.shape).to(out.dtype)).flatten()
    return float(diff.pow(2).mean().sqrt()), float(diff.abs().max())


def invert(generator: nn.Module, image: torch.Tensor, control_shape: tuple[int, ...],
           encoder: Callable[[torch.Tensor], torch.Tensor] | None = None, restarts: int = 3, steps: int = 150,
           lr: float = 0.05, spread: float = 0.5, bounds: tuple[torch.Tensor, torch.Tensor] | None = None,
           seed: int = 0) -> Inversion:
    """Find ``z`` with ``G(z)`` close to ``image`` (one image, without batch dimension).

    Start 0 is the encoder's guess (or the origin without an encoder); each further restart starts
    from that guess plus Gaussian noise of standard deviation ``spread``. Every start runs ``steps``
    of Adam on the mean squared pixel error; the best end point wins. ``bounds`` (lower, upper)
    keeps controls inside the region the generator was trained on. ``steps=0`` returns the encoder's
    guess as is. Deterministic for a given ``seed``.
    """
    if restarts < 1:
        raise ValueError("restarts must be >= 1")
    target = image.detach().unsqueeze(0).to(torch.float32)
    with torch.no_grad():
        if encoder is not None:
            guess = encoder(target).reshape(control_shape).to(torch.float32)
        else:
            guess = torch.zeros(control_shape)
    rng = torch.Generator().manual_seed(seed)
    starts = [guess] + [guess + spread * torch.randn(control_shape, generator=rng) for _ in range(restarts - 1)]
    best: Inversion | None = None
    for i, start in enumerate(starts):
        z = _clip(start.clone(), bounds)
        if steps > 0:
            z = _refine(generator, target, z, steps, lr, bounds)
        err, worst = reconstruction_error(generator, z, target[0])
        if best is None or err < best.error:
            best = Inversion(z, err, worst, i)
    assert best is not None
    return best


def invert_many(generator: nn.Module, images: torch.Tensor, control_shape: tuple[int, ...],
                encoder: Callable[[torch.Tensor], torch.Tensor] | None = None, restarts: int = 3, steps: int = 150,
                lr: float = 0.05, spread: float = 0.5, bounds: tuple[torch.Tensor, torch.Tensor] | None = None,
                seed: int = 0) -> list[Inversion]:
    """:func:`invert` of every image of ``images`` (batch first), all starts of all images as one batch.

    The same starts, steps and selection as :func:`invert` image by image: the loss is the sum of the per-start
    mean squared errors, so each start's gradient is its own, and Adam is elementwise. Only the rounding of the
    batched passes differs, so controls and errors agree with :func:`invert` to float32 rounding.
    """
    if restarts < 1:
        raise ValueError("restarts must be >= 1")
    n = images.shape[0]
    targets = images.detach().to(torch.float32)
    with torch.no_grad():
        if encoder is not None:
            guesses = encoder(targets).reshape(n, *control_shape).to(torch.float32)
        else:
            guesses = torch.zeros(n, *control_shape)
    rng = torch.Generator().manual_seed(seed)
    noise = [torch.zeros(control_shape)] + [spread * torch.randn(control_shape, generator=rng)
                                            for _ in range(restarts - 1)]
    z = torch.stack([_clip(guesses[i] + noise[r], bounds) for r in range(restarts) for i in range(n)])
    target = targets.repeat(restarts, *([1] * (targets.dim() - 1)))  # row r * n + i: image i, start r
    if steps > 0:
        z = _refine_many(generator, target, z, steps, lr, bounds)
    with torch.no_grad():
        out = generator(z)
        diff = (out - target.reshape(out.shape)).reshape(z.shape[0], -1)
        errors, worst = diff.pow(2).mean(dim=1).sqrt(), diff.abs().max(dim=1).values
    best: list[Inversion] = []
    for i in range(n):
        rows = [r * n + i for r in range(restarts)]
        r = min(range(restarts), key=lambda k: (float(errors[rows[k]]), k))  # the first of equals, as invert
        best.append(Inversion(z[rows[r]].clone(), float(errors[rows[r]]), float(worst[rows[r]]), r))
    return best


def _refine_many(generator: nn.Module, target: torch.Tensor, z: torch.Tensor, steps: int, lr: float,
                 bounds: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
    """:func:`_refine` of every row of ``z`` at once (each row keeps its own best point)."""
    z = z.clone().requires_grad_(True)
    opt = _Adam(z, lr)
    best_z, best_loss = z.detach().clone(), torch.full((z.shape[0],), float("inf"))
    for _ in range(steps):
        z.grad = None
        per_row = (generator(z) - target).pow(2).reshape(z.shape[0], -1).mean(dim=1)
        with torch.no_grad():
            better = per_row < best_loss
            best_loss = torch.where(better, per_row, best_loss)
            best_z[better] = z[better]
        per_row.sum().backward()
        opt.step()
        with torch.no_grad():
            z.copy_(_clip(z, bounds))
    with torch.no_grad():
        final = (generator(z) - target).pow(2).reshape(z.shape[0], -1).mean(dim=1)
        return torch.where((final < best_loss).reshape(-1, *([1] * (z.dim() - 1))), z, best_z).detach().clone()


def _clip(z: torch.Tensor, bounds: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
    return z if bounds is None else torch.maximum(torch.minimum(z, bounds[1]), bounds[0])


def _refine(generator: nn.Module, target: torch.Tensor, z: torch.Tensor, steps: int, lr: float,
            bounds: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
    z = z.clone().requires_grad_(True)
    opt = _Adam(z, lr)
    best_z, best_loss = z.detach().clone(), float("inf")
    for _ in range(steps):
        z.grad = None
        loss = (generator(z.unsqueeze(0)) - target).pow(2).mean()
        value = float(loss.detach())
        if value < best_loss:
            best_loss, best_z = value, z.detach().clone()
        loss.backward()
        opt.step()
        with torch.no_grad():
            z.copy_(_clip(z, bounds))
    with torch.no_grad():
        final = float((generator(z.unsqueeze(0)) - target).pow(2).mean())
    return z.detach().clone() if final < best_loss else best_z


class CachedInverter:
    """``invert(G, image) -> (control, error)`` for a generator's spec: :func:`invert` with restarts, seeded by
    :meth:`encoder` when there is one, cached per image content (a run inverts the same input once per mutation,
    strength and certifier); :meth:`invert_many` inverts the images not cached yet as one batch (the same search;
    it agrees with one-by-one inversion to float32 rounding, not bitwise). Subclasses give the encoder.
    """

    def __init__(self, control_shape: tuple[int, ...], restarts: int = 3, steps: int = 100, spread: float = 0.5,
                 bounds: tuple[torch.Tensor, torch.Tensor] | None = None):
        self.control_shape, self.restarts, self.steps = tuple(control_shape), restarts, steps
        self.spread, self.bounds = spread, bounds
        self._cache: dict[str, tuple[torch.Tensor, float]] = {}

    def encoder(self) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """The encoder whose guess starts the search (none: the origin)."""
        return None

    def __call__(self, generator: nn.Module, image: torch.Tensor) -> tuple[torch.Tensor, float]:
        key = _image_key(image)
        if key not in self._cache:
            result = invert(generator, image.float(), self.control_shape, encoder=self.encoder(),
                            restarts=self.restarts, steps=self.steps, spread=self.spread, bounds=self.bounds)
            self._cache[key] = (result.control, result.error)
        control, error = self._cache[key]
        return control.clone(), error

    def invert_many(self, generator: nn.Module, images: torch.Tensor) -> list[tuple[torch.Tensor, float]]:
        """``self(generator, image)`` for every image (batch first); the ones not cached are inverted as one batch."""
        keys = [_image_key(im) for im in images]
        todo = sorted({k: i for i, k in reversed(list(enumerate(keys))) if k not in self._cache}.values())
        if todo:
            results = invert_many(generator, images[todo].float(), self.control_shape, encoder=self.encoder(),
                                  restarts=self.restarts, steps=self.steps, spread=self.spread, bounds=self.bounds)
            for i, result in zip(todo, results, strict=True):
                self._cache[keys[i]] = (result.control, result.error)
        return [(self._cache[k][0].clone(), self._cache[k][1]) for k in keys]


def _image_key(image: torch.Tensor) -> str:
    return hashlib.sha256(image.detach().float().contiguous().numpy().tobytes()).hexdigest()


class _Adam:
    """``torch.optim.Adam`` (defaults, one CPU tensor) step for step, in the order of its single-tensor update.

    Constructing a torch optimizer imports ``torch._dynamo`` (about 4 s, more than torch itself) in every
    process that inverts an input; this is the same arithmetic without it.
    """

    def __init__(self, param: torch.Tensor, lr: float, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        self.param, self.lr, self.betas, self.eps = param, lr, betas, eps
        self.exp_avg = torch.zeros_like(param, memory_format=torch.preserve_format)
        self.exp_avg_sq = torch.zeros_like(param, memory_format=torch.preserve_format)
        self.step_count = 0.0

    @torch.no_grad()
    def step(self) -> None:
        grad = self.param.grad
        if grad is None:
            return
        beta1, beta2 = self.betas
        self.step_count += 1
        self.exp_avg.lerp_(grad, 1 - beta1)
        self.exp_avg_sq.mul_(beta2).addcmul_(grad, grad.conj(), value=1 - beta2)
        bias_correction1 = 1 - beta1**self.step_count
        bias_correction2 = 1 - beta2**self.step_count
        step_size = self.lr / bias_correction1
        denom = (self.exp_avg_sq.sqrt() / bias_correction2**0.5).add_(self.eps)
        self.param.addcdiv_(self.exp_avg, denom, value=-step_size)

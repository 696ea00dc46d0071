"""Resolvable transforms (General Lipschitz, Li et al.'s TSS): phi(x, beta) with a resolving function gamma.

``phi(phi(x, beta), alpha) == phi(x, gamma(alpha, beta))``; plugins register them through
``gcert_register_transforms`` and the ``smoothing`` certifier analyses the :class:`TransformRegion` they span.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from gcert.errors import GcertError
from gcert.regions import Box, Embed, Region


@dataclass(frozen=True)
class Distribution:
    """A one-parameter smoothing distribution: ``normal`` (mean ``loc``), ``lognormal`` (exp of N(loc, scale)),
    ``rayleigh`` (loc + Rayleigh(scale)) or ``chi4`` (loc + the length of a 4-d N(0, scale^2) vector)."""

    family: str
    scale: float
    loc: float = 0.0

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise GcertError(f"smoothing distribution {self.family!r} is not one of {', '.join(FAMILIES)}")
        if not (math.isfinite(self.scale) and self.scale > 0 and math.isfinite(self.loc)):
            raise GcertError(f"smoothing distribution {self.family} needs a finite scale > 0, got {self.scale}")

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """``n`` draws, float64."""
        s, loc = self.scale, self.loc
        if self.family == "normal":
            return loc + s * torch.randn(n, generator=generator, dtype=torch.float64)
        if self.family == "lognormal":
            return torch.exp(loc + s * torch.randn(n, generator=generator, dtype=torch.float64))
        k = 2 if self.family == "rayleigh" else 4
        return loc + s * torch.randn(n, k, generator=generator, dtype=torch.float64).norm(dim=1)

    def log_prob(self, a: torch.Tensor) -> torch.Tensor:
        """Log-density at ``a`` (differentiable; ``-inf`` outside the support)."""
        s, loc = self.scale, self.loc
        if self.family == "normal":
            return -0.5 * ((a - loc) / s) ** 2 - math.log(s * math.sqrt(2 * math.pi))
        if self.family == "lognormal":
            la = torch.log(a)
            return -0.5 * ((la - loc) / s) ** 2 - math.log(s * math.sqrt(2 * math.pi)) - la
        r = a - loc
        if self.family == "rayleigh":
            return torch.log(r) - 2 * math.log(s) - r**2 / (2 * s**2)
        return 3 * torch.log(r) - 4 * math.log(s) - math.log(2.0) - r**2 / (2 * s**2)

    def scaled(self, factor: float) -> Distribution:
        """The distribution of ``factor * a`` for additive and radius parameters (image-size scaling)."""
        return Distribution(self.family, self.scale * factor, self.loc * factor)

    def to_record(self) -> dict[str, Any]:
        return {"family": self.family, "scale": self.scale, "loc": self.loc}


FAMILIES = ("normal", "lognormal", "rayleigh", "chi4")


@dataclass(frozen=True)
class Param:
    """One parameter of a transform: its name and unit, the identity value, the allowed range, the paper's
    attack range ``attack`` and smoothing distribution, and whether it is in pixels (scaled with image size)."""

    name: str
    unit: str
    identity: float
    low: float
    high: float
    attack: tuple[float, float]
    smoothing: Distribution
    pixels: bool = False


PhiFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
GammaFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class ResolvableTransform:
    """A transform ``phi(x, beta)`` of an image ``x`` (C, H, W) at parameters ``beta`` (n, d) -> (n, C, H, W),
    and its resolving function ``gamma(alpha, beta)`` (elementwise over leading dims, last dim d) with
    ``phi(phi(x, beta), alpha) == phi(x, gamma(alpha, beta))``. ``reference_size`` is the image side the
    attack ranges and distributions of pixel parameters are stated for (the paper's 224)."""

    name: str
    params: tuple[Param, ...]
    phi: PhiFn
    gamma: GammaFn
    description: str = ""
    reference_size: int = 224
    additive_gaussian: bool = field(default=False)  # gamma(a, b) = a + b and every smoothing is normal: closed form
    affine: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None = None  # x -> (W, b): phi = W beta + b

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name or any(c.isspace() for c in self.name):
            raise GcertError(f"transform name must be a non-empty string without spaces, got {self.name!r}")
        if not self.params:
            raise GcertError(f"transform {self.name!r} has no parameters")
        for p in self.params:
            if not p.low <= p.identity <= p.high:
                raise GcertError(f"transform {self.name!r}: identity {p.identity} of {p.name} is outside "
                                 f"its allowed range [{p.low}, {p.high}]")

    @property
    def dim(self) -> int:
        return len(self.params)

    @property
    def identity(self) -> torch.Tensor:
        return torch.tensor([p.identity for p in self.params], dtype=torch.float64)

    def factor(self, image_shape: Sequence[int]) -> float:
        """How much pixel parameters shrink on images of ``image_shape`` against the reference size."""
        return min(int(image_shape[-1]), int(image_shape[-2])) / self.reference_size

    def region(self, image: torch.Tensor, delta: float = 1.0) -> TransformRegion:
        """The paper's attack range scaled to the image and by ``delta`` about the identity, with the paper's
        smoothing distributions scaled to the image."""
        if not (math.isfinite(delta) and delta >= 0):
            raise GcertError(f"transform {self.name!r}: delta scales the attack range and must be >= 0, got {delta}")
        f = self.factor(image.shape)
        lo, hi, dists = [], [], []
        for p in self.params:
            k = f if p.pixels else 1.0
            lo.append(p.identity + delta * (p.attack[0] * k - p.identity))
            hi.append(p.identity + delta * (p.attack[1] * k - p.identity))
            dists.append(p.smoothing.scaled(k) if p.pixels else p.smoothing)
        return TransformRegion(self, image, torch.tensor(lo, dtype=torch.float64),
                               torch.tensor(hi, dtype=torch.float64), tuple(dists))


class TransformEmbed(nn.Module):
    """``t -> phi(image, t)``: parameters (batch, d) to images (batch, C, H, W) of a fixed clean image."""

    def __init__(self, transform: ResolvableTransform, image: torch.Tensor):
        super().__init__()
        self.transform = transform
        self.register_buffer("image", image.detach())

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        out = self.transform.phi(self.image.to(torch.float64), t.to(torch.float64).reshape(-1, self.transform.dim))
        return out.to(t.dtype if t.is_floating_point() else self.image.dtype)


class TransformRegion(Region):
    """The parameter box ``[lower, upper]`` of a resolvable transform of one clean image, with the smoothing
    distribution of each parameter. Only probabilistic certifiers (``smoothing``) analyse it: ``phi`` is not
    affine in its parameters in general."""

    kind = "transform"

    def __init__(self, transform: ResolvableTransform, image: torch.Tensor, lower: torch.Tensor,
                 upper: torch.Tensor, smoothing: tuple[Distribution, ...]):
        lower, upper = lower.detach().reshape(-1).double(), upper.detach().reshape(-1).double()
        if lower.numel() != transform.dim or upper.numel() != transform.dim or len(smoothing) != transform.dim:
            raise GcertError(f"transform {transform.name!r} has {transform.dim} parameters; "
                             f"give that many bounds and distributions")
        for i, p in enumerate(transform.params):
            lo, hi = float(lower[i]), float(upper[i])
            if not (math.isfinite(lo) and math.isfinite(hi) and lo <= hi):
                raise GcertError(f"transform {transform.name!r}: range of {p.name} [{lo}, {hi}] is empty or not finite")
            if lo < p.low or hi > p.high:
                raise GcertError(f"transform {transform.name!r}: range of {p.name} [{lo:g}, {hi:g}] leaves its "
                                 f"allowed range [{p.low:g}, {p.high:g}]; give a smaller --delta")
        self.transform, self.image, self.smoothing = transform, image.detach(), tuple(smoothing)
        self._lower, self._upper = lower, upper

    @property
    def lower(self) -> torch.Tensor:
        return self._lower

    @property
    def upper(self) -> torch.Tensor:
        return self._upper

    def embedding(self) -> nn.Module:
        return TransformEmbed(self.transform, self.image)

    def origin(self) -> torch.Tensor:
        return self.transform.identity

    def sample_smoothing(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """``n`` smoothing parameters alpha (n, d), independent per parameter."""
        return torch.stack([d.sample(n, generator) for d in self.smoothing], dim=1)

    def log_density(self, alpha: torch.Tensor) -> torch.Tensor:
        """``log tau(alpha)`` for alpha (..., d)."""
        return sum(d.log_prob(alpha[..., i]) for i, d in enumerate(self.smoothing))

    def affine_box(self) -> AffineParameterBox:
        """The same parameter box for deterministic certifiers, when ``phi`` is affine in its parameters."""
        if self.transform.affine is None:
            raise GcertError(f"transform {self.transform.name!r} is not affine in its parameters; only smoothing "
                             "certifies it")
        weight, bias = self.transform.affine(self.image.to(torch.float64))
        return AffineParameterBox(self.lower, self.upper, self.origin(), weight, bias, tuple(self.image.shape))

    def to_record(self) -> dict[str, Any]:
        return {
            "kind": self.kind, "dim": self.dim, "transform": self.transform.name,
            "params": [{"name": p.name, "unit": p.unit, "identity": p.identity, "range": [float(lo), float(hi)],
                        "smoothing": d.to_record()}
                       for p, lo, hi, d in zip(self.transform.params, self.lower, self.upper, self.smoothing,
                                               strict=True)],
        }


class AffineParameterBox(Box):
    """A box of transform parameters ``t`` mapped to images by ``weight @ t + bias`` (brightness, contrast and
    their composition): a ``box`` region every deterministic certifier takes (``exactline`` when one-dimensional)."""

    def __init__(self, lower: torch.Tensor, upper: torch.Tensor, center: torch.Tensor, weight: torch.Tensor,
                 bias: torch.Tensor, image_shape: tuple[int, ...]):
        super().__init__(lower, upper, center)
        self.weight, self.bias, self.image_shape = weight.reshape(-1, lower.numel()), bias.reshape(-1), image_shape

    def embedding(self) -> nn.Module:
        return Embed(self.weight, self.bias, self.image_shape)

    def to_record(self) -> dict[str, Any]:
        return {**super().to_record(), "affine_parameters": True}

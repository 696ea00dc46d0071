"""Regions of controls: the segment of GCert, boxes, and pixel Lp balls.

A region is described to certifiers in the coordinates ``t`` of the composed network: a box
``[lower, upper]`` in ``t`` plus an affine ``embedding`` from ``t`` to the control. Lp balls add
the norm constraint, which only sampling and dual-norm certifiers use; interval bounds use the box.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Any

import torch
from torch import nn


class Embed(nn.Module):
    """``t -> bias + weight @ t``, reshaped to the control shape (``Linear(k, dim)`` of DESIGN 1).

    The weights are float64 and so is the arithmetic, whatever the input's precision, so a segment whose ends are
    float64 is analysed as given (a float32 layer would round ``end - start``); the control is returned in the
    input's own dtype, so a float32 ``t`` feeds a float32 generator, rounded once.
    """

    def __init__(self, weight: torch.Tensor | None, bias: torch.Tensor, control_shape: tuple[int, ...]):
        super().__init__()
        self.control_shape = tuple(control_shape)
        n = bias.numel()
        self.linear = nn.Linear(n if weight is None else weight.shape[1], n, dtype=torch.float64)
        with torch.no_grad():
            if weight is None:
                self.linear.weight.copy_(torch.eye(n, dtype=torch.float64))
            else:
                self.linear.weight.copy_(weight.to(torch.float64))
            self.linear.bias.copy_(bias.reshape(-1).to(torch.float64))
        self.linear.requires_grad_(False)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.linear(t.to(torch.float64)).to(t.dtype).reshape(-1, *self.control_shape)


class Region(ABC):
    """A set of controls, parametrised by ``t`` in the box ``[lower, upper]``."""

    kind: str

    @property
    @abstractmethod
    def lower(self) -> torch.Tensor:
        """Lower bounds of ``t`` (1-D)."""

    @property
    @abstractmethod
    def upper(self) -> torch.Tensor:
        """Upper bounds of ``t`` (1-D)."""

    @property
    def dim(self) -> int:
        return int(self.lower.numel())

    @abstractmethod
    def embedding(self) -> nn.Module:
        """The affine map from ``t`` (batch, dim) to controls (batch, *control_shape)."""

    @abstractmethod
    def origin(self) -> torch.Tensor:
        """The ``t`` of the unmutated input."""

    def contains(self, t: torch.Tensor, tol: float = 1e-6) -> bool:
        """Whether ``t`` (1-D) lies in the region, up to ``tol``."""
        t = t.reshape(-1).to(self.lower.dtype)
        return bool(((t >= self.lower - tol) & (t <= self.upper + tol)).all())

    def project(self, t: torch.Tensor) -> torch.Tensor:
        """Map points (batch, dim) into the region (used by falsifiers)."""
        return torch.maximum(torch.minimum(t, self.upper), self.lower)

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` points of the region, (n, dim), uniform in its ``t`` box."""
        u = torch.rand(n, self.dim, generator=generator, dtype=self.lower.dtype)
        return self.lower + u * (self.upper - self.lower)

    @abstractmethod
    def to_record(self) -> dict[str, Any]:
        """A small JSON description for the certificate."""


class Segment(Region):
    """``t in [0, 1] -> start + t * (end - start)``: one mutation of one strength (GCert's region)."""

    kind = "segment"

    def __init__(self, start: torch.Tensor, end: torch.Tensor, direction: dict[str, Any] | None = None):
        if start.shape != end.shape:
            raise ValueError(f"segment ends differ in shape: {tuple(start.shape)} vs {tuple(end.shape)}")
        self.start, self.end = start.detach(), end.detach()
        self.direction = direction  # how the direction was found (e.g. its singular value), kept in the record

    @property
    def lower(self) -> torch.Tensor:
        return torch.zeros(1, dtype=torch.float64)

    @property
    def upper(self) -> torch.Tensor:
        return torch.ones(1, dtype=torch.float64)

    def embedding(self) -> nn.Module:
        weight = (self.end.to(torch.float64) - self.start.to(torch.float64)).reshape(-1, 1)
        return Embed(weight, self.start, tuple(self.start.shape))

    def origin(self) -> torch.Tensor:
        return self.lower

    def to_record(self) -> dict[str, Any]:
        record = {"kind": self.kind, "dim": 1, "length": float((self.end - self.start).norm())}
        return record if self.direction is None else {**record, "direction": self.direction}


class Box(Region):
    """Every control in ``[lower, upper]`` (several mutations at once, or a VNN-LIB input box)."""

    kind = "box"

    def __init__(self, lower: torch.Tensor, upper: torch.Tensor, center: torch.Tensor | None = None):
        if lower.shape != upper.shape or bool((lower > upper).any()):
            raise ValueError("box needs lower <= upper of the same shape")
        if not (bool(torch.isfinite(lower).all()) and bool(torch.isfinite(upper).all())):
            raise ValueError("box bounds must be finite")
        self.control_shape = tuple(lower.shape)
        # float64 holds every float32 bound exactly, and bounds given in float64 are never rounded inward.
        self._lower = lower.detach().reshape(-1).to(torch.float64)
        self._upper = upper.detach().reshape(-1).to(torch.float64)
        mid = (self._lower + self._upper) / 2
        self._center = mid if center is None else center.detach().reshape(-1).to(torch.float64)

    @property
    def lower(self) -> torch.Tensor:
        return self._lower

    @property
    def upper(self) -> torch.Tensor:
        return self._upper

    def embedding(self) -> nn.Module:
        return Reshape(self.control_shape)

    def origin(self) -> torch.Tensor:
        return self._center

    def to_record(self) -> dict[str, Any]:
        return {"kind": self.kind, "dim": self.dim, "max_width": float((self.upper - self.lower).max())}


class LpBall(Box):
    """``{x : ||x - center||_p <= eps}`` intersected with the value range ``clip``.

    Clipping a point of the ball into the value box keeps it in the ball (each coordinate moves
    toward the center, which is inside the box), so :meth:`project` is ball projection then clip.
    """

    kind = "lp-ball"

    def __init__(self, center: torch.Tensor, eps: float, p: float, clip: tuple[float, float] | None = (0, 1)):
        if eps < 0:
            raise ValueError(f"ball radius must be >= 0, got {eps}")
        if p not in (1, 2, math.inf):
            raise ValueError(f"p must be 1, 2 or inf, got {p}")
        if not math.isfinite(eps):
            raise ValueError(f"ball radius must be finite, got {eps}")
        self.center, self.eps, self.p, self.clip = center.detach(), float(eps), float(p), clip
        # The bounding box in float64, each end moved one ulp outward: center -+ eps rounded to the nearest
        # float64 could land inside the ball and leave part of it out of the box certifiers bound.
        c64 = center.detach().to(torch.float64)
        lo = torch.nextafter(c64 - self.eps, torch.tensor(-math.inf, dtype=torch.float64))
        hi = torch.nextafter(c64 + self.eps, torch.tensor(math.inf, dtype=torch.float64))
        if clip is not None:
            lo, hi = lo.clamp(*clip), hi.clamp(*clip)
        super().__init__(lo, hi, c64)

    def contains(self, t: torch.Tensor, tol: float = 1e-6) -> bool:
        dist = (t.reshape(-1) - self._center).norm(p=self.p)
        return bool(dist <= self.eps * (1 + 1e-6) + tol) and super().contains(t, tol)

    def project(self, t: torch.Tensor) -> torch.Tensor:
        delta = t - self._center
        if self.p == math.inf:
            delta = delta.clamp(-self.eps, self.eps)
        elif self.p == 2:
            norms = delta.norm(dim=1, keepdim=True).clamp_min(1e-30)
            delta = delta * (self.eps / norms).clamp(max=1.0)
        else:
            delta = _project_l1(delta, self.eps)
        return super().project(self._center + delta)

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        d, dt = self.dim, self._center.dtype
        if self.p == math.inf:
            return super().sample(n, generator)
        if self.p == 2:
            g = torch.randn(n, d, generator=generator, dtype=dt)
            g = g / g.norm(dim=1, keepdim=True)
            r = torch.rand(n, 1, generator=generator, dtype=dt) ** (1.0 / d)
            delta = g * r * self.eps
        else:
            # Uniform in the L1 ball: d+1 exponentials normalised by their sum, random signs.
            # clamp to the smallest normal number of the dtype (1e-300 underflows to 0 in float32)
            e = -torch.log(torch.rand(n, d + 1, generator=generator, dtype=dt).clamp_min(torch.finfo(dt).tiny))
            signs = torch.randint(0, 2, (n, d), generator=generator).to(dt) * 2 - 1
            delta = signs * e[:, :d] / e.sum(dim=1, keepdim=True) * self.eps
        return super().project(self._center + delta)

    def to_record(self) -> dict[str, Any]:
        p = "inf" if self.p == math.inf else int(self.p)
        return {"kind": self.kind, "dim": self.dim, "p": p, "eps": self.eps}


def _project_l1(delta: torch.Tensor, eps: float) -> torch.Tensor:
    """Euclidean projection of each row onto the L1 ball of radius ``eps`` (Duchi et al. 2008)."""
    a = delta.abs()
    inside = a.sum(dim=1) <= eps
    mu, _ = torch.sort(a, dim=1, descending=True)
    cums = mu.cumsum(dim=1) - eps
    ks = torch.arange(1, a.shape[1] + 1, dtype=a.dtype)
    rho = ((mu - cums / ks) > 0).to(a.dtype).mul(ks).argmax(dim=1, keepdim=True)
    theta = cums.gather(1, rho) / (rho + 1).to(a.dtype)
    out = delta.sign() * (a - theta).clamp_min(0)
    return torch.where(inside.unsqueeze(1), delta, out)


class Reshape(nn.Module):
    """Reshape a flat batch to ``shape`` (the embedding of boxes and balls)."""

    def __init__(self, shape: tuple[int, ...]):
        super().__init__()
        self.shape = tuple(shape)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return t.reshape(-1, *self.shape)

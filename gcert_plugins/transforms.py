"""Built-in resolvable transforms (General Lipschitz, Table 1) and the mutations that reach them.

Brightness ``x + b``, contrast ``c * x``, gamma ``x ** g``, translation (sub-pixel, reflection padding) and Gaussian
blur, and the paper's compositions. Spatial ones act in Fourier space on the reflected, odd-period extension of the
image, where shifts and blurs compose exactly. Attack ranges and smoothing distributions are the paper's (for
224-pixel images; pixel parameters scale with the image).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

import gcert
from gcert.contracts import Mutation
from gcert.regions import Region
from gcert.transforms import Distribution, Param, ResolvableTransform

INF = 1e6


def reflect_extend(x: torch.Tensor) -> torch.Tensor:
    """``[x0 .. x_{n-1}, x_{n-1} .. x1]`` along both image axes: period ``2n - 1`` (odd, so real shifts stay real)."""
    x = torch.cat([x, x.flip(-1)[..., :-1]], dim=-1)
    return torch.cat([x, x.flip(-2)[..., :-1, :]], dim=-2)


def spatial(x: torch.Tensor, tx: torch.Tensor | None, ty: torch.Tensor | None, radius: torch.Tensor | None,
            ) -> torch.Tensor:
    """Translate by ``(tx, ty)`` pixels (right, down) and blur with a Gaussian of std ``radius`` pixels:
    x (C, H, W), parameters (n,) -> (n, C, H, W); or x (n, C, H, W), one parameter row per image.
    Band-limited shift and blur of the reflected extension."""
    h, w = x.shape[-2:]
    ext = reflect_extend(x.to(torch.float64))
    big_h, big_w = ext.shape[-2:]
    spec = torch.fft.fft2(ext)
    fy = torch.fft.fftfreq(big_h, dtype=torch.float64).reshape(1, -1, 1)
    fx = torch.fft.fftfreq(big_w, dtype=torch.float64).reshape(1, 1, -1)
    n = next(p for p in (tx, ty, radius) if p is not None).shape[0]
    mult = torch.ones(n, big_h, big_w, dtype=torch.complex128)
    if tx is not None:
        mult = mult * torch.exp(-2j * math.pi * fx * tx.reshape(-1, 1, 1) - 2j * math.pi * fy * ty.reshape(-1, 1, 1))
    if radius is not None:
        mult = mult * torch.exp(-2 * math.pi**2 * radius.reshape(-1, 1, 1) ** 2 * (fx**2 + fy**2))
    out = torch.fft.ifft2((spec if x.dim() == 4 else spec.unsqueeze(0)) * mult.unsqueeze(1)).real
    return out[..., :h, :w]


def _norm(scale: float) -> Distribution:
    return Distribution("normal", scale)


def _lognorm(scale: float) -> Distribution:
    return Distribution("lognormal", scale)


def _gamma_dist(scale: float) -> Distribution:
    # The paper's Rayleigh(0.1) for gamma, placed so its mode is the identity 1 (gamma > 0 and resolves by products).
    return Distribution("rayleigh", scale, 1.0 - scale)


def _blur_dist(scale: float) -> Distribution:
    # Not the paper's Rayleigh: with theta = sqrt(alpha^2 + beta^2) a Rayleigh radius leaves rho_beta(theta) > 0 at
    # the edge theta = beta of its support, and the gradient of h gains a boundary term that Lemma 1's eta misses.
    # chi with 4 degrees of freedom vanishes there to second order, so dh/dbeta = E[f eta] holds.
    return Distribution("chi4", scale)


def brightness_p(r: float = 0.2, s: float = 0.4) -> Param:
    return Param("b", "intensity", 0.0, -INF, INF, (-r, r), _norm(s))


def contrast_p(lo: float = 0.8, hi: float = 1.25, s: float = 0.4) -> Param:
    return Param("c", "factor", 1.0, 1e-6, INF, (lo, hi), _lognorm(s))


def gamma_p(lo: float = 1.0, hi: float = 2.0, s: float = 0.1) -> Param:
    return Param("g", "exponent", 1.0, 1e-6, INF, (lo, hi), _gamma_dist(s))


def shift_ps(r: float = 56.0, s: float = 30.0) -> tuple[Param, Param]:
    return (Param("tx", "px", 0.0, -INF, INF, (-r, r), _norm(s), pixels=True),
            Param("ty", "px", 0.0, -INF, INF, (-r, r), _norm(s), pixels=True))


def blur_p(lo: float = 1.0, hi: float = 3.0, s: float = 2.0) -> Param:
    return Param("r", "px", 0.0, 0.0, INF, (lo, hi), _blur_dist(s), pixels=True)


def _stack(*cols: torch.Tensor) -> torch.Tensor:
    return torch.stack(cols, dim=-1)


def _b(v: torch.Tensor, n: int) -> torch.Tensor:
    return v[:, n].reshape(-1, 1, 1, 1)


# phi(x, beta) for beta (n, d), and gamma(alpha, beta) with phi(phi(x, beta), alpha) = phi(x, gamma(alpha, beta)).
def _transforms() -> list[ResolvableTransform]:
    add: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = lambda a, b: a + b  # noqa: E731
    mul: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = lambda a, b: a * b  # noqa: E731
    return [
        ResolvableTransform(
            "brightness", (brightness_p(),), lambda x, p: x + _b(p, 0), add,
            "x + b", additive_gaussian=True, affine=lambda x: (torch.ones_like(x).reshape(-1, 1), x.reshape(-1))),
        ResolvableTransform(
            "contrast", (contrast_p(),), lambda x, p: _b(p, 0) * x, mul, "c * x",
            affine=lambda x: (x.reshape(-1, 1), torch.zeros_like(x).reshape(-1))),
        ResolvableTransform(
            "gamma", (gamma_p(1.0, 2.0),), lambda x, p: x.clamp_min(0) ** _b(p, 0), mul, "x ** g, g in [1, 2]"),
        ResolvableTransform(
            "gamma-below", (gamma_p(0.5, 1.0),), lambda x, p: x.clamp_min(0) ** _b(p, 0), mul,
            "x ** g, g in [0.5, 1]"),
        ResolvableTransform(
            "translation", shift_ps(56.0, 50.0), lambda x, p: spatial(x, p[:, 0], p[:, 1], None), add,
            "sub-pixel translation (tx, ty) with reflection padding", additive_gaussian=True),
        ResolvableTransform(
            "blur", (blur_p(),), lambda x, p: spatial(x, None, None, p[:, 0]),
            lambda a, b: torch.sqrt(a**2 + b**2), "Gaussian blur of std r pixels"),
        ResolvableTransform(
            "contrast-brightness", (contrast_p(0.5, 2.0, 0.6), brightness_p(0.4, 0.6)),
            lambda x, p: _b(p, 0) * x + _b(p, 1),
            lambda a, b: _stack(a[..., 0] * b[..., 0], a[..., 0] * b[..., 1] + a[..., 1]), "c * x + b",
            affine=lambda x: (torch.stack([x.reshape(-1), torch.ones_like(x).reshape(-1)], 1),
                              torch.zeros_like(x).reshape(-1))),
        ResolvableTransform(
            "gamma-contrast", (gamma_p(0.8, 1.4, 0.1), contrast_p(0.6, 2.0, 0.1)),
            lambda x, p: _b(p, 1) * x.clamp_min(0) ** _b(p, 0),
            lambda a, b: _stack(a[..., 0] * b[..., 0], a[..., 1] * b[..., 1] ** a[..., 0]), "c * x ** g"),
        ResolvableTransform(
            "brightness-translation", (brightness_p(0.2, 0.4), *shift_ps(56.0, 30.0)),
            lambda x, p: spatial(x, p[:, 1], p[:, 2], None) + _b(p, 0), add, "T(x) + b",
            additive_gaussian=True),
        ResolvableTransform(
            "contrast-translation", (contrast_p(0.5, 2.0, 0.4), *shift_ps(56.0, 30.0)),
            lambda x, p: _b(p, 0) * spatial(x, p[:, 1], p[:, 2], None),
            lambda a, b: _stack(a[..., 0] * b[..., 0], a[..., 1] + b[..., 1], a[..., 2] + b[..., 2]), "c * T(x)"),
        ResolvableTransform(
            "contrast-brightness-translation", (contrast_p(0.8, 1.5, 0.8), brightness_p(0.2, 0.8), *shift_ps(25, 50)),
            lambda x, p: _b(p, 0) * spatial(x, p[:, 2], p[:, 3], None) + _b(p, 1),
            lambda a, b: _stack(a[..., 0] * b[..., 0], a[..., 0] * b[..., 1] + a[..., 1], a[..., 2] + b[..., 2],
                                a[..., 3] + b[..., 3]), "c * T(x) + b"),
        ResolvableTransform(
            "translation-blur-brightness-contrast",
            (*shift_ps(3.0, 30.0), blur_p(1.0, 3.0, 2.0), brightness_p(0.1, 0.8), contrast_p(0.95, 1.05, 0.8)),
            lambda x, p: _b(p, 4) * (spatial(x, p[:, 0], p[:, 1], p[:, 2]) + _b(p, 3)),
            lambda a, b: _stack(a[..., 0] + b[..., 0], a[..., 1] + b[..., 1],
                                torch.sqrt(a[..., 2] ** 2 + b[..., 2] ** 2), b[..., 3] + a[..., 3] / b[..., 4],
                                a[..., 4] * b[..., 4]),
            "c * (blur_r(T(x)) + b)"),
    ]


@gcert.hookimpl
def gcert_register_transforms(register: Callable[[ResolvableTransform], None]) -> None:
    for t in _transforms():
        register(t)


def gain_direction(generator: object, image: torch.Tensor) -> torch.Tensor:
    """GL's contrast ``c * x`` with ``c = 1 + delta``: the change per unit is the image itself."""
    return image.clone()


@gcert.hookimpl
def gcert_register_mutations(register: Callable[[Mutation], None]) -> None:
    register(Mutation("gain", "pixel", "pixel", "factor", 0.1, direction=gain_direction,
                      description="GL's contrast c * x with c = 1 + delta (a segment; saturates at 0 and 1)"))
    names = {"brightness": "brightness-offset", "contrast": "contrast-gain"}
    for t in _transforms():
        ranges = ", ".join(f"{p.name} in [{p.attack[0]:g}, {p.attack[1]:g}]" for p in t.params)
        px = " (px at 224 px, scaled to the image)" if any(p.pixels for p in t.params) else ""
        register(Mutation(names.get(t.name, t.name), "pixel", "pixel", "x attack range", 1.0, transform=t,
                          description=f"{t.description}: {ranges}{px}; smoothing only"))


@gcert.hookimpl
def gcert_input_region(mutation: Mutation, generator: object, control: torch.Tensor, delta: float) -> Region | None:
    if mutation.transform is None:
        return None
    return mutation.transform.region(control, delta)

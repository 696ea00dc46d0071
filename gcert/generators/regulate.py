"""Regulating a generator for GCert (section 5.2): the continuity term, the piecewise-linear output,
BatchNorm folding for analysis, and measurement of the continuity constant C (Appendix A).
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn


class PiecewiseLinearOutput(nn.Module):
    """The piecewise-linear last layer of a generator: ``ReLU(1 - ReLU(x))`` for images in [0, 1].

    For images in [-1, 1] it is ``ReLU(2 - ReLU(x)) - 1``. Both equal ``clamp(1 - x, lo, hi)``:
    a *decreasing* clamp, which the preceding layer absorbs by learning the sign. Unlike sigmoid or
    tanh it is piecewise linear, so exact certifiers stay exact through it (GCert section 6).
    Written with ``torch.relu`` calls so every tracer (torch.fx, auto_LiRPA) sees two ReLUs.
    """

    def __init__(self, value_range: tuple[float, float] = (0.0, 1.0)):
        super().__init__()
        if tuple(value_range) not in ((0.0, 1.0), (-1.0, 1.0)):
            raise ValueError(f"value_range must be (0, 1) or (-1, 1), got {value_range}")
        self.value_range = tuple(float(v) for v in value_range)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.value_range[0] == 0.0:
            return torch.relu(1 - torch.relu(x))
        return torch.relu(2 - torch.relu(x)) - 1

    def extra_repr(self) -> str:
        return f"value_range={self.value_range}"


def continuity_loss(generator: nn.Module, z0: torch.Tensor, zT: torch.Tensor, lam: torch.Tensor | None = None,
                    rng: torch.Generator | None = None) -> torch.Tensor:
    """GCert's regulation term (Eq. 14), averaged over the batch.

    With ``zt = z0 + lam * (zT - z0)`` it is ``|| lam * G(zT) + (1 - lam) * G(z0) - G(zt) ||_2`` per
    sample: how far ``G(zt)`` lies from the straight image segment between ``G(z0)`` and ``G(zT)``.
    ``lam`` defaults to ``U(0, 1)`` per sample (drawn from ``rng``). Add it, weighted, to the
    generator's usual training loss; gradients flow through all three generator calls.

    Eq. 14 is printed with ``- (1 - lam) * G(z0)``. Taken literally that is not zero even for an
    affine ``G``, and at ``lam -> 0`` it asks for ``G(z0) = -G(z0)``, pulling every image to 0 (a
    collapse); the paper's own reading ("G(z_t) stays in the shortest path connecting G(z0) and
    G(zT)") needs ``+``, which is what this computes: zero exactly when ``G`` is affine on the segment.
    """
    if z0.shape != zT.shape:
        raise ValueError(f"z0 and zT differ in shape: {tuple(z0.shape)} vs {tuple(zT.shape)}")
    n = z0.shape[0]
    if lam is None:
        lam = torch.rand(n, generator=rng, dtype=z0.dtype, device=z0.device)
    lam = lam.reshape(n, *([1] * (z0.dim() - 1)))
    zt = z0 + lam * (zT - z0)
    out = generator(torch.cat([z0, zt, zT]))
    g0, gt, gT = out[:n], out[n : 2 * n], out[2 * n :]
    lam_img = lam.reshape(n, *([1] * (g0.dim() - 1)))
    residual = lam_img * gT + (1 - lam_img) * g0 - gt
    return residual.flatten(1).norm(dim=1).mean()


_FOLDABLE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.ConvTranspose2d)


def fold_batchnorm(module: nn.Module) -> nn.Module:
    """A copy of ``module`` in which every BatchNorm that follows a Linear/Conv/ConvTranspose layer
    inside an ``nn.Sequential`` is folded into that layer's weight and bias (eval-mode statistics).

    The result computes the same function in eval mode (up to float rounding) with one affine layer
    less per BatchNorm, which is what certifiers should analyse. A BatchNorm that does not follow a
    foldable layer is an error, not a silent leftover.
    """
    out = copy.deepcopy(module).eval()
    return _fold(out)


def _fold(module: nn.Module) -> nn.Module:
    if isinstance(module, nn.Sequential):
        layers: list[nn.Module] = []
        for child in module:
            if not isinstance(child, nn.modules.batchnorm._BatchNorm):
                child = _fold(child)
            if isinstance(child, nn.modules.batchnorm._BatchNorm):
                if not layers or not isinstance(layers[-1], _FOLDABLE):
                    raise ValueError(f"cannot fold {type(child).__name__}: it does not follow a Linear or Conv layer")
                layers[-1] = _fold_pair(layers[-1], child)
            else:
                layers.append(child)
        return nn.Sequential(*layers)
    for name, child in list(module.named_children()):
        setattr(module, name, _fold(child))
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        raise ValueError("cannot fold a BatchNorm outside an nn.Sequential; put it right after its layer")
    return module


@torch.no_grad()
def _fold_pair(layer: nn.Module, bn: nn.modules.batchnorm._BatchNorm) -> nn.Module:
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("cannot fold a BatchNorm without running statistics (track_running_stats=False)")
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps) if bn.affine else 1 / torch.sqrt(bn.running_var + bn.eps)
    shift = bn.bias if bn.affine else torch.zeros_like(bn.running_mean)
    folded = copy.deepcopy(layer)
    weight = folded.weight
    # ConvTranspose keeps output channels on axis 1 of its weight; Linear and Conv on axis 0.
    axis = 1 if isinstance(layer, nn.ConvTranspose2d) else 0
    shape = [1] * weight.dim()
    shape[axis] = -1
    if weight.shape[axis] != scale.numel():
        raise ValueError(f"BatchNorm over {scale.numel()} channels follows a layer with {weight.shape[axis]} outputs")
    folded.weight.copy_(weight * scale.reshape(shape))
    bias = layer.bias if layer.bias is not None else torch.zeros_like(bn.running_mean)
    new_bias = (bias - bn.running_mean) * scale + shift
    if folded.bias is None:
        folded.bias = nn.Parameter(new_bias.clone())
    else:
        folded.bias.copy_(new_bias)
    return folded


@dataclass(frozen=True)
class ContinuityReport:
    """The bi-Lipschitz figures of Eq. 7 measured on pairs of latent points.

    ``ratio`` is ``||G(z) - G(z')||_2 / ||z - z'||_2`` (image in its value range, Euclidean latent).
    ``c`` is the smallest C with ``d(z,z')/C <= d(Gz,Gz') <= C d(z,z')`` on the pairs that do not
    collapse; ``c_scaled = sqrt(ratio_max / ratio_min)`` is the same after the best rescaling of
    the image metric (the paper's d_M is only defined up to such a scale). ``collapse_share`` is the
    share of pairs whose images are identical in 8 bits (every pixel within ``collapse_tol``): such
    pairs violate the left bound for every C.
    """

    pairs: int
    ratio_min: float
    ratio_max: float
    ratio_p01: float
    ratio_p99: float
    c: float
    c_scaled: float
    collapse_share: float

    def to_dict(self, digits: int = 4) -> dict[str, Any]:
        return {k: (round(v, digits) if isinstance(v, float) and math.isfinite(v) else v)
                for k, v in asdict(self).items()}


@torch.no_grad()
def measure_continuity(generator: nn.Module, z0: torch.Tensor, z1: torch.Tensor, collapse_tol: float = 0.5 / 255,
                       batch: int = 1024) -> ContinuityReport:
    """Measure both sides of the continuity bound (Eq. 7) on the latent pairs ``(z0[i], z1[i])``."""
    if z0.shape != z1.shape or z0.shape[0] == 0:
        raise ValueError("z0 and z1 must be non-empty batches of the same shape")
    dz = (z0 - z1).flatten(1).norm(dim=1)
    dx, same = [], []
    for i in range(0, z0.shape[0], batch):
        a, b = generator(z0[i : i + batch]), generator(z1[i : i + batch])
        diff = (a - b).flatten(1)
        dx.append(diff.norm(dim=1))
        same.append(diff.abs().amax(dim=1) <= collapse_tol)
    dxt, collapsed = torch.cat(dx).double(), torch.cat(same)
    keep = (~collapsed) & (dz > 0)
    ratio = dxt[keep] / dz[keep].double()
    if ratio.numel() == 0:
        nan = float("nan")
        return ContinuityReport(int(z0.shape[0]), 0.0, 0.0, nan, nan, math.inf, math.inf, 1.0)
    rmin, rmax = float(ratio.min()), float(ratio.max())
    return ContinuityReport(
        pairs=int(z0.shape[0]), ratio_min=rmin, ratio_max=rmax,
        ratio_p01=float(torch.quantile(ratio, 0.01)), ratio_p99=float(torch.quantile(ratio, 0.99)),
        c=max(rmax, 1.0 / rmin, 1.0), c_scaled=math.sqrt(rmax / rmin),
        collapse_share=float(collapsed.double().mean()),
    )

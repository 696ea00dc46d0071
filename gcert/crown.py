"""Batched CROWN/DeepPoly back-substitution over the native lowering, for many input sub-boxes at once.

The batch axis holds domains (sub-boxes of a region): every value's interval bounds, every relaxation and every
back-substituted row carries it, so a branch-and-bound frontier is bounded in one propagation. Lower ReLU slopes
may be given as tensors (alpha-CROWN) and optimised through autograd; any slope in its range is sound. Rounding is
bounded as in ``deeppoly``: relaxation offsets are widened by a few ulps, and the back-substitution accumulates an
a-priori bound on the float64 error of every coefficient it computes, so the bounds it returns hold in the reals.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from gcert.bounds import Box, gamma, node_box
from gcert.errors import UnsupportedOperatorError
from gcert.lowering import Activation, Add, Affine, Concat, Lowered, MaxPool

Tensor = torch.Tensor
_U = 2.0**-53  # float64 unit roundoff
_ROW_BUDGET = 8_000_000  # float64 coefficients held per back-substitution chunk (~64 MB)


@dataclass
class Relaxation:
    """Linear bounds ``al x + bl <= act(x) <= au x + bu`` per domain, (B, *shape).

    ``free`` marks entries whose lower slope may be any value in ``[slope_lo, 1]`` (crossing ReLUs and leaky
    ReLUs of slope <= 1, whose lower line then passes through 0): the alpha-CROWN parameters.
    """

    al: Tensor
    bl: Tensor
    au: Tensor
    bu: Tensor
    free: Tensor
    slope_lo: float


@dataclass
class PoolRelaxation:
    index: Tensor  # (B, C, L) flat input index of the window element with the largest lower bound
    exact: Tensor  # (B, C, L) whether that element dominates its window (the max then equals it)
    upper: Tensor  # (B, C, L) the largest upper bound in the window


def relax_activation(op: Activation, lo: Tensor, hi: Tensor) -> Relaxation:
    """Sound linear bounds of one activation on ``[lo, hi]`` (any shape), offsets padded for float64 rounding."""
    zero, one = torch.zeros_like(lo), torch.ones_like(lo)
    free = torch.zeros_like(lo, dtype=torch.bool)
    slope_lo = 0.0
    if op.kind in ("relu", "leaky_relu"):
        s = 0.0 if op.kind == "relu" else float(op.slope)
        cross = (lo < 0) & (hi > 0)
        width = (hi - lo).clamp(min=1e-300)
        chord = (hi - s * lo) / width
        chord_off = torch.where(cross, s * lo - chord * lo, zero)
        stable = torch.where(hi <= 0, torch.full_like(lo, s), one)
        chord = torch.where(cross, chord, stable)
        tangent = torch.where(cross, torch.where(hi > -lo, one, torch.full_like(lo, s)), stable)  # by area
        if s <= 1:
            al, bl, au, bu = tangent, zero, chord, chord_off
            free, slope_lo = cross, s
        else:  # concave min(x, s x): chord below, a tangent line above
            al, bl, au, bu = chord, chord_off, tangent, zero
        bound = 0.0
    elif op.kind == "hardtanh":
        al, bl, au, bu = _hardtanh(op.lo, op.hi, lo, hi)
        bound = max([abs(v) for v in (op.lo, op.hi) if math.isfinite(v)], default=0.0)
    else:  # smooth and non-decreasing (sigmoid, tanh, atan): the constant bounds f(lo) and f(hi)
        f_lo, f_hi = op(lo), op(hi)
        pad = 4 * _U * torch.maximum(f_lo.abs(), f_hi.abs()) + 1e-300  # libm: a few ulps at most
        return Relaxation(zero, f_lo - pad, zero.clone(), f_hi + pad, free, 0.0)
    ends = torch.maximum(lo.abs(), hi.abs())
    slack = 8 * _U * ((al.abs().clamp(min=1.0) + au.abs()) * ends + bl.abs() + bu.abs() + bound) + 1e-300
    return Relaxation(al, bl - slack, au, bu + slack, free, slope_lo)


def _hardtanh(a: float, b: float, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """clamp(x, a, b) (a or b may be infinite): convex or concave where one kink is crossed, constant across both."""
    one, zero = torch.ones_like(lo), torch.zeros_like(lo)
    fa = a if math.isfinite(a) else -1e300
    fb = b if math.isfinite(b) else 1e300
    al, bl, au, bu = one.clone(), zero.clone(), one.clone(), zero.clone()
    width = (hi - lo).clamp(min=1e-300)

    def put(mask: Tensor, sl: Tensor | float, ol: Tensor | float, su: Tensor | float, ou: Tensor | float) -> None:
        nonlocal al, bl, au, bu
        al, bl = torch.where(mask, sl, al), torch.where(mask, ol, bl)
        au, bu = torch.where(mask, su, au), torch.where(mask, ou, bu)

    put(hi <= fa, 0.0, fa, 0.0, fa)
    put(lo >= fb, 0.0, fb, 0.0, fb)
    low = (lo < fa) & (hi > fa) & (hi <= fb)  # a + relu(x - a): chord above, a line through (a, a) below
    ch = (hi - fa) / width
    k = torch.where(hi - fa > fa - lo, one, zero)
    put(low, k, fa * (1 - k), ch, fa - ch * lo)
    high = (lo >= fa) & (lo < fb) & (hi > fb)  # b - relu(b - x): chord below, a line through (b, b) above
    ch = (fb - lo) / width
    k = torch.where(fb - lo > hi - fb, one, zero)
    put(high, ch, lo - ch * lo, k, fb * (1 - k))
    put((lo < fa) & (hi > fb), 0.0, fa, 0.0, fb)
    return al, bl, au, bu


def _relax_pool(op: MaxPool, lo: Tensor, hi: Tensor) -> PoolRelaxation:
    b, c, h, w = lo.shape
    index = torch.arange(h * w, dtype=lo.dtype, device=lo.device).reshape(1, 1, h, w).expand(b, c, h, w)
    idx_w = op.windows(index.contiguous())  # (B, C, L, K); padding cells are -inf
    lo_w, hi_w = op.windows(lo), op.windows(hi)
    best = lo_w.argmax(dim=-1, keepdim=True)
    others = hi_w.scatter(-1, best, -math.inf).max(dim=-1, keepdim=True).values
    exact = (lo_w.gather(-1, best) >= others)[..., 0]
    return PoolRelaxation(idx_w.gather(-1, best)[..., 0].long(), exact, hi_w.max(dim=-1).values)


def _transpose(op: Affine, lam: Tensor, in_shape: tuple[int, ...]) -> Tensor:
    """``lam @ A`` for rows (N, *out) -> (N, *in); differentiable in ``lam`` (alpha optimisation)."""
    if op.transpose is not None:
        return op.transpose(lam)
    x = torch.zeros(lam.shape[0], *in_shape, dtype=lam.dtype, device=lam.device, requires_grad=True)
    with torch.enable_grad():
        (grad,) = torch.autograd.grad(op.linear(x), x, lam, create_graph=lam.requires_grad)
    return grad


def check_supported(lowered: Lowered) -> None:
    """Raise :class:`UnsupportedOperatorError` for an op this engine has no transfer function for."""
    for node in lowered.nodes:
        if not isinstance(node.op, Affine | Activation | Add | Concat | MaxPool):
            raise UnsupportedOperatorError(type(node.op).__name__, node.source)


class BatchedCrown:
    """Intermediate bounds of a lowered network over B input boxes ``lo, hi`` (B, *input_shape), and sound
    lower bounds of linear functions of its output over each box.

    ``splits`` (activation node -> (B, *shape) of +1 / -1 / 0) restricts each domain to inputs where those
    activations' inputs are >= 0 / <= 0; ``fixed`` (value index -> Box, batch 1 or B) gives bounds already known
    for a superset of every domain (the parent's), used instead of recomputing them.

    Values that feed an activation or max-pool are tightened by back-substitution (as ERAN does), for the entries
    whose relaxation depends on it; every other value keeps its interval bounds. ``ball`` (an Lp ball with p < inf,
    containing every box's share of the region) adds a dual-norm concretisation.
    """

    def __init__(self, lowered: Lowered, lo: Tensor, hi: Tensor, ball: object | None = None,
                 splits: dict[int, Tensor] | None = None, fixed: dict[int, Box] | None = None):
        self.lowered, self.ball = lowered, ball
        self.batch = lo.shape[0]
        shape = lowered.input_shape
        self.boxes: dict[int, Box] = {-1: Box(lo.reshape(-1, *shape).double(), hi.reshape(-1, *shape).double())}
        self.relax: dict[int, Relaxation | PoolRelaxation] = {}
        self._weights: dict[int, Tensor] = {}
        self.splits = splits or {}
        # a domain whose split constraints contradict its own sound bounds is empty: nothing there to certify
        self.infeasible = torch.zeros(self.batch, dtype=torch.bool, device=lo.device)
        with torch.no_grad():
            for k, node in enumerate(lowered.nodes):
                if isinstance(node.op, Activation | MaxPool):
                    src = node.inputs[0]
                    if fixed is not None and src in fixed:  # bounds of a superset (the parent domain): kept
                        lo_f, hi_f = fixed[src].lo, fixed[src].hi
                        old = self.boxes[src]
                        self.boxes[src] = Box(torch.maximum(old.lo, lo_f), torch.maximum(torch.minimum(old.hi, hi_f),
                                                                                         torch.maximum(old.lo, lo_f)))
                    elif src >= 0 and not isinstance(lowered.nodes[src].op, Activation | MaxPool):
                        self.boxes[src] = self._constrain(k, self.boxes[src])
                        self.boxes[src] = self._tighten(src, _undecided(node.op, self.boxes[src]))
                    self.boxes[src] = self._constrain(k, self.boxes[src])
                    box = self.boxes[src]
                    self.relax[k] = (_relax_pool(node.op, box.lo, box.hi) if isinstance(node.op, MaxPool)
                                     else relax_activation(node.op, box.lo, box.hi))
                self.boxes[k] = node_box(node.op, [self.boxes[j] for j in node.inputs])

    def _constrain(self, k: int, box: Box) -> Box:
        """The box of activation ``k``'s input within each domain's split constraints (+1: >= 0, -1: <= 0)."""
        split = self.splits.get(k)
        if split is None:
            return box
        split = split.reshape(box.lo.shape)
        lo = torch.where(split > 0, box.lo.clamp(min=0.0), box.lo)
        hi = torch.where(split < 0, box.hi.clamp(max=0.0), box.hi)
        empty = (lo > hi).reshape(self.batch, -1).any(dim=1)
        self.infeasible |= empty
        return Box(lo, torch.maximum(hi, lo))

    def shape(self, index: int) -> tuple[int, ...]:
        return self.lowered.input_shape if index < 0 else self.lowered.nodes[index].shape

    def free_nodes(self) -> list[int]:
        """Activations with at least one optimisable lower slope in some domain."""
        return [k for k, r in self.relax.items() if isinstance(r, Relaxation) and bool(r.free.any())]

    def default_alphas(self, rows: int) -> dict[int, Tensor]:
        """The area-chosen lower slopes, one set per spec row: (B, rows, *shape) per free activation."""
        out = {}
        for k in self.free_nodes():
            r = self.relax[k]
            assert isinstance(r, Relaxation)
            out[k] = r.al.unsqueeze(1).expand(-1, rows, *r.al.shape[1:]).clone()
        return out

    def _tighten(self, index: int, which: Tensor) -> Box:
        """Back-substituted bounds of the entries ``which`` (B, *shape) of a value, within its box."""
        old = self.boxes[index]
        flat = which.reshape(self.batch, -1).any(dim=0)
        if not bool(flat.any()):
            return old
        n_all = flat.numel()
        lo, hi = old.lo.reshape(self.batch, -1).clone(), old.hi.reshape(self.batch, -1).clone()
        widest = max([math.prod(n.shape) for n in self.lowered.nodes[: index + 1]] + [n_all])
        chunk = max(1, _ROW_BUDGET // (2 * widest * self.batch))
        for rows in flat.nonzero().reshape(-1).split(chunk):
            n = rows.numel()
            unit = torch.zeros(n, n_all, dtype=torch.float64, device=lo.device)
            unit[torch.arange(n), rows] = 1.0
            lam = torch.cat([unit, -unit]).reshape(1, 2 * n, *self.shape(index)).expand(self.batch, -1, *self.shape(
                index))
            lower, _ = self.lower_bounds(index, lam, torch.zeros(self.batch, 2 * n, dtype=torch.float64,
                                                                 device=lo.device))
            lo[:, rows] = torch.maximum(lo[:, rows], lower[:, :n])
            hi[:, rows] = torch.minimum(hi[:, rows], -lower[:, n:])
        hi = torch.maximum(hi, lo)  # an empty intersection only happens within rounding: keep the box valid
        return Box(lo.reshape(old.lo.shape), hi.reshape(old.hi.shape))

    def _magnitude(self, index: int) -> Tensor:
        box = self.boxes[index]
        return torch.maximum(box.lo.abs(), box.hi.abs())

    def _affine_weight(self, j: int) -> Tensor:
        if j not in self._weights:
            op = self.lowered.nodes[j].op
            assert isinstance(op, Affine)
            self._weights[j] = op.abs_linear(self._magnitude(self.lowered.nodes[j].inputs[0]))
        return self._weights[j]

    def lower_bounds(self, target: int, lam: Tensor, const: Tensor, alphas: dict[int, Tensor] | None = None,
                     record: dict[int, Tensor] | None = None, betas: dict[int, Tensor] | None = None
                     ) -> tuple[Tensor, Tensor]:
        """Sound lower bounds of ``lam . value[target] + const`` per domain and row, (B, R), and the input
        coefficients of the linear bound, (B, R, input size), before concretisation.

        ``lam`` is (B, R, *shape), ``const`` (B, R); ``alphas`` maps free activations to lower slopes (B, R, *shape)
        (clamped into their sound range here). ``record`` receives, per activation, the coefficients of its output
        (B, R, *shape) (what branching heuristics score). ``betas`` (activation node -> (B, R, *shape), clamped to
        >= 0) are beta-CROWN's multipliers of the split constraints: on a domain where ``s z >= 0`` for the split
        entries of an activation's input z, ``f >= f - beta s z``, so subtracting that term keeps the bound sound.
        Rounding is bounded as in
        ``deeppoly.DeepPolyAnalysis.lower_bounds``.
        """
        B, R = lam.shape[:2]
        coeffs: dict[int, Tensor] = {target: lam}
        const = const.clone()
        size = const.abs()
        err = torch.zeros_like(const)
        terms = 0
        for j in range(target, -1, -1):
            if j not in coeffs:
                continue
            lam_j = coeffs.pop(j)
            node = self.lowered.nodes[j]
            op = node.op
            abs_j = lam_j.abs().reshape(B, R, -1)
            terms += abs_j.shape[2]
            if isinstance(op, Affine):
                bias_term = (lam_j * op.bias).reshape(B, R, -1)
                const = const + bias_term.sum(2)
                size = size + bias_term.abs().sum(2)
                weight = self._affine_weight(j).reshape(B, 1, -1)
                err = err + gamma(abs_j.shape[2] + 2) * (abs_j * weight).sum(2)
                in_shape = self.shape(node.inputs[0])
                back = _transpose(op, lam_j.reshape(B * R, *node.shape), in_shape).reshape(B, R, *in_shape)
                _accumulate(coeffs, node.inputs[0], back)
            elif isinstance(op, Add):
                err = err + 2 * _U * (abs_j * self._magnitude(j).reshape(B, 1, -1)).sum(2)
                for i in node.inputs:
                    _accumulate(coeffs, i, lam_j)
            elif isinstance(op, Concat):
                sizes = [self.shape(i)[op.dim - 1] for i in node.inputs]
                for i, part in zip(node.inputs, torch.split(lam_j, sizes, dim=op.dim + 1), strict=True):
                    _accumulate(coeffs, i, part)
            elif isinstance(op, Activation):
                r = self.relax[j]
                assert isinstance(r, Relaxation)
                if record is not None:
                    record[j] = lam_j.detach()
                al = r.al.unsqueeze(1)
                if alphas is not None and j in alphas:
                    al = torch.where(r.free.unsqueeze(1), alphas[j].clamp(r.slope_lo, 1.0), al)
                pos, neg = lam_j.clamp(min=0), lam_j.clamp(max=0)
                term = (pos * r.bl.unsqueeze(1) + neg * r.bu.unsqueeze(1)).reshape(B, R, -1)
                const = const + term.sum(2)
                size = size + term.abs().sum(2)
                slope = torch.maximum(al.abs(), r.au.abs().unsqueeze(1)).reshape(B, al.shape[1], -1)
                mag = self._magnitude(node.inputs[0]).reshape(B, 1, -1)
                err = err + 4 * _U * (abs_j * slope * mag).sum(2)
                back = pos * al + neg * r.au.unsqueeze(1)
                if betas is not None and j in betas and j in self.splits:
                    sign = self.splits[j].reshape(B, 1, *node.shape).to(lam_j.dtype)
                    lagrange = betas[j].clamp(min=0.0) * sign
                    back = back - lagrange
                    err = err + 2 * _U * ((lagrange.abs() + back.abs()).reshape(B, R, -1) * mag).sum(2)
                _accumulate(coeffs, node.inputs[0], back)
            else:
                r = self.relax[j]
                assert isinstance(r, PoolRelaxation)
                pos, neg = lam_j.clamp(min=0), lam_j.clamp(max=0)
                shp = (B, R, *r.index.shape[1:])
                fpos, fneg = pos.reshape(shp), neg.reshape(shp)
                exact = r.exact.unsqueeze(1)
                selected = fpos + torch.where(exact, fneg, torch.zeros_like(fneg))
                term = torch.where(exact, torch.zeros_like(fneg), fneg * r.upper.unsqueeze(1)).reshape(B, R, -1)
                const = const + term.sum(2)
                size = size + term.abs().sum(2)
                in_shape = self.shape(node.inputs[0])
                mag = self._magnitude(node.inputs[0]).reshape(B, -1).max(dim=1).values.reshape(B, 1)
                err = err + gamma(max(op.kernel[0] * op.kernel[1], shp[-1]) + 2) * abs_j.sum(2) * mag
                back = torch.zeros(B, R, in_shape[0], math.prod(in_shape[1:]), dtype=lam_j.dtype,
                                   device=lam_j.device)
                back = back.scatter_add(3, r.index.unsqueeze(1).expand(shp), selected)
                _accumulate(coeffs, node.inputs[0], back.reshape(B, R, *in_shape))
        lam_in = coeffs.get(-1)
        if lam_in is None:
            zeros = torch.zeros(B, R, math.prod(self.lowered.input_shape), dtype=const.dtype, device=const.device)
            return const - 2 * gamma(terms + 2) * size - 1e-300, zeros
        lam_in = lam_in.reshape(B, R, -1)
        lo = self.boxes[-1].lo.reshape(B, 1, -1)
        hi = self.boxes[-1].hi.reshape(B, 1, -1)
        result = const + (lam_in.clamp(min=0) * lo + lam_in.clamp(max=0) * hi).sum(2)
        terms += lam_in.shape[2]
        ball = self.ball
        if ball is not None and getattr(ball, "p", math.inf) != math.inf:
            q = {1.0: math.inf, 2.0: 2.0}[ball.p]  # type: ignore[attr-defined]
            center = ball.origin().to(torch.float64).reshape(1, 1, -1)  # type: ignore[attr-defined]
            dual = ball.eps * lam_in.norm(p=q, dim=2)  # type: ignore[attr-defined]
            result = torch.maximum(result, const + (lam_in * center).sum(2) - dual)
            size = size + dual + (lam_in * center).abs().sum(2)
        size = size + (lam_in.abs() * torch.maximum(lo.abs(), hi.abs())).sum(2)
        return result - 2 * (err + gamma(terms + 2) * size) - 1e-300, lam_in

    def output_bounds(self, C: Tensor, d: Tensor, alphas: dict[int, Tensor] | None = None,
                      record: dict[int, Tensor] | None = None, betas: dict[int, Tensor] | None = None
                      ) -> tuple[Tensor, Tensor]:
        """Lower bounds of the rows ``C @ y + d`` per domain, (B, m), and their input coefficients (B, m, n).

        The interval bound of the rows is sound too and kept where tighter.
        """
        lowered = self.lowered
        out = lowered.output
        out_shape = self.shape(out)
        C, d = C.double(), d.double()
        lam = C.reshape(1, C.shape[0], *out_shape).expand(self.batch, -1, *out_shape)
        const = d.reshape(1, -1).expand(self.batch, -1)
        if out < 0:
            back, lam_in = self._input_rows(lam, const)
        else:
            back, lam_in = self.lower_bounds(out, lam, const, alphas, record, betas)
        box = self.boxes[out]
        mid, rad = (box.lo + box.hi).reshape(self.batch, -1) / 2, (box.hi - box.lo).reshape(self.batch, -1) / 2
        y_mid, y_rad = mid @ C.T + d, rad @ C.abs().T
        pad = (C.shape[1] + 2) * _U * ((mid.abs() + rad) @ C.abs().T + d.abs()) + 1e-300
        return torch.maximum(back, y_mid - y_rad - pad), lam_in

    def _input_rows(self, lam: Tensor, const: Tensor) -> tuple[Tensor, Tensor]:
        B, R = lam.shape[:2]
        lam_in = lam.reshape(B, R, -1)
        lo, hi = self.boxes[-1].lo.reshape(B, 1, -1), self.boxes[-1].hi.reshape(B, 1, -1)
        result = const + (lam_in.clamp(min=0) * lo + lam_in.clamp(max=0) * hi).sum(2)
        size = const.abs() + (lam_in.abs() * torch.maximum(lo.abs(), hi.abs())).sum(2)
        return result - 2 * gamma(lam_in.shape[2] + 2) * size - 1e-300, lam_in


def _undecided(op: Activation | MaxPool, box: Box) -> Tensor:
    """Entries (B, *shape) whose relaxation is not exact on their box: piecewise-linear ones across a kink, and
    every entry of smooth activations and max-pools."""
    lo, hi = box.lo, box.hi
    if isinstance(op, Activation) and op.piecewise_linear:
        kinks = [0.0] if op.kind != "hardtanh" else [v for v in (op.lo, op.hi) if math.isfinite(v)]
        if not kinks:
            return torch.zeros_like(lo, dtype=torch.bool)
        return torch.stack([(lo < k) & (hi > k) for k in kinks]).any(dim=0)
    return torch.ones_like(lo, dtype=torch.bool)


def _accumulate(coeffs: dict[int, Tensor], index: int, value: Tensor) -> None:
    coeffs[index] = coeffs[index] + value if index in coeffs else value

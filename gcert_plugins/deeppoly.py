"""The ``deeppoly`` certifier: ERAN-style DeepPoly back-substitution over gcert's native lowering.

Each activation gets one linear lower and one linear upper bound in its input (ReLU: chord above, slope
0 or 1 below by area; sigmoid/tanh/arctan: DeepCert's fine-grained relaxation or the classic tangent
one); every bound is back-substituted to the input and concretised there (pixel Lp balls with the dual
norm). Sound; on one-dimensional regions it bisects t (best first) when it cannot decide.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

import gcert
from gcert.bounds import Box, gamma, node_box, spec_rows
from gcert.contracts import Certifier, Outcome
from gcert.errors import GcertError
from gcert.lowering import Activation, Add, Affine, Concat, Lowered, MaxPool
from gcert.problem import Problem
from gcert.regions import LpBall
from gcert.spec import Spec
from gcert.splitting import decide

Tensor = torch.Tensor
_U = 2.0**-53  # float64 unit roundoff
_ROW_BUDGET = 4_000_000  # float64 coefficients per back-substituted value at once (~32 MB)


@dataclass(frozen=True)
class DeepPolyOptions:
    """Settings of ``deeppoly``."""

    # sigmoid/tanh/arctan: "deepcert" (fine-grained), "tangent" (classic), or "both" (the default: each is sound, the
    # better bound is kept, so it is never worse than either; neither wins everywhere, benchmarks/results/deepcert.md)
    relaxation: str = "both"
    splits: int = 32  # one-dimensional regions: most pieces when bisecting t (1 = no splitting)
    cheap_first: bool = True  # a short attack and one interval pass before the back-substitution

    def __post_init__(self) -> None:
        if self.relaxation not in ("deepcert", "tangent", "both"):
            raise GcertError(f"deeppoly.relaxation must be deepcert, tangent or both, got {self.relaxation!r}")
        if self.splits < 1:
            raise GcertError(f"deeppoly.splits must be an integer >= 1 (1 = no splitting), got {self.splits}")


# --- relaxations of S-shaped activations ------------------------------------------------------------

_FUNCS: dict[str, tuple[Callable[[Tensor], Tensor], Callable[[Tensor], Tensor]]] = {
    "sigmoid": (torch.sigmoid, lambda x: torch.sigmoid(x) * (1 - torch.sigmoid(x))),
    "tanh": (torch.tanh, lambda x: 1 - torch.tanh(x) ** 2),
    "atan": (torch.atan, lambda x: 1 / (1 + x * x)),
}


def _solve(g: Callable[[Tensor], Tensor], a: Tensor, b: Tensor, iters: int = 80) -> Tensor:
    """Elementwise bisection for a root of ``g`` in [a, b], where g(a) and g(b) differ in sign."""
    ga = g(a)
    for _ in range(iters):
        m = (a + b) / 2
        gm = g(m)
        left = (gm > 0) == (ga > 0)
        a, b, ga = torch.where(left, m, a), torch.where(left, b, m), torch.where(left, gm, ga)
    return (a + b) / 2


def s_shaped_relaxation(kind: str, lo: Tensor, hi: Tensor, method: str = "deepcert"
                        ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Slopes and offsets ``(al, bl, au, bu)`` with al*x + bl <= f(x) <= au*x + bu on [lo, hi].

    f is sigmoid, tanh or arctan: increasing, convex below 0 and concave above, f' peaking at 0.
    """
    f, df = _FUNCS[kind]
    width = hi - lo
    flat = width < 1e-9
    hi_ = torch.where(flat, lo + 1.0, hi)  # placeholder span for degenerate intervals, replaced below
    fl, fu = f(lo), f(hi_)
    k = (fu - fl) / (hi_ - lo)
    dl, du = df(lo), df(hi_)
    if method == "tangent":
        # DeepPoly (Singh et al. 2019): the secant on the side where f is curved away from it, else the
        # tangent with the smaller end slope.
        lam = torch.minimum(dl, du)
        al = torch.where(lo > 0, k, lam)
        bl = torch.where(lo > 0, fl - k * lo, fl - lam * lo)
        au = torch.where(hi_ <= 0, k, lam)
        bu = torch.where(hi_ <= 0, fu - k * hi_, fu - lam * hi_)
    elif method == "deepcert":
        al, bl = torch.empty_like(lo), torch.empty_like(lo)
        au, bu = torch.empty_like(lo), torch.empty_like(lo)
        case1 = (dl <= k) & (du >= k)  # convex side: secant above, tangent of slope k below
        case2 = (dl >= k) & (du <= k) & ~case1  # concave side: secant below, tangent of slope k above
        case3 = ~(case1 | case2)  # straddling 0: tangents through the end points
        d_neg = -_inverse_slope(kind, k)  # the point below 0 where f' = k
        d_pos = -d_neg
        al = torch.where(case1, k, al)
        bl = torch.where(case1, f(d_neg) - k * d_neg, bl)
        au = torch.where(case1, k, au)
        bu = torch.where(case1, fl - k * lo, bu)
        al = torch.where(case2, k, al)
        bl = torch.where(case2, fl - k * lo, bl)
        au = torch.where(case2, k, au)
        bu = torch.where(case2, f(d_pos) - k * d_pos, bu)
        if bool(case3.any()):
            # upper: the line through (lo, f(lo)) touching f at d1 in (0, hi]; lower: through (hi, f(hi)) at d2
            d1 = _solve(lambda d: df(d) * (d - lo) - (f(d) - fl), torch.zeros_like(lo), hi_.clamp(min=0))
            d2 = _solve(lambda d: df(d) * (d - hi_) - (f(d) - fu), lo.clamp(max=0), torch.zeros_like(lo))
            s1, s2 = df(d1), df(d2)
            au = torch.where(case3, s1, au)
            bu = torch.where(case3, fl - s1 * lo, bu)
            al = torch.where(case3, s2, al)
            bl = torch.where(case3, fu - s2 * hi_, bl)
    else:
        raise GcertError(f"relaxation must be 'deepcert' or 'tangent', got {method!r}")
    # Degenerate intervals: the constant bounds f(lo), f(hi).
    al, au = torch.where(flat, 0.0, al), torch.where(flat, 0.0, au)
    bl, bu = torch.where(flat, f(lo), bl), torch.where(flat, f(hi), bu)
    # float64 rounding of f and of the tangent points: widen by a few ulps of the values involved.
    slack = 1e-12 * (1 + fl.abs() + fu.abs() + (al.abs() + au.abs()) * torch.maximum(lo.abs(), hi.abs()))
    return al, bl - slack, au, bu + slack


def _inverse_slope(kind: str, k: Tensor) -> Tensor:
    """The d >= 0 with f'(d) = k (k in (0, f'(0)]), elementwise."""
    k = k.clamp(min=1e-300)
    if kind == "sigmoid":  # s(1-s) = k -> s = (1 + sqrt(1 - 4k)) / 2
        s = (1 + torch.sqrt((1 - 4 * k).clamp(min=0))) / 2
        return torch.log(s / (1 - s).clamp(min=1e-300))
    if kind == "tanh":  # 1 - tanh^2 = k
        return torch.atanh(torch.sqrt((1 - k).clamp(min=0, max=1 - 1e-16)))
    return torch.sqrt((1 / k - 1).clamp(min=0))  # atan: 1 / (1 + d^2) = k


def piecewise_relaxation(op: Activation, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """ReLU / leaky ReLU / hardtanh: exact where stable; a chord on one side and a tangent line on the other.

    A leaky ReLU with slope s <= 1 is convex (chord above, slope s or 1 below by area); with s > 1 it is
    concave, ``min(x, s x)`` (chord below, slope 1 or s above). Offsets are widened by a few ulps of the values
    involved, so the lines stay sound after float64 rounding of the slopes.
    """
    if op.kind in ("relu", "leaky_relu"):
        s = 0.0 if op.kind == "relu" else op.slope
        width = (hi - lo).clamp(min=1e-300)
        chord = (hi - s * lo) / width
        cross = (lo < 0) & (hi > 0)
        chord_offset = torch.where(cross, s * lo - chord * lo, torch.zeros_like(lo))
        stable = torch.where(hi <= 0, torch.full_like(lo, s), torch.ones_like(lo))  # exact where lo >= 0 or hi <= 0
        tangent = torch.where(hi > -lo, torch.ones_like(lo), torch.full_like(lo, s))  # ERAN's choice by area
        chord_slope = torch.where(cross, chord, stable)
        tangent_slope = torch.where(cross, tangent, stable)
        zero = torch.zeros_like(lo)
        if s <= 1:
            al, bl, au, bu = tangent_slope, zero, chord_slope, chord_offset
        else:
            al, bl, au, bu = chord_slope, chord_offset, tangent_slope, zero
    else:
        al, bl, au, bu = _hardtanh_relaxation(op.lo, op.hi, lo, hi)
    ends = torch.maximum(lo.abs(), hi.abs())
    finite = [abs(v) for v in (op.lo, op.hi) if math.isfinite(v)] if op.kind == "hardtanh" else []
    slack = 8 * _U * ((al.abs() + au.abs()) * ends + bl.abs() + bu.abs() + max(finite, default=0.0)) + 1e-300
    return al, bl - slack, au, bu + slack


def _hardtanh_relaxation(a: float, b: float, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    zero, one = torch.zeros_like(lo), torch.ones_like(lo)
    al, bl, au, bu = one.clone(), zero.clone(), one.clone(), zero.clone()  # inside [a, b]: identity

    def put(mask: Tensor, sl: Tensor | float, ol: Tensor | float, su: Tensor | float, ou: Tensor | float) -> None:
        for target, value in ((al, sl), (bl, ol), (au, su), (bu, ou)):
            target[mask] = torch.as_tensor(value, dtype=lo.dtype).expand_as(lo)[mask]

    width = (hi - lo).clamp(min=1e-300)
    if a != -math.inf:
        put(hi <= a, 0.0, a, 0.0, a)
    if b != math.inf:
        put(lo >= b, 0.0, b, 0.0, b)
    low_cross = (lo < a) & (hi > a) & (hi <= b)
    if bool(low_cross.any()):
        ch = (hi - a) / width
        pick = torch.where(hi - a > a - lo, one, zero)
        put(low_cross, pick, a * (1 - pick), ch, a - ch * lo)
    high_cross = (lo >= a) & (lo < b) & (hi > b)
    if bool(high_cross.any()):
        ch = (b - lo) / width
        pick = torch.where(b - lo > hi - b, one, zero)
        put(high_cross, ch, lo - ch * lo, pick, b * (1 - pick))
    both = (lo < a) & (hi > b)
    if bool(both.any()):
        sl = (b - a) / (hi - a).clamp(min=1e-300)
        su = (b - a) / (b - lo).clamp(min=1e-300)
        put(both, sl, b - sl * hi, su, a - su * lo)
    return al, bl, au, bu


# --- back-substitution --------------------------------------------------------------------------------


@dataclass
class _Relax:
    al: Tensor
    bl: Tensor
    au: Tensor
    bu: Tensor


@dataclass
class _PoolRelax:
    index: Tensor  # (C, L) flat input index of the window element with the largest lower bound
    exact: Tensor  # (C, L) whether that element dominates the window (then the max equals it)
    upper: Tensor  # (C, L) the largest upper bound in the window


class DeepPolyAnalysis:
    """Bounds of one lowered network over one input region (a box, or an Lp ball within a box)."""

    def __init__(self, lowered: Lowered, box: Box, ball: LpBall | None, relaxation: str):
        self.lowered, self.box, self.ball, self.relaxation = lowered, box, ball, relaxation
        self.relax: dict[int, _Relax | _PoolRelax] = {}
        self._weights: dict[int, Tensor] = {}
        self.boxes: dict[int, Box] = {-1: box}
        for k, node in enumerate(lowered.nodes):
            if isinstance(node.op, Activation | MaxPool):
                src = node.inputs[0]
                # As ERAN: back-substitute values that come out of linear maps; the box image of an
                # activation's output is already exact for its (monotone) function of a tightened box.
                if src >= 0 and not isinstance(lowered.nodes[src].op, Activation | MaxPool):
                    self.boxes[src] = self._tighten(src, _undecided(node.op, self.boxes[src]))
                self.relax[k] = self._relax(node.op, self.boxes[src])
            self.boxes[k] = node_box(node.op, [self.boxes[j] for j in node.inputs])

    def _shape(self, index: int) -> tuple[int, ...]:
        return self.lowered.input_shape if index < 0 else self.lowered.nodes[index].shape

    def _tighten(self, index: int, which: Tensor) -> Box:
        """Back-substituted bounds of the entries ``which`` (a flat bool mask) of a value, within its box."""
        old = self.boxes[index]
        if index < 0 or not bool(which.any()):
            return old
        shape = self._shape(index)
        lo, hi = old.lo.reshape(-1).clone(), old.hi.reshape(-1).clone()
        # Rows in chunks: each row carries a coefficient for every entry of every value it passes through.
        widest = max([math.prod(n.shape) for n in self.lowered.nodes[: index + 1]] + [math.prod(shape)])
        chunk = max(1, _ROW_BUDGET // (2 * widest))
        for rows in which.nonzero().reshape(-1).split(chunk):
            n = rows.numel()
            unit = torch.zeros(n, math.prod(shape), dtype=torch.float64)
            unit[torch.arange(n), rows] = 1.0
            unit = unit.reshape(n, *shape)
            lower = self.lower_bounds(index, torch.cat([unit, -unit]), torch.zeros(2 * n, dtype=torch.float64))
            lo[rows], hi[rows] = torch.maximum(lo[rows], lower[:n]), torch.minimum(hi[rows], -lower[n:])
        return Box(lo.reshape(1, *shape), hi.reshape(1, *shape))

    def _relax(self, op: Activation | MaxPool, box: Box) -> _Relax | _PoolRelax:
        lo, hi = box.lo[0], box.hi[0]
        if isinstance(op, MaxPool):
            return _pool_relax(op, lo, hi)
        if op.piecewise_linear:
            return _Relax(*piecewise_relaxation(op, lo, hi))
        return _Relax(*s_shaped_relaxation(op.kind, lo, hi, self.relaxation))

    def _magnitude(self, index: int) -> Tensor:
        """max |value| over the region, entrywise (1, *shape), from the value's bounds."""
        box = self.boxes[index]
        return torch.maximum(box.lo.abs(), box.hi.abs())

    def _affine_weight(self, j: int) -> Tensor:
        """``|A| m`` for affine node ``j`` and the magnitude m of its input: what each output sums, in size."""
        if j not in self._weights:
            op = self.lowered.nodes[j].op
            assert isinstance(op, Affine)
            self._weights[j] = op.abs_linear(self._magnitude(self.lowered.nodes[j].inputs[0]))
        return self._weights[j]

    def lower_bounds(self, target: int, lam: Tensor, const: Tensor) -> Tensor:
        """Sound lower bounds of ``lam . value[target] + const`` (one per row of ``lam``) over the region.

        Rounding: a coefficient computed with error e stands for the exact one plus e, and the rest of the
        back-substitution bounds the perturbed expression soundly; the difference is at most |e| times the
        magnitude of the value it multiplies. ``err`` sums these (a priori, gamma_n of the terms each step sums),
        and ``size`` the terms summed into the constant; the result is lowered by twice both.
        """
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
            rows = lam_j.shape[0]
            abs_j = lam_j.abs().reshape(rows, -1)
            terms += abs_j.shape[1]
            if isinstance(op, Affine):
                const += (lam_j * op.bias).reshape(rows, -1).sum(1)
                size += (lam_j * op.bias).abs().reshape(rows, -1).sum(1)
                err += gamma(abs_j.shape[1] + 2) * (abs_j * self._affine_weight(j).reshape(1, -1)).sum(1)
                _accumulate(coeffs, node.inputs[0], _transpose(op, lam_j, self._shape(node.inputs[0])))
            elif isinstance(op, Add):
                err += 2 * _U * (abs_j * self._magnitude(j).reshape(1, -1)).sum(1)
                for i in node.inputs:
                    _accumulate(coeffs, i, lam_j)
            elif isinstance(op, Concat):
                sizes = [self._shape(i)[op.dim - 1] for i in node.inputs]
                for i, part in zip(node.inputs, torch.split(lam_j, sizes, dim=op.dim), strict=True):
                    _accumulate(coeffs, i, part)
            elif isinstance(op, Activation):
                r = self.relax[j]
                assert isinstance(r, _Relax)
                pos, neg = lam_j.clamp(min=0), lam_j.clamp(max=0)
                term = (pos * r.bl + neg * r.bu).reshape(rows, -1)
                const += term.sum(1)
                size += term.abs().sum(1)
                slope = torch.maximum(r.al.abs(), r.au.abs()).reshape(1, -1)
                err += 4 * _U * (abs_j * slope * self._magnitude(node.inputs[0]).reshape(1, -1)).sum(1)
                _accumulate(coeffs, node.inputs[0], pos * r.al + neg * r.au)
            else:
                r = self.relax[j]
                assert isinstance(r, _PoolRelax)
                pos, neg = lam_j.clamp(min=0), lam_j.clamp(max=0)
                flat_pos, flat_neg = pos.reshape(rows, *r.index.shape), neg.reshape(rows, *r.index.shape)
                selected = flat_pos + torch.where(r.exact, flat_neg, torch.zeros_like(flat_neg))
                term = torch.where(r.exact, torch.zeros_like(flat_neg), flat_neg * r.upper).reshape(rows, -1)
                const += term.sum(1)
                size += term.abs().sum(1)
                in_shape = self._shape(node.inputs[0])
                err += gamma(r.index.shape[-1] + 2) * abs_j.sum(1) * float(self._magnitude(node.inputs[0]).max())
                back = torch.zeros(rows, in_shape[0], math.prod(in_shape[1:]), dtype=lam_j.dtype)
                back.scatter_add_(2, r.index.unsqueeze(0).expand(rows, -1, -1), selected)
                _accumulate(coeffs, node.inputs[0], back.reshape(rows, *in_shape))
        lam_in = coeffs.get(-1)
        if lam_in is None:
            return const - 2 * gamma(terms + 2) * size - 1e-300
        lam_in = lam_in.reshape(lam_in.shape[0], -1)
        lo, hi = self.box.lo.reshape(1, -1), self.box.hi.reshape(1, -1)
        result = const + (lam_in.clamp(min=0) * lo + lam_in.clamp(max=0) * hi).sum(1)
        terms += lam_in.shape[1]
        if self.ball is not None and self.ball.p != math.inf:
            q = {1.0: math.inf, 2.0: 2.0}[self.ball.p]
            center = self.ball.origin().to(torch.float64).reshape(1, -1)
            via_ball = const + (lam_in * center).sum(1) - self.ball.eps * lam_in.norm(p=q, dim=1)
            result = torch.maximum(result, via_ball)  # both are sound; the region lies in box and ball
            size = size + self.ball.eps * lam_in.norm(p=q, dim=1) + (lam_in * center).abs().sum(1)
        size = size + (lam_in.abs() * torch.maximum(lo.abs(), hi.abs())).sum(1)
        return result - 2 * (err + gamma(terms + 2) * size) - 1e-300


def _undecided(op: Activation | MaxPool, box: Box) -> Tensor:
    """Entries whose relaxation depends on tighter bounds: piecewise-linear ones that straddle a kink
    (elsewhere the activation is exact on the box), and every entry of smooth activations and max-pools."""
    lo, hi = box.lo.reshape(-1), box.hi.reshape(-1)
    if isinstance(op, Activation) and op.piecewise_linear:
        kinks = [0.0] if op.kind != "hardtanh" else [v for v in (op.lo, op.hi) if math.isfinite(v)]
        if not kinks:
            return torch.zeros_like(lo, dtype=torch.bool)
        return torch.stack([(lo < k) & (hi > k) for k in kinks]).any(dim=0)
    return torch.ones_like(lo, dtype=torch.bool)


def _accumulate(coeffs: dict[int, Tensor], index: int, value: Tensor) -> None:
    coeffs[index] = coeffs[index] + value if index in coeffs else value


def _transpose(op: Affine, lam: Tensor, in_shape: tuple[int, ...]) -> Tensor:
    """``lam @ A`` for the linear part A of ``op``: one reverse-mode pass with the rows as the batch."""
    if op.transpose is not None:
        return op.transpose(lam)
    x = torch.zeros(lam.shape[0], *in_shape, dtype=lam.dtype, requires_grad=True)
    with torch.enable_grad():
        (grad,) = torch.autograd.grad(op.linear(x), x, lam)
    return grad


def _pool_relax(op: MaxPool, lo: Tensor, hi: Tensor) -> _PoolRelax:
    c, h, w = lo.shape
    index = torch.arange(h * w, dtype=torch.float64).reshape(1, 1, h, w).expand(1, c, h, w)
    idx_windows = op.windows(index.contiguous())[0]  # (C, L, K), padding cells are -inf
    lo_w, hi_w = op.windows(lo.unsqueeze(0))[0], op.windows(hi.unsqueeze(0))[0]
    best = lo_w.argmax(dim=-1, keepdim=True)
    best_lo = lo_w.gather(-1, best)
    others_hi = hi_w.scatter(-1, best, -math.inf).max(dim=-1, keepdim=True).values
    index_sel = idx_windows.gather(-1, best)[..., 0]
    return _PoolRelax(index_sel.long(), (best_lo >= others_hi)[..., 0], hi_w.max(dim=-1).values)


# --- the certifier ------------------------------------------------------------------------------------


def spec_lower_bound(analysis: DeepPolyAnalysis, spec: Spec) -> Tensor:
    """Lower bounds of every spec row C @ y + d over the region."""
    lowered = analysis.lowered
    out_shape = lowered.input_shape if lowered.output < 0 else lowered.nodes[lowered.output].shape
    C, d = spec.C.double(), spec.d.double()
    lam = C.reshape(C.shape[0], *out_shape)
    back = analysis.lower_bounds(lowered.output, lam, d)
    # The interval bound of the same rows is sound too, and sometimes tighter (e.g. behind max-pooling).
    return torch.maximum(back, spec_rows(C, d, analysis.boxes[lowered.output]).lo[0])


class DeepPoly(Certifier):
    name = "deeppoly"
    guarantee = "sound"
    description = "DeepPoly back-substitution (ERAN), DeepCert relaxation for sigmoid/tanh/arctan; splits t"
    Options = DeepPolyOptions

    def prepare(self, problem: Problem) -> None:
        problem.lowered()

    def certify(self, problem: Problem, options: DeepPolyOptions) -> Outcome:
        lowered, region = problem.lowered(), problem.region  # an op it cannot lower is refused before anything
        ball = region if isinstance(region, LpBall) else None

        methods = ("deepcert", "tangent") if options.relaxation == "both" else (options.relaxation,)
        if lowered.piecewise_linear:
            methods = methods[:1]  # the relaxation of S-shaped activations is all that differs

        def bound(a: Tensor, b: Tensor) -> float:
            box = Box(a.reshape(1, -1).double(), b.reshape(1, -1).double())
            rows = torch.stack([spec_lower_bound(DeepPolyAnalysis(lowered, box, ball, m), problem.spec)
                                for m in methods]).max(dim=0).values  # each relaxation's row bound is sound
            return float(problem.spec.reduce(rows.reshape(1, -1))[0])

        return decide(problem, bound, options.splits, cheap_first=options.cheap_first)


@gcert.hookimpl
def gcert_register_certifiers(register: Callable[[Certifier], None]) -> None:
    register(DeepPoly())

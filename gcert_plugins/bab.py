"""The ``bab`` certifier: branch and bound by input splitting over the batched CROWN of :mod:`gcert.crown`.

The frontier of undecided sub-boxes is bounded in one batched propagation per step (alpha-optimised lower ReLU
slopes, warm-started from the parent domain); each undecided domain is split on the dimension its linear lower
bound is most sensitive to (|input coefficient| x width). An attack runs first and on the worst domains during the
search. Anytime: the record says how many domains were bounded, the best global lower bound and why it stopped.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

import gcert
from gcert.attack import cheap_answer, descend, search
from gcert.contracts import Certifier, Outcome
from gcert.crown import BatchedCrown, check_supported
from gcert.errors import GcertError
from gcert.lowering import Activation
from gcert.problem import Problem
from gcert.regions import LpBall

Tensor = torch.Tensor
_WARM_BUDGET = 50_000_000  # float32 alpha entries kept for warm starts across the frontier (~200 MB)


@dataclass(frozen=True)
class BabOptions:
    """Settings of ``bab``."""

    timeout: float = 60.0  # seconds for the whole search (anytime: 'unknown' with the best bound when it runs out)
    batch: int = 64  # domains split per step (2 x batch bounded in one propagation)
    max_domains: int = 200_000  # largest frontier of undecided domains before giving up
    alpha_iters: int = 5  # projected-gradient (Adam) steps on the lower ReLU slopes per batch (0 = plain CROWN)
    alpha_lr: float = 0.1
    root_alpha_iters: int = 20  # the same on the whole region, before any split (it decides most easy instances)
    attack_restarts: int = 8  # PGD starts before the search (and from the worst domains during it)
    attack_every: int = 10  # steps between attacks from the worst domains' centres
    cheap_first: bool = True  # the host's short attack and one interval pass before anything
    input_split_dims: int = 32  # regions of up to this many dimensions split the input; larger ones split ReLUs

    def __post_init__(self) -> None:
        if not (self.timeout > 0 and math.isfinite(self.timeout)):
            raise GcertError(f"bab.timeout must be a finite number of seconds > 0, got {self.timeout}")
        for name in ("batch", "max_domains"):
            if getattr(self, name) < 1:
                raise GcertError(f"bab.{name} must be an integer >= 1, got {getattr(self, name)}")
        for name in ("alpha_iters", "root_alpha_iters", "attack_restarts", "attack_every", "input_split_dims"):
            if getattr(self, name) < 0:
                raise GcertError(f"bab.{name} must be an integer >= 0, got {getattr(self, name)}")
        if not self.alpha_lr > 0:
            raise GcertError(f"bab.alpha_lr must be > 0, got {self.alpha_lr}")


@dataclass
class _Bounded:
    margin: Tensor  # (N,) sound lower bound of the spec margin per domain
    rows: Tensor  # (N, m) sound lower bounds of the spec rows
    lam_in: Tensor  # (N, m, d) input coefficients of the rows' linear lower bounds
    alphas: dict[Any, Tensor]  # ("alpha" | "beta", node) -> (N, m, *shape) parameters used, for warm starts
    scores: dict[int, Tensor] = field(default_factory=dict)  # ReLU node -> (N, size) branching scores

    def select(self, index: Tensor) -> _Bounded:
        return _Bounded(self.margin[index], self.rows[index], self.lam_in[index],
                        {k: a[index] for k, a in self.alphas.items()}, {k: v[index] for k, v in self.scores.items()})

    def minimisers(self, lo: Tensor, hi: Tensor) -> Tensor:
        """Per domain, the corner of its box where the linear lower bound of its worst row is smallest, (N, d):
        where a relaxation is tight, a counterexample if there is one."""
        worst = self.rows.argmin(dim=1)
        lam = self.lam_in[torch.arange(self.rows.shape[0]), worst]
        return torch.where(lam > 0, lo, hi)


def bound_domains(problem: Problem, lo: Tensor, hi: Tensor, options: BabOptions,
                  warm: dict[int, Tensor] | None = None, splits: dict[int, Tensor] | None = None,
                  fixed: dict[int, Any] | None = None) -> _Bounded:
    """Sound bounds of the spec over each box ``[lo[i], hi[i]]`` (N, d), within each domain's ReLU ``splits``
    (activation node -> (N, *shape) of +1 / -1 / 0), in one batched CROWN pass. Empty domains get +inf.

    With ``alpha_iters``, the lower ReLU slopes (alpha) and, for split domains, the multipliers of the split
    constraints (beta) are optimised together by projected gradient ascent, warm-started from ``warm``
    (``("alpha", node)`` / ``("beta", node)`` -> tensors of the parents, one row per domain)."""
    region, spec = problem.region, problem.spec
    crown = BatchedCrown(problem.lowered(), lo, hi, region if isinstance(region, LpBall) else None, splits, fixed)
    C, d = spec.C, spec.d
    record: dict[int, Tensor] = {}
    with torch.no_grad():
        rows, lam_in = crown.output_bounds(C, d, record=record)
    params: dict[tuple[str, int], Tensor] = {}
    if options.alpha_iters > 0:
        m = C.shape[0]
        params = {("alpha", k): a for k, a in crown.default_alphas(m).items()}
        for k, split in (splits or {}).items():
            if bool((split != 0).any()):
                shape = problem.lowered().nodes[k].shape
                params[("beta", k)] = torch.zeros(lo.shape[0], m, *shape, dtype=torch.float64)
        for key, a in (warm or {}).items():
            if key in params and a.shape == params[key].shape:
                params[key] = a.to(torch.float64)
    if params:
        alphas = {k: a for (kind, k), a in params.items() if kind == "alpha"}
        betas = {k: a for (kind, k), a in params.items() if kind == "beta"}
        tensors = [a.requires_grad_(True) for a in params.values()]
        ranges = [(0.0, 1.0) if kind == "alpha" else (0.0, math.inf) for kind, _ in params]
        _adam_ascent(tensors, ranges, lambda: crown.output_bounds(C, d, alphas, betas=betas)[0].clamp(max=1.0).sum(),
                     options.alpha_iters, options.alpha_lr)  # rows already safely positive need no more
        with torch.no_grad():
            tuned_record: dict[int, Tensor] = {}
            tuned, tuned_in = crown.output_bounds(C, d, alphas, tuned_record, betas)
        better = tuned > rows  # both are sound per row: keep the better one, and its coefficients
        rows = torch.where(better, tuned, rows)
        lam_in = torch.where(better.unsqueeze(2), tuned_in, lam_in)
        record = tuned_record
    kept = {key: a.detach().float() for key, a in params.items()}
    margin = torch.where(crown.infeasible, torch.full_like(rows[:, 0], math.inf), spec.reduce(rows))
    scores = relu_scores(crown, record, rows, spec.conjunctive) if splits is not None else {}
    return _Bounded(margin, rows, lam_in, kept, scores)


def relu_scores(crown: BatchedCrown, record: dict[int, Tensor], rows: Tensor, conjunctive: bool
                ) -> dict[int, Tensor]:
    """A BaBSR-style score per unsplit crossing ReLU and domain, (N, size): the |coefficient| of its output in the
    unproven rows' bound times the offset of its upper chord (-lo hi / (hi - lo)), what fixing it could gain."""
    out = {}
    weight = (rows <= 0).to(rows.dtype) if conjunctive else torch.ones_like(rows)
    for k, lam in record.items():
        op = crown.lowered.nodes[k].op
        if not (isinstance(op, Activation) and op.kind in ("relu", "leaky_relu")):
            continue
        box = crown.boxes[crown.lowered.nodes[k].inputs[0]]
        lo, hi = box.lo.reshape(crown.batch, -1), box.hi.reshape(crown.batch, -1)
        cross = (lo < 0) & (hi > 0)
        offset = torch.where(cross, -lo * hi / (hi - lo).clamp(min=1e-300), torch.zeros_like(lo))
        gain = (weight.unsqueeze(2) * lam.reshape(crown.batch, lam.shape[1], -1).abs()).sum(1)
        out[k] = gain * offset + cross.to(lo.dtype) * 1e-30  # every crossing ReLU stays a candidate
    return out


def _adam_ascent(params: list[Tensor], ranges: list[tuple[float, float]], objective: Callable[[], Tensor],
                 steps: int, lr: float) -> None:
    """Projected gradient ascent (Adam steps) of ``objective`` on parameters kept in their ``ranges``, in place.

    Written out rather than torch.optim.Adam, whose import pulls in torch._dynamo (1.6 s per process)."""
    m = [torch.zeros_like(p) for p in params]
    v = [torch.zeros_like(p) for p in params]
    b1, b2 = 0.9, 0.999
    for k in range(1, steps + 1):
        grads = torch.autograd.grad(objective(), params, allow_unused=True)
        with torch.no_grad():
            for p, g, mk, vk, (low, high) in zip(params, grads, m, v, ranges, strict=True):
                if g is None:
                    continue
                mk.mul_(b1).add_(g, alpha=1 - b1)
                vk.mul_(b2).addcmul_(g, g, value=1 - b2)
                step = lr * (mk / (1 - b1**k)) / ((vk / (1 - b2**k)).sqrt() + 1e-8)
                p.add_(step).clamp_(low, high)  # leaky slopes are clamped to their own range inside the engine


def split_scores(spec_rows: Tensor, lam_in: Tensor, width: Tensor, conjunctive: bool) -> Tensor:
    """How much each input dimension of each domain costs the bound: sum over the rows still unproven of
    |coefficient| x width, (N, d). Widths of 0 score 0."""
    weight = (spec_rows <= 0).to(lam_in.dtype) if conjunctive else torch.ones_like(spec_rows)
    return (weight.unsqueeze(2) * lam_in.abs()).sum(1) * width


class BranchAndBound(Certifier):
    name = "bab"
    guarantee = "complete"
    description = "branch and bound: batched alpha-CROWN bounds, input splitting by bound sensitivity, PGD attack"
    Options = BabOptions

    def prepare(self, problem: Problem) -> None:
        check_supported(problem.lowered())

    def certify(self, problem: Problem, options: BabOptions) -> Outcome:
        outcome = self._search(problem, options)
        if not problem.lowered().piecewise_linear:  # smooth activations: a verdict is sound, never complete
            outcome.guarantee = "sound"
        return outcome

    def _search(self, problem: Problem, options: BabOptions) -> Outcome:
        lowered = problem.lowered()
        check_supported(lowered)
        start = time.perf_counter()
        tried: dict[str, object] = {}
        if options.cheap_first:
            early, tried = cheap_answer(problem)
            if early is not None:
                return early
        relu_nodes = [k for k, n in enumerate(lowered.nodes) if isinstance(n.op, Activation) and
                      n.op.kind in ("relu", "leaky_relu")]
        if problem.region.dim > options.input_split_dims and relu_nodes:
            search_state: _Search = _ReluSearch(problem, options, start, relu_nodes)
        else:
            search_state = _Search(problem, options, start)
        outcome = search_state.run()
        outcome.details = {**tried, **outcome.details, "seconds_search": round(time.perf_counter() - start, 4)}
        return outcome


class _Search:
    """The frontier (tensors of sub-boxes and their bounds) and the loop over it."""

    def __init__(self, problem: Problem, options: BabOptions, start: float):
        self.problem, self.options, self.start = problem, options, start
        region = problem.region
        self.lo = region.lower.reshape(1, -1).double()
        self.hi = region.upper.reshape(1, -1).double()
        self.done_min = math.inf  # smallest lower bound among domains proven (leaves that left the frontier)
        self.visited = 0
        self.max_frontier = 1
        self.best_upper = math.inf
        self.warm = True
        self.setup = self.elapsed()  # time before the search (the cheap answer), not spent bounding domains

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def batch_size(self) -> int:
        """Domains split this step: ``batch``, fewer while one step would take over a tenth of the time left (so
        the budget is kept on large networks), judged from the time per domain bounded so far."""
        per_domain = (self.elapsed() - self.setup) / max(self.visited, 1)
        left = max(self.options.timeout - self.elapsed(), 0.0)
        fits = int(0.1 * left / max(2 * per_domain, 1e-9))
        return max(1, min(self.options.batch, fits))

    def root_options(self) -> BabOptions:
        """The options of the first bound, on the whole region: more alpha steps."""
        iters = max(self.options.alpha_iters, self.options.root_alpha_iters) if self.options.alpha_iters else 0
        return dataclasses.replace(self.options, alpha_iters=iters)

    def _bound(self, lo: Tensor, hi: Tensor, warm: dict[int, Tensor] | None) -> _Bounded:
        self.visited += lo.shape[0]
        return bound_domains(self.problem, lo, hi, self.options, warm)

    def _probe(self, points: Tensor) -> tuple[float, Tensor | None]:
        """The lowest margin among points projected into the region, and that point if it violates the spec."""
        pts = self.problem.region.project(points)
        margins = self.problem.margins(pts)
        k = int(margins.argmin())
        m = float(margins[k])
        self.best_upper = min(self.best_upper, m)
        return m, (pts[k] if m <= 0 else None)

    def run(self) -> Outcome:
        options, problem = self.options, self.problem
        conj = problem.spec.conjunctive
        self.visited += 1
        first = bound_domains(problem, self.lo, self.hi, self.root_options())
        lo, hi, bnd = self.lo, self.hi, first
        steps, reason = 0, "timeout"
        witness: Tensor | None = None
        if float(first.margin.min()) <= 0 and options.attack_restarts:
            # the whole region's bound does not decide it: attack properly before searching
            found = search(problem, samples=256, steps=30, starts=options.attack_restarts, seed=1)
            self.best_upper = min(self.best_upper, found.margin)
            if found.margin <= 0:
                lo, hi, witness, reason = lo[:0], hi[:0], found.point, "counterexample (attack)"
        stuck = torch.zeros(0, lo.shape[1], dtype=torch.float64), torch.zeros(0, lo.shape[1], dtype=torch.float64)
        stuck_lb = math.inf
        while witness is None:
            keep = bnd.margin <= 0
            if bool((~keep).any()):
                self.done_min = min(self.done_min, float(bnd.margin[~keep].min()))
            lo, hi = lo[keep], hi[keep]
            bnd = bnd.select(keep)
            if lo.shape[0] == 0:
                reason = "all domains certified" if stuck[0].shape[0] == 0 else "unsplittable domains left"
                break
            self.max_frontier = max(self.max_frontier, lo.shape[0])
            if self.elapsed() > options.timeout:
                reason = "timeout"
                break
            if lo.shape[0] > options.max_domains:
                reason = "max_domains"
                break
            steps += 1
            if options.attack_restarts and options.attack_every and steps % options.attack_every == 0:
                worst = bnd.margin.argsort()[: min(4, lo.shape[0])]
                refined = descend(problem, problem.region.project((lo[worst] + hi[worst]) / 2), 20)
                m, witness = self._probe(refined)
                if witness is not None:
                    reason = "counterexample"
                    break
            # the worst domains first: they decide the global bound and hold counterexamples if any
            order = bnd.margin.argsort()
            size = self.batch_size()
            pick, rest = order[:size], order[size:]
            plo, phi = lo[pick], hi[pick]
            width = phi - plo
            scores = split_scores(bnd.rows[pick], bnd.lam_in[pick], width, conj)
            dim = scores.argmax(dim=1)
            no_score = scores.gather(1, dim.unsqueeze(1))[:, 0] <= 0
            dim = torch.where(no_score, width.argmax(dim=1), dim)  # fall back to the widest dimension
            rows = torch.arange(plo.shape[0])
            a, b = plo[rows, dim], phi[rows, dim]
            mid = (a + b) / 2
            splittable = (a < mid) & (mid < b)
            if not bool(splittable.all()):  # float64 cannot split these further: they stay undecided
                stuck = (torch.cat([stuck[0], plo[~splittable]]), torch.cat([stuck[1], phi[~splittable]]))
                stuck_lb = min(stuck_lb, float(bnd.margin[pick][~splittable].min()))
                plo, phi, dim, mid = plo[splittable], phi[splittable], dim[splittable], mid[splittable]
                pick = pick[splittable]
                rows = torch.arange(plo.shape[0])
            left_hi, right_lo = phi.clone(), plo.clone()
            left_hi[rows, dim], right_lo[rows, dim] = mid, mid
            clo, chi = torch.cat([plo, right_lo]), torch.cat([left_hi, phi])
            warm = self._warm({k: a[pick] for k, a in bnd.alphas.items()}, lo.shape[0])
            if clo.shape[0]:
                m, witness = self._probe(torch.cat([(clo + chi) / 2, bnd.select(pick).minimisers(plo, phi)]))
                if witness is not None:
                    lo, hi = torch.cat([lo[rest], clo]), torch.cat([hi[rest], chi])
                    reason = "counterexample"
                    break
                child = self._bound(clo, chi, warm)
            else:
                child = None
            rest_b = bnd.select(rest)
            lo, hi = torch.cat([lo[rest], clo]), torch.cat([hi[rest], chi])
            bnd = rest_b if child is None else _concat(rest_b, child)
        frontier_min = float(bnd.margin.min()) if bnd.margin.numel() else math.inf
        lower = min(self.done_min, frontier_min, stuck_lb)
        return self._finish(reason, witness, lower, steps, int(lo.shape[0]) + int(stuck[0].shape[0]),
                            {"branching": "input"})

    def _finish(self, reason: str, witness: Tensor | None, lower: float, steps: int, frontier: int,
                extra: dict[str, object]) -> Outcome:
        details = {"domains": self.visited, "max_frontier": self.max_frontier, "steps": steps, "stopped": reason,
                   "frontier": frontier, "seconds_bab": round(self.elapsed(), 4), **extra}
        upper = self.best_upper if math.isfinite(self.best_upper) else None
        finite = lower if math.isfinite(lower) else None
        if witness is not None:
            return Outcome("falsified", margin_upper=upper, witness_t=witness, details=details)
        if reason == "all domains certified" and lower > 0:
            return Outcome("certified", margin_lower=finite, margin_upper=upper, details=details)
        details["best_lower_bound"] = finite
        return Outcome("unknown", margin_lower=finite, margin_upper=upper, details=details)

    def _warm(self, alphas: dict[int, Tensor], frontier: int) -> dict[int, Tensor] | None:
        """The parents' slopes for both children, unless holding them for the whole frontier costs too much."""
        if not alphas:
            return None
        per_domain = sum(a[0].numel() for a in alphas.values())
        if per_domain * frontier > _WARM_BUDGET:
            return None
        return {k: torch.cat([a, a]) for k, a in alphas.items()}


class _ReluSearch(_Search):
    """Branch and bound on ReLU phases for high-dimensional boxes: a domain is the region plus, per ReLU, a phase
    constraint (+1: input >= 0, -1: input <= 0, 0: free) that the bounds carry (the split neuron's own bounds are
    clamped, so its relaxation is exact there, and every later bound is computed within it; a domain whose
    constraints contradict its sound bounds is empty). The neuron split has the largest BaBSR-style score."""

    def __init__(self, problem: Problem, options: BabOptions, start: float, relu_nodes: list[int]):
        super().__init__(problem, options, start)
        self.relu_nodes = relu_nodes
        self.fixed: dict[int, Any] | None = None
        self.sizes = [math.prod(problem.lowered().nodes[k].shape) for k in relu_nodes]

    def run(self) -> Outcome:
        options, problem = self.options, self.problem
        splits = {k: torch.zeros(1, n, dtype=torch.int8) for k, n in zip(self.relu_nodes, self.sizes, strict=True)}
        bnd = self._bound_splits(splits, None, self.root_options())
        steps, reason, witness = 0, "timeout", None
        stuck_lb = math.inf
        stuck = 0
        if float(bnd.margin.min()) <= 0 and options.attack_restarts:
            found = search(problem, samples=256, steps=30, starts=options.attack_restarts, seed=1)
            self.best_upper = min(self.best_upper, found.margin)
            if found.margin <= 0:
                witness, reason = found.point, "counterexample (attack)"
        while witness is None:
            keep = bnd.margin <= 0
            proven = bnd.margin[~keep]
            proven = proven[torch.isfinite(proven)]  # empty domains (+inf) hold no point
            if proven.numel():
                self.done_min = min(self.done_min, float(proven.min()))
            bnd, splits = bnd.select(keep), {k: v[keep] for k, v in splits.items()}
            n = bnd.margin.shape[0]
            if n == 0:
                reason = "all domains certified" if stuck == 0 else "unsplittable domains left"
                break
            self.max_frontier = max(self.max_frontier, n)
            if self.elapsed() > options.timeout:
                break
            if n > options.max_domains:
                reason = "max_domains"
                break
            steps += 1
            order = bnd.margin.argsort()
            size = self.batch_size()
            pick, rest = order[:size], order[size:]
            chosen = bnd.select(pick)
            m, witness = self._probe(chosen.minimisers(self.lo.expand(pick.numel(), -1),
                                                       self.hi.expand(pick.numel(), -1)))
            if witness is not None:
                reason = "counterexample"
                break
            flat = torch.cat([chosen.scores[k] for k in self.relu_nodes], dim=1)
            best = flat.argmax(dim=1)
            ok = flat.gather(1, best.unsqueeze(1))[:, 0] > 0
            if not bool(ok.all()):  # every ReLU fixed and still unproven: left undecided (no LP at the leaves)
                stuck += int((~ok).sum())
                stuck_lb = min(stuck_lb, float(chosen.margin[~ok].min()))
                pick, best = pick[ok], best[ok]
                chosen = chosen.select(ok)
            children = {k: torch.cat([v[pick], v[pick]]) for k, v in splits.items()}
            p = pick.numel()
            offset = 0
            for k, size in zip(self.relu_nodes, self.sizes, strict=True):
                local = best - offset
                here = (local >= 0) & (local < size)
                rows = here.nonzero().reshape(-1)
                children[k][rows, local[rows]] = 1
                children[k][rows + p, local[rows]] = -1
                offset += size
            rest_b = bnd.select(rest)
            rest_splits = {k: v[rest] for k, v in splits.items()}
            if p:
                warm = self._warm({k: a for k, a in chosen.alphas.items()}, n)
                child = self._bound_splits(children, warm)
                bnd = _concat(rest_b, child)
                splits = {k: torch.cat([rest_splits[k], children[k]]) for k in splits}
            else:
                bnd, splits = rest_b, rest_splits
        frontier = bnd.margin[torch.isfinite(bnd.margin)]
        lower = min(self.done_min, float(frontier.min()) if frontier.numel() else math.inf, stuck_lb)
        return self._finish(reason, witness, lower, steps, int(bnd.margin.shape[0]) + stuck,
                            {"branching": "relu", "relus": sum(self.sizes)})

    def _bound_splits(self, splits: dict[int, Tensor], warm: dict[Any, Tensor] | None,
                      options: BabOptions | None = None) -> _Bounded:
        n = next(iter(splits.values())).shape[0]
        self.visited += n
        if self.fixed is None:  # the root's intermediate bounds hold in every domain: computed once, then kept
            region = self.problem.region
            root = BatchedCrown(self.problem.lowered(), self.lo, self.hi, region if isinstance(region, LpBall)
                                else None)
            nodes = self.problem.lowered().nodes
            self.fixed = {nodes[k].inputs[0]: root.boxes[nodes[k].inputs[0]] for k in self.relu_nodes}
        return bound_domains(self.problem, self.lo.expand(n, -1), self.hi.expand(n, -1), options or self.options,
                             warm, splits, self.fixed)


def _concat(a: _Bounded, b: _Bounded) -> _Bounded:
    if a.margin.numel() == 0:
        return b
    keys = set(a.alphas) & set(b.alphas)
    alphas = {k: torch.cat([a.alphas[k], b.alphas[k]]) for k in keys if a.alphas[k].shape[1:] == b.alphas[k].shape[1:]}
    scores = {k: torch.cat([a.scores[k], b.scores[k]]) for k in set(a.scores) & set(b.scores)}
    return _Bounded(torch.cat([a.margin, b.margin]), torch.cat([a.rows, b.rows]), torch.cat([a.lam_in, b.lam_in]),
                    alphas, scores)


@gcert.hookimpl
def gcert_register_certifiers(register: Callable[[Certifier], None]) -> None:
    register(BranchAndBound())

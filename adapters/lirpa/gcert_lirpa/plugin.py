"""The certifiers ``crown``, ``alpha-crown`` and ``ibp-lirpa``: auto_LiRPA 0.3 bounds of the composed network N.

N is rewritten into ops 0.3 supports, wrapped once per network as a float64 ``BoundedModule``, and bounded over the
region's box (or L1/L2 ball) with the spec as the ``C`` matrix.
"""

from __future__ import annotations

import logging
import math
import re
import types
import warnings
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import fx, nn

import gcert
from gcert.attack import cheap_answer
from gcert.contracts import Certifier, Outcome
from gcert.errors import GcertError, UnsupportedOperatorError, one_line
from gcert.problem import Problem
from gcert.splitting import as_outcome, bisect
from gcert_lirpa import compat
from gcert_lirpa.rewrite import for_lirpa

DTYPE = torch.float64
#: Where auto_LiRPA 0.3 and the network it computes may differ (relative to the outputs' size) before the
#: adapter refuses the network: 0.3 silently ignores some layer settings (e.g. a pooling ``ceil_mode``).
FORWARD_TOLERANCE = 1e-9
#: gcert's own certifiers, which bound every layer gcert's lowering knows (exactline: piecewise-linear ones).
ELSEWHERE = ("interval", "deeppoly", "exactline", "sampling")


def elsewhere(dim: int | None) -> tuple[str, ...]:
    """The certifiers of :data:`ELSEWHERE` that take a region of ``dim`` dimensions (exactline: one only)."""
    return tuple(n for n in ELSEWHERE if n != "exactline" or dim is None or dim <= 1)


@dataclass(frozen=True)
class LirpaOptions:
    """Settings of ``crown`` and ``ibp-lirpa``."""

    splits: int = 32  # one-dimensional regions (segments): most pieces when bisecting t (1 = no splitting)
    # Concrete points tried for a counterexample when not certified: this many of origin, corners and center,
    # plus (when > 0) the box vertices where CROWN's linear lower bounds of the worst rows are smallest.
    probes: int = 5
    cheap_first: bool = True  # a short attack and one interval pass (gcert's own) before auto_LiRPA's bound
    # How the linear bounds are computed: "backward" (CROWN proper: from the output back to the input, the
    # tightest), "forward" (forward-mode LiRPA: linear bounds in the input carried layer by layer, cost
    # proportional to the input's dimension, so cheap on segments), or "auto": forward when the region has
    # at most 16 dimensions and a layer holds more than 10,000 values (backward CROWN in 0.3's dense
    # "matrix" mode needs a (values x values) matrix per layer: 27 GiB once on the driving networks), backward
    # otherwise.
    mode: str = "auto"

    def __post_init__(self) -> None:
        if self.mode not in ("auto", "backward", "forward"):
            raise GcertError(f"crown.mode must be auto, backward or forward, got {self.mode!r}")


@dataclass(frozen=True)
class AlphaCrownOptions:
    """Settings of ``alpha-crown``: CROWN first, then this many optimisation steps of the relaxation slopes."""

    iterations: int = 20
    lr: float = 0.5  # Adam learning rate of the slopes (auto_LiRPA's lr_alpha)
    splits: int = 32
    probes: int = 5
    cheap_first: bool = True  # a short attack and one interval pass (gcert's own) before auto_LiRPA's bound


@dataclass
class Bounded:
    """A network as auto_LiRPA sees it: the rewritten float64 graph and its ``BoundedModule``."""

    graph: fx.GraphModule
    module: Any  # auto_LiRPA.BoundedModule
    lirpa: types.ModuleType = field(repr=False)
    forward: bool = False  # rewritten for forward-mode bounds, which then give every linear bound


# One BoundedModule per composed network object; the value holds a rewritten copy, never the key itself.
_BOUNDED: weakref.WeakKeyDictionary[nn.Module, dict[bool, Bounded]] = weakref.WeakKeyDictionary()
#: ``mode="auto"`` bounds forward when the region has at most this many dimensions and a layer more values.
AUTO_FORWARD_DIM, AUTO_FORWARD_LAYER = 16, 10_000


class LirpaCertifier(Certifier):
    """Shared work of the three certifiers; subclasses say which auto_LiRPA methods give the bound."""

    guarantee = "sound"
    Options: ClassVar[type] = LirpaOptions
    #: The region contract (gcert.contracts.Certifier): every kind, any dimension. Segments and boxes are bounded
    #: as boxes of t, L-inf balls as their box, L1/L2 balls as the ball and its box (see ``perturbations``).
    regions: ClassVar[tuple[str, ...]] = ("segment", "box", "lp-ball")
    max_dim: ClassVar[int | None] = None
    #: The auto_LiRPA methods every bound needs (alpha-CROWN's own failures fall back to CROWN, see below).
    methods: ClassVar[tuple[str, ...]] = ("CROWN", "IBP")
    #: Whether L1/L2 balls are also bounded as balls (not only by their box); see ``is_box``.
    balls: ClassVar[bool] = True

    def prepare(self, problem: Problem) -> None:
        """Build the BoundedModule and bound once, so unsupported layers are reported before any work.

        Raises only :class:`GcertError` (one line): an unexpected failure is reported as such, not as a traceback.
        """
        try:
            bounded, C, _ = self._setup(problem, self.Options())
            for _, x in perturbations(problem, bounded.lirpa):
                for method in self.methods:
                    if method != "IBP" or is_box(x):
                        compute(bounded, x, C, _method(bounded, method))
        except GcertError:
            raise
        except Exception as exc:  # noqa: BLE001 - any other failure is one line naming the certifier
            raise GcertError(f"certifier {self.name!r} failed on this network: {one_line(exc)}") from None

    def certify(self, problem: Problem, options: Any) -> Outcome:
        """The verdict; a failure that is not a :class:`GcertError` becomes ``unknown`` with the reason."""
        try:
            return self._certify(problem, options)
        except GcertError:
            raise
        except Exception as exc:  # noqa: BLE001 - never a bare traceback from inside the adapter
            return Outcome("unknown", details={"reason": f"{self.name} failed: {one_line(exc)}"})

    def _certify(self, problem: Problem, options: Any) -> Outcome:
        if getattr(options, "cheap_first", False):
            bounded, _, _ = self._setup(problem, options)  # what auto_LiRPA refuses is refused first
            early, _ = cheap_answer(problem)  # as every sound certifier: a short attack, one interval pass
            if early is not None and early.margin_lower is not None:  # (no interval pass: bound it below)
                early.details = {**_details(bounded), **early.details}
                return early
        if problem.region.dim == 1 and options.splits > 1:
            # A bound over a shorter piece of t is tighter: bisect where it is worst (gcert.splitting).
            bounded, C, d = self._setup(problem, options)
            details = _details(bounded)

            def piece(a: float, b: float) -> float:
                # Python floats are float64, and so are these endpoints: a float32 tensor would round them,
                # half the time inward, and the bound would then miss the ends of the piece.
                lo, hi = torch.tensor([a], dtype=DTYPE), torch.tensor([b], dtype=DTYPE)
                x = box_input(bounded.lirpa, lo, hi)
                return margin_lower_bound(problem, self.lower_bound(bounded, x, C, options, details) + d)

            lower, upper = region_box(problem)
            result = bisect(piece, problem.margins, float(lower[0]), float(upper[0]), options.splits)
            return as_outcome(result, details)
        rows, details = self.bound(problem, options)
        margin_lower = margin_lower_bound(problem, rows)
        if margin_lower > 0:
            return Outcome("certified", margin_lower=margin_lower, details=details)
        probes = probe_points(problem, options.probes)
        if options.probes > 0 and details.get("lirpa_mode") != "forward":  # its vertices need backward A
            probes = torch.cat([probes, crown_vertices(problem)])
        margins = problem.margins(probes)
        best = int(margins.argmin())
        if margins[best] <= 0:
            return Outcome("falsified", margin_lower=margin_lower, margin_upper=float(margins[best]),
                           witness_t=probes[best], details=details)
        return Outcome("unknown", margin_lower=margin_lower, margin_upper=float(margins.min()), details=details)

    def bound(self, problem: Problem, options: Any) -> tuple[torch.Tensor, dict[str, Any]]:
        """Lower bounds of every spec row ``C N(t) + d`` over the whole region, (m,) in float64, and details."""
        bounded, C, d = self._setup(problem, options)
        details = _details(bounded)
        by_input = {name: self.lower_bound(bounded, x, C, options, details) + d
                    for name, x in perturbations(problem, bounded.lirpa) if self.balls or is_box(x)}
        rows = torch.stack(list(by_input.values())).max(dim=0).values  # each bound is sound, so is the larger
        if len(by_input) > 1:
            details["margin_lower_over"] = {name: float(r.min()) for name, r in by_input.items()}
        return rows, details

    def lower_bound(self, bounded: Bounded, x: Any, C: torch.Tensor, options: Any,
                    details: dict[str, Any]) -> torch.Tensor:
        """A sound lower bound of ``C N(x)``, (m,); notes worth recording go into ``details``."""
        raise NotImplementedError

    def _setup(self, problem: Problem, options: Any = None) -> tuple[Bounded, torch.Tensor, torch.Tensor]:
        """The BoundedModule, and the spec's C (1, m, k) and d (m,) in float64 (as the spec stores them, if it
        stores float64; never rounded through float32 here)."""
        forward = self.forward_mode(problem, getattr(options, "mode", "backward"))
        C = torch.as_tensor(problem.spec.C).to(DTYPE).unsqueeze(0)
        return bounded_module(problem, forward), C, torch.as_tensor(problem.spec.d).to(DTYPE)

    def forward_mode(self, problem: Problem, mode: str) -> bool:
        """Whether the bounds are computed in forward mode (see ``LirpaOptions.mode``)."""
        if mode != "auto":
            return mode == "forward"
        return problem.region.dim <= AUTO_FORWARD_DIM and largest_layer(problem) > AUTO_FORWARD_LAYER


def margin_lower_bound(problem: Problem, rows: torch.Tensor) -> float:
    """A lower bound of the spec's margin from lower bounds of its rows ``C N + d``, (m,).

    A spec with clauses (each holds when one of its rows is > 0) reduces by its own ``reduce`` (min over clauses
    of max over their rows, which is sound for lower bounds); a spec without it holds when every row is > 0.
    """
    reduce = getattr(problem.spec, "reduce", None)
    if reduce is None:
        return float(rows.min())
    return float(torch.as_tensor(reduce(rows.reshape(1, -1))).reshape(-1)[0])


def region_box(problem: Problem) -> tuple[torch.Tensor, torch.Tensor]:
    """The region's box of t in float64, as the region gives it (``gcert.regions`` keeps its bounds in float64,
    and an Lp ball's box rounded outward); widening a float32 bound to float64 is exact, rounding a float64 one
    to float32 is not (half the time inward, and a bound over a box that misses part of the region is no bound).
    """
    region = problem.region
    return region.lower.to(DTYPE).reshape(-1), region.upper.to(DTYPE).reshape(-1)


def _details(bounded: Bounded) -> dict[str, Any]:
    return {"engine": f"auto_LiRPA {getattr(bounded.lirpa, '__version__', '0.3')}", "dtype": "float64",
            "lirpa_mode": "forward" if bounded.forward else "backward"}


def _method(bounded: Bounded, method: str) -> str:
    """The auto_LiRPA method that gives ``method``'s linear bound in ``bounded``'s mode."""
    return "forward" if bounded.forward and method == "CROWN" else method


_LARGEST: weakref.WeakKeyDictionary[nn.Module, int] = weakref.WeakKeyDictionary()


def largest_layer(problem: Problem) -> int:
    """The most values any module of the composed network outputs, at the region's origin (once per network)."""
    network = problem.composed()
    if network not in _LARGEST:
        _LARGEST[network] = _measure_largest_layer(problem)
    return _LARGEST[network]


def _measure_largest_layer(problem: Problem) -> int:
    # At the network's own dtype: a VNN-LIB box is float64 while the network is float32 (a float64 origin made
    # the first Linear fail with "mat1 and mat2 must have the same dtype").
    origin = problem.region.origin().reshape(1, -1).to(problem.dtype)
    sizes = [origin.numel()]

    def record(_module: nn.Module, _inputs: Any, out: Any) -> None:
        if isinstance(out, torch.Tensor):
            sizes.append(out.numel())

    network = problem.composed()
    hooks = [m.register_forward_hook(record) for m in network.modules() if not list(m.children())]
    try:
        with torch.no_grad():
            network(origin)
    finally:
        for h in hooks:
            h.remove()
    return max(sizes)


class CrownCertifier(LirpaCertifier):
    name = "crown"
    description = "CROWN linear relaxation (auto_LiRPA 0.3, float64), never looser than IBP; sound"

    def lower_bound(self, bounded: Bounded, x: Any, C: torch.Tensor, options: LirpaOptions,
                    details: dict[str, Any]) -> torch.Tensor:
        # CROWN alone can be looser than IBP (an unstable ReLU relaxed with slope 1 keeps its negative lower
        # bound, which IBP clips to 0); IBP costs one more pass, and the larger of two sound bounds is sound.
        crown = compute(bounded, x, C, _method(bounded, "CROWN"))
        return torch.maximum(crown, compute(bounded, x, C, "IBP")) if is_box(x) else crown


class AlphaCrownCertifier(CrownCertifier):
    name = "alpha-crown"
    description = "alpha-CROWN: CROWN with optimised relaxation slopes (auto_LiRPA 0.3, float64); sound"
    Options = AlphaCrownOptions

    def _certify(self, problem: Problem, options: AlphaCrownOptions) -> Outcome:
        if problem.region.dim > 1 or options.splits <= 1:
            # Optimising the slopes is costly (seconds to tens of seconds); skip it when CROWN certifies or its
            # probes already found a counterexample.
            quick = _CROWN.certify(problem, LirpaOptions(splits=options.splits, probes=options.probes,
                                                         cheap_first=options.cheap_first))
            if quick.verdict != "unknown" or options.iterations <= 0:
                quick.details["alpha_iterations"] = 0
                return quick
        outcome = super()._certify(problem, options)
        outcome.details.setdefault("alpha_iterations", options.iterations)
        return outcome

    def lower_bound(self, bounded: Bounded, x: Any, C: torch.Tensor, options: AlphaCrownOptions,
                    details: dict[str, Any]) -> torch.Tensor:
        crown = super().lower_bound(bounded, x, C, options, details)
        if options.iterations <= 0 or float(crown.min()) > 0:
            return crown  # certified by CROWN/IBP already, or no optimisation asked for
        bounded.module.set_bound_opts({"optimize_bound_args": {"iteration": options.iterations,
                                                               "lr_alpha": options.lr}})
        try:
            alpha = compute(bounded, x, C, "alpha-CROWN")
        except GcertError as exc:
            # 0.3's slope optimisation fails on some layers CROWN handles (e.g. Tanh after a convolution);
            # the CROWN bound is still sound, so it stands and the record says why it was not improved.
            details["alpha_crown_error"] = str(exc)
            return crown
        # Both are sound; alpha-CROWN returns its best step, which is not always above CROWN in every row.
        return torch.maximum(crown, alpha)


class IbpCertifier(LirpaCertifier):
    name = "ibp-lirpa"
    description = "interval bound propagation through auto_LiRPA 0.3 (float64, spec merged into the last layer); sound"
    methods = ("IBP",)
    balls = False  # 0.3's IBP over a ball is unsound (see is_box): the ball's box only

    def forward_mode(self, problem: Problem, mode: str) -> bool:
        return False  # IBP needs no linear bounds, so none of forward mode's rewrites (or its refusals)

    def lower_bound(self, bounded: Bounded, x: Any, C: torch.Tensor, options: LirpaOptions,
                    details: dict[str, Any]) -> torch.Tensor:
        if not is_box(x):  # see is_box: 0.3's IBP over an L1/L2 ball is unsound; the box bound stands
            return torch.full((C.shape[1],), -math.inf, dtype=DTYPE)
        return compute(bounded, x, C, "IBP")


def bounded_module(problem: Problem, forward: bool = False) -> Bounded:
    """The cached :class:`Bounded` of ``problem.composed()`` (for forward-mode bounds or not), built on first use."""
    lirpa = compat.load()  # also the one-line error when auto_LiRPA is missing, even with a warm cache
    network = problem.composed()
    cached = _BOUNDED.setdefault(network, {})
    if forward not in cached:
        cached[forward] = build(network, problem.region.origin(), lirpa, forward)
    return cached[forward]


def build(network: nn.Module, origin: torch.Tensor, lirpa: types.ModuleType, forward: bool = False) -> Bounded:
    """Rewrite ``network`` and wrap it as a BoundedModule; refuse it if auto_LiRPA computes another function."""
    example = origin.reshape(1, -1).to(DTYPE)
    graph = for_lirpa(network, example, DTYPE, forward=forward)
    with _lirpa_calls(lirpa) as log:
        try:
            module = lirpa.BoundedModule(graph, example, bound_opts=dict(compat.BOUND_OPTS), device="cpu")
        except Exception as exc:  # noqa: BLE001 - auto_LiRPA's failures become one line naming the op
            raise _unsupported(exc, lirpa, log, example.shape[1]) from None
        _refuse_unsound_nodes(module, lirpa, example.shape[1])
        _check_same_function(graph, module, example)
    return Bounded(graph, module, lirpa, forward)


def _refuse_unsound_nodes(module: Any, lirpa: types.ModuleType, dim: int | None = None) -> None:
    """Refuse nodes whose 0.3 bounds do not hold for their settings, should one get past the rewrites.

    ``BoundLeakyRelu`` assumes a slope in [0, 1] (above 1 it is concave, below 0 not monotone). ``nn.LeakyReLU``
    and ``F.leaky_relu`` are rewritten into ReLUs (``gcert_lirpa.rewrite.leaky_relu_as_relu``); other layers
    that export as LeakyRelu (e.g. ``nn.RReLU`` in eval mode) are not, and are refused here if their slope is
    outside that range.
    """
    for node in list(module._modules.values()):
        if isinstance(node, lirpa.operators.BoundLeakyRelu):
            slope = float(node.alpha)
            if not 0.0 <= slope <= 1.0:
                raise UnsupportedOperatorError(
                    "LeakyRelu", f"auto_LiRPA node {node.name!r}", elsewhere(dim),
                    hint=f"auto_LiRPA 0.3 bounds it soundly only for slopes in [0, 1], this one has slope {slope:g}")


def _check_same_function(graph: fx.GraphModule, module: Any, example: torch.Tensor) -> None:
    gen = torch.Generator().manual_seed(0)
    points = torch.cat([example, example + 0.1 * torch.randn(3, example.shape[1], generator=gen, dtype=DTYPE)])
    with torch.no_grad():
        want = graph(points)
        got = torch.cat([module(p[None]) for p in points])
    scale = 1.0 + float(want.abs().max())
    diff = float((got - want).abs().max())
    if not diff <= FORWARD_TOLERANCE * scale:
        raise GcertError(f"auto_LiRPA 0.3 computes a different function than the network (max difference "
                         f"{diff:.2g}), so its bounds would not hold; use certifier interval or sampling")


def perturbations(problem: Problem, lirpa: types.ModuleType) -> Iterator[tuple[str, Any]]:
    """The perturbed inputs whose bounds hold on the region: its bounding box, for balls too (below)."""
    yield "box", box_input(lirpa, *region_box(problem))
    # L1 and L2 balls are bounded by their box only: 0.3's CROWN over such a ball is unsound when the network
    # starts with an activation of its input (ReLU then Linear: a margin bound of 0.63 over an L1 ball where the
    # network reaches 0.53, 0.24 over an L2 ball where it reaches 0.15; found by tests/soundness).


def is_box(x: Any) -> bool:
    """Whether ``x`` is perturbed over a box (not an L1/L2 ball).

    0.3's IBP over an L1/L2 ball is unsound past the first layer: monotone ops (MaxPool, reshapes) pass the
    ball's perturbation on with their output interval, and the next Linear then bounds that interval as if it
    were an Lp ball of the same radius around its center (seen: ibp-lirpa certified a margin of 6681 through a
    2x2 max-pool where the margin is 5413). So IBP is only used over the box, which contains the ball; CROWN's
    bounds over the ball concretise the ball only at the input.
    """
    return getattr(getattr(x, "ptb", None), "norm", math.inf) == math.inf


def box_input(lirpa: types.ModuleType, lower: torch.Tensor, upper: torch.Tensor) -> Any:
    """The perturbed input of auto_LiRPA for the box [lower, upper] of t (1-D tensors; float32 ones are widened
    exactly, so pass float64 where the endpoints are not float32 values)."""
    lo, hi = lower.reshape(1, -1).to(DTYPE), upper.reshape(1, -1).to(DTYPE)
    return lirpa.BoundedTensor((lo + hi) / 2, lirpa.PerturbationLpNorm(norm=math.inf, x_L=lo, x_U=hi))


def compute(bounded: Bounded, x: Any, C: torch.Tensor, method: str) -> torch.Tensor:
    """auto_LiRPA's lower bound of ``C N(x)`` by ``method``, (m,); unsupported ops become one-line errors."""
    with _lirpa_calls(bounded.lirpa) as log:
        try:
            if method == "alpha-CROWN":  # optimises the slopes by gradient descent
                try:
                    lower, _ = bounded.module.compute_bounds(x=(x,), C=C, method=method, bound_upper=False)
                finally:
                    # A failed optimisation leaves the activations in its stage, breaking later CROWN calls.
                    for node in bounded.module.optimizable_activations:
                        node.opt_end()
            else:
                with torch.no_grad():
                    lower, _ = bounded.module.compute_bounds(x=(x,), C=C, method=method, bound_upper=False)
        except Exception as exc:  # noqa: BLE001
            raise _unsupported(exc, bounded.lirpa, log, math.prod(tuple(x.shape)[1:])) from None
    lower = lower.detach().reshape(-1)
    if not bool(torch.isfinite(lower).all()):
        raise GcertError(f"auto_LiRPA {method} gave a non-finite bound; use certifier interval or sampling")
    return lower


@contextmanager
def _lirpa_calls(lirpa: types.ModuleType) -> Iterator[list[str]]:
    """Float64 as the default dtype (see ``compat.default_dtype``), auto_LiRPA's log captured, not printed."""
    logger = logging.getLogger("auto_LiRPA.utils")
    messages: list[str] = []

    class _Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            messages.append(record.getMessage())

    handler, propagate = _Collect(logging.WARNING), logger.propagate
    logger.addHandler(handler)
    logger.propagate = False
    try:
        with compat.default_dtype(DTYPE), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TorchScript tracing warnings about the rewritten graph
            yield messages
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate


def _unsupported(exc: BaseException, lirpa: types.ModuleType, log: list[str], dim: int | None = None) -> GcertError:
    """One line naming the operator auto_LiRPA failed on (from its log, or the Bound object in the traceback);
    the certifiers it names take a region of ``dim`` dimensions."""
    if isinstance(exc, GcertError):
        return exc
    if _out_of_memory(exc):
        asked = re.search(r"allocate (\d+) bytes", str(exc))
        size = f" (one allocation of {int(asked.group(1)) / 2**30:.1f} GiB)" if asked else ""
        exact = "exactline (complete on a one-dimensional region of a piecewise-linear network), " \
            if "exactline" in elsewhere(dim) else ""
        return GcertError(
            f"auto_LiRPA 0.3 ran out of memory bounding this network{size}: it bounds convolutions as dense "
            f"matrices (gcert_lirpa.compat.BOUND_OPTS); use certifier {exact}deeppoly or interval")
    names = sorted({m.split("Name: ", 1)[1].split(",")[0] for m in log if m.startswith("Name: ")})
    if names:
        return UnsupportedOperatorError(names[0], "the network as auto_LiRPA 0.3 parses it", elsewhere(dim),
                                        hint=f"auto_LiRPA 0.3 has no bound for {', '.join(names)}")
    node = None
    tb = exc.__traceback__
    while tb is not None:  # the innermost auto_LiRPA operator object on the stack
        candidate = tb.tb_frame.f_locals.get("self")
        if isinstance(candidate, lirpa.operators.Bound):
            node = candidate
        tb = tb.tb_next
    if node is None:
        return GcertError(f"auto_LiRPA 0.3 failed: {one_line(exc)}")
    op = type(node).__name__.removeprefix("Bound")
    return UnsupportedOperatorError(op, f"auto_LiRPA node {node.name!r}", elsewhere(dim),
                                    hint=f"auto_LiRPA 0.3: {one_line(exc)}")


def _out_of_memory(exc: BaseException) -> bool:
    text = str(exc)
    return isinstance(exc, MemoryError) or "can't allocate memory" in text or "out of memory" in text.lower()


def crown_vertices(problem: Problem, rows: int = 3) -> torch.Tensor:
    """Candidate counterexamples: for the ``rows`` spec rows with the lowest CROWN bound, the vertex of the box
    where CROWN's linear lower bound of that row is smallest, projected into the region, (<= rows, dim)."""
    bounded, C, _ = _CROWN._setup(problem)
    region, module = problem.region, bounded.module
    lo, hi = region_box(problem)
    x = box_input(bounded.lirpa, lo, hi)
    with _lirpa_calls(bounded.lirpa) as log, torch.no_grad():
        try:
            lower, _, A = module.compute_bounds(x=(x,), C=C, method="CROWN", bound_upper=False, return_A=True,
                                                needed_A_dict={module.output_name[0]: module.input_name[0]})
        except Exception as exc:  # noqa: BLE001
            raise _unsupported(exc, bounded.lirpa, log, region.dim) from None
    slopes = A[module.output_name[0]][module.input_name[0]]["lA"][0].reshape(C.shape[1], -1)
    worst = lower.reshape(-1).argsort()[:rows]
    vertices = torch.where(slopes[worst] > 0, lo, hi)
    return region.project(vertices.to(region.lower.dtype))


def probe_points(problem: Problem, n: int) -> torch.Tensor:
    """Origin, box corners and center of the region, projected into it (the first ``n`` of them)."""
    region = problem.region
    points = [region.origin(), region.lower, region.upper, (region.lower + region.upper) / 2]
    return region.project(torch.stack(points[: max(n, 1)]).to(region.lower.dtype))


_CROWN = CrownCertifier()
CERTIFIERS: tuple[Callable[[], Certifier], ...] = (CrownCertifier, AlphaCrownCertifier, IbpCertifier)


@gcert.hookimpl
def gcert_register_certifiers(register: Callable[[Certifier], None]) -> None:
    for certifier in CERTIFIERS:
        register(certifier())

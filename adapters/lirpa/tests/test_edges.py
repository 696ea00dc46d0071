"""Issue 11 ("Verdicts you can trust at every edge"), the adapter's part: networks and regions built so that the
old code gave a wrong ``certified`` or crashed. Each verdict is checked against the network itself, evaluated in
float64 on a dense grid that contains the point where it fails (no bound computation shared with the adapter).
"""

from __future__ import annotations

import copy
import io
import math
import re
import warnings
from fractions import Fraction

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gcert.contracts import Outcome
from gcert.errors import GcertError, UnsupportedOperatorError
from gcert.models import load_model
from gcert.problem import Problem
from gcert.regions import Box, LpBall, Segment
from gcert.spec import Spec
from gcert.testing import make_registry
from gcert_lirpa import plugin

pytestmark = pytest.mark.usefixtures("lirpa")

REG = make_registry(plugin)
# Every way the adapter computes bounds: backward CROWN, forward-mode CROWN, alpha-CROWN, IBP; with and without
# splitting t (one bound over the whole region, or best-first bisection).
MODES = {
    "crown backward": ("crown", {"mode": "backward"}),
    "crown forward": ("crown", {"mode": "forward"}),
    "alpha-crown": ("alpha-crown", {"iterations": "5"}),
    "ibp-lirpa": ("ibp-lirpa", {}),
}
SPLITS = ("1", "8")


def certify(mode: str, problem: Problem, splits: str = "1") -> Outcome:
    name, options = MODES[mode]
    certifier = REG.certifier(name)
    return certifier.certify(problem, certifier.parse_options({**options, "splits": splits}))


def grid_margins(problem: Problem, n: int = 4001) -> torch.Tensor:
    """Margins of the composed network, in float64, on a grid of the (one-dimensional) region's exact ends."""
    lo, hi = float(problem.region.lower[0]), float(problem.region.upper[0])
    t = torch.linspace(lo, hi, n, dtype=torch.float64)
    t = torch.cat([t, torch.tensor([lo, (lo + hi) / 2, hi], dtype=torch.float64)])[:, None]
    with torch.no_grad():
        return problem.spec.margin(copy.deepcopy(problem.composed()).double()(t))


def assert_sound(outcome: Outcome, problem: Problem, grid: torch.Tensor | None = None) -> None:
    sampled = float((grid_margins(problem) if grid is None else grid).min())
    assert outcome.margin_lower is None or outcome.margin_lower <= sampled + 1e-9, (outcome, sampled)
    if outcome.verdict == "certified":
        assert sampled > 0, (outcome, sampled)


# --- 1. LeakyReLU with a slope outside [0, 1] ----------------------------------------------------------------


class Kink(nn.Module):
    """``y0 = sign * leaky(z) + k z + c`` with ``z = x - 1/2`` on x in [0, 1], and ``y1 = 0`` (through one final
    Linear); the cases below have their smallest margin y0 - y1 = ``c`` at the kink x = 1/2. ``functional``
    uses ``F.leaky_relu`` inside ``forward`` instead of the module."""

    def __init__(self, slope: float, k: float, c: float, functional: bool = False, sign: float = -1.0):
        super().__init__()
        self.slope, self.k, self.c, self.functional, self.sign = slope, k, c, functional, sign
        self.leaky = nn.LeakyReLU(slope)
        self.z, self.out = nn.Linear(1, 1), nn.Linear(1, 2)
        with torch.no_grad():
            self.z.weight.fill_(1.0)
            self.z.bias.fill_(-0.5)
            self.out.weight.copy_(torch.tensor([[1.0], [0.0]]))
            self.out.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.z(x)
        a = F.leaky_relu(z, self.slope) if self.functional else self.leaky(z)
        return self.out(self.sign * a + self.k * z + self.c)


# (slope, k, c, sign). slope 2: -leaky(z) + 1.5 z - 0.1; leaky is concave there, so 0.3's chord "upper" bound
# lies below it and CROWN certified a margin >= 0.15, although the margin is -0.1 at x = 0.5. slope -1:
# leaky(z) - 0.1 = |z| - 0.1; leaky is not monotone there, so 0.3's IBP (its values at the two ends of the
# interval, 0.5 and 0.5) certified a margin >= 0.4.
KINKS = {"slope 2": (2.0, 1.5, -0.1, -1.0), "slope -1": (-1.0, 0.0, -0.1, 1.0)}


def kink_problem(slope: float, k: float, c: float, sign: float, functional: bool, segment: bool) -> Problem:
    net = Kink(slope, k, c, functional, sign)
    region = Segment(torch.zeros(1), torch.ones(1)) if segment else Box(torch.zeros(1), torch.ones(1))
    return Problem(net, nn.Identity(), region, Spec.top1(0, 2))


@pytest.mark.parametrize("mode", sorted(MODES))
@pytest.mark.parametrize("kink", sorted(KINKS))
@pytest.mark.parametrize("functional", [False, True], ids=["module", "F.leaky_relu"])
def test_leaky_relu_outside_0_1_is_never_certified_where_it_fails(mode, kink, functional):
    for segment in (False, True):
        problem = kink_problem(*KINKS[kink], functional=functional, segment=segment)
        grid = grid_margins(problem)
        assert float(grid.min()) == pytest.approx(-0.1)  # at the kink, x = 0.5
        for splits in SPLITS:
            outcome = certify(mode, problem, splits)
            assert outcome.verdict != "certified", (segment, splits, outcome)
            assert_sound(outcome, problem, grid)


@pytest.mark.parametrize("mode", sorted(MODES))
def test_leaky_relu_with_a_usual_slope_is_still_bounded_tightly(mode):
    # slope 0.2 (every GAN's): leaky(z) - 0.6 z + 0.1 >= 0.1, smallest at the kink; the rewrite is exact, and
    # bisecting t (first at the kink) certifies it in every mode.
    problem = kink_problem(0.2, -0.6, 0.1, 1.0, functional=False, segment=True)
    assert float(grid_margins(problem).min()) == pytest.approx(0.1)
    outcome = certify(mode, problem, "8")
    assert outcome.verdict == "certified"
    assert_sound(outcome, problem)


def test_a_leaky_relu_that_is_not_rewritten_is_refused_in_one_line():
    # nn.RReLU in eval mode is a LeakyReLU with slope (lower + upper) / 2 and exports as LeakyRelu; it is not
    # rewritten, so the BoundedModule is checked for LeakyRelu nodes with a slope outside [0, 1].
    net = nn.Sequential(nn.Linear(1, 3), nn.RReLU(1.5, 2.5), nn.Linear(3, 2)).eval()
    problem = Problem(net, nn.Identity(), Box(torch.zeros(1), torch.ones(1)), Spec.top1(0, 2))
    for name in ("crown", "alpha-crown", "ibp-lirpa"):
        with pytest.raises(UnsupportedOperatorError) as err:
            REG.certifier(name).prepare(problem)
        message = str(err.value)
        assert err.value.op == "LeakyRelu" and "\n" not in message and "slope 2" in message, message
        assert "deeppoly, exactline, interval, sampling" in message
    with pytest.raises(UnsupportedOperatorError):
        certify("crown forward", problem)


# --- 2. clamp(min > max) -----------------------------------------------------------------------------------


class Clamp(nn.Module):
    def __init__(self, how: str):
        super().__init__()
        self.how, self.lin = how, nn.Linear(2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.lin(x)
        z = torch.clamp(z, 0.6, 0.4) if self.how == "function" else z.clamp(min=0.6, max=0.4)
        return z[:, :2] - z[:, 2:]  # torch: 0.4 everywhere, so both outputs are 0 and top-1 never holds


@pytest.mark.parametrize("how", ["function", "method", "onnx"])
def test_clamp_with_min_above_max_is_refused_in_every_mode(how, tmp_path):
    torch.manual_seed(0)
    net = Clamp("function" if how == "onnx" else how).eval()
    if how == "onnx":
        path = tmp_path / "clamp.onnx"
        _export(net, torch.zeros(1, 2), path)
        net = load_model(str(path)).module
    box = Box(torch.zeros(2), torch.ones(2))
    problem = Problem(net, nn.Identity(), box, Spec.top1(0, 2))
    with torch.no_grad():
        assert float(problem.margins(box.sample(100)).max()) == 0.0  # never holds
    for mode in MODES:
        name, options = MODES[mode]
        certifier = REG.certifier(name)
        with pytest.raises(UnsupportedOperatorError) as err:
            certifier.certify(problem, certifier.parse_options(options))
        assert err.value.op == "clamp" and re.search(r"min 0\.6\d* > max 0\.4", str(err.value)), mode
        with pytest.raises(UnsupportedOperatorError):
            certifier.prepare(problem)


# --- 3. the dtype crash on a generator-shaped ONNX network over a VNN-LIB box ----------------------------------


def _export(net: nn.Module, example: torch.Tensor, path) -> None:
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net.eval(), (example,), buf, dynamo=False, input_names=["x"], output_names=["y"],
                          opset_version=13)
    path.write_bytes(buf.getvalue())


def _generator_like(width: int, path) -> nn.Module:
    torch.manual_seed(0)
    _export(nn.Sequential(nn.Linear(4, width), nn.ReLU(), nn.Linear(width, 10)), torch.zeros(1, 4), path)
    return load_model(str(path)).module


@pytest.mark.parametrize("width", [2000, 12_000])  # 12,000 > 10,000 values: auto takes forward mode
def test_crown_bounds_a_small_input_widened_to_an_image_sized_layer(width, tmp_path):
    net = _generator_like(width, tmp_path / "net.onnx")
    # A VNN-LIB box: float64 bounds, while the loaded network is float32 (the crash: "mat1 and mat2 must have
    # the same dtype, but got Double and Float", while measuring the largest layer for mode auto).
    lower = torch.tensor([0.4, 0.45, 0.5, 0.3], dtype=torch.float64)
    box = Box(lower, lower + 0.01)
    label = int(net(box.origin().float()[None]).argmax())
    problem = Problem(net, nn.Identity(), box, Spec.top1(label, 10))
    crown = REG.certifier("crown")
    crown.prepare(problem)
    out = crown.certify(problem, crown.parse_options())
    assert out.details["lirpa_mode"] == ("forward" if width > 10_000 else "backward")
    pts = box.sample(2000, torch.Generator().manual_seed(1))
    with torch.no_grad():
        sampled = float(problem.spec.margin(copy.deepcopy(net).double()(pts)).min())
    assert out.margin_lower is not None and out.margin_lower <= sampled + 1e-9
    assert out.verdict != "certified" or sampled > 0


def test_crown_runs_on_a_vnnlib_property_from_the_command_line(tmp_path, capsys):
    import json

    from gcert.cli import main

    _generator_like(2000, tmp_path / "net.onnx")
    lines = [f"(declare-const X_{i} Real)" for i in range(4)] + [f"(declare-const Y_{i} Real)" for i in range(10)]
    for i in range(4):
        lines += [f"(assert (>= X_{i} 0.4))", f"(assert (<= X_{i} 0.41))"]
    lines.append("(assert (>= Y_1 Y_6))")
    (tmp_path / "prop.vnnlib").write_text("\n".join(lines) + "\n")
    out = tmp_path / "r.jsonl"
    try:
        main(["run", "-c", "crown", "--vnnlib", str(tmp_path / "prop.vnnlib"), "--model",
              str(tmp_path / "net.onnx"), "-q", "--workers", "1", "--out", str(out)])
    except SystemExit as exit_:
        assert exit_.code in (0, None), capsys.readouterr().err
    assert "Traceback" not in capsys.readouterr().err
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 1 and not records[0].get("error"), records
    assert records[0]["details"]["lirpa_mode"] == "backward"


# --- 4. float64 endpoints and spec constants ----------------------------------------------------------------


def _shifted_identity(shift: float) -> nn.Module:
    """A float64 network ``x -> (x - shift, 0)``: its top-1 margin is ``x - shift``, exactly in float64 where
    ``x - shift`` is representable."""
    net = nn.Linear(1, 2).double()
    with torch.no_grad():
        net.weight.copy_(torch.tensor([[1.0], [0.0]], dtype=torch.float64))
        net.bias.copy_(torch.tensor([-shift, 0.0], dtype=torch.float64))
    return net


@pytest.mark.parametrize("mode", sorted(MODES))
def test_interval_ends_that_float32_rounds_inward_are_bounded_as_given(mode):
    # Box [0.1, 1] in float64; float32(0.1) = 0.10000000149 rounds *up*, inward. The margin x - 0.1 - 1e-10 is
    # -1e-10 at x = 0.1; a bound over the rounded box was 1.4e-9 > 0, and the old splitting path certified.
    problem = Problem(_shifted_identity(0.1 + 1e-10), nn.Identity(),
                      Box(torch.tensor([0.1], dtype=torch.float64), torch.tensor([1.0], dtype=torch.float64)),
                      Spec.top1(0, 2))
    grid = grid_margins(problem)
    assert float(grid.min()) < 0
    for splits in SPLITS:
        outcome = certify(mode, problem, splits)
        assert outcome.verdict != "certified", (splits, outcome)
        assert_sound(outcome, problem, grid)


def _ball_that_float32_rounds_inward() -> tuple[torch.Tensor, float, Fraction]:
    """A float32 center and a radius whose exact ``center - eps`` float32 rounds up (inward), and that value."""
    for i in range(1, 400):
        center = torch.tensor([0.5 + i / 1024], dtype=torch.float32)
        eps = round((0.1 + i * 1e-4) * 2**50) / 2**50  # few enough bits that center - eps is a float64
        exact = Fraction(float(center[0])) - Fraction(eps)
        if Fraction(float((center - eps)[0])) > exact and Fraction(float(exact)) == exact:
            return center, eps, exact
    raise AssertionError("no such ball")


@pytest.mark.parametrize("mode", sorted(MODES))
def test_a_ball_whose_float32_box_rounds_inward_is_bounded_as_given(mode):
    # center - eps computed in float32 lands above the ball's true lower end (the old LpBall box); the region
    # now keeps its box in float64, rounded outward, and the adapter bounds that box as given.
    center, eps, exact = _ball_that_float32_rounds_inward()
    ball = LpBall(center, eps, math.inf)
    lowest = float(exact)  # exactly center - eps, in float64
    assert float((center - eps)[0]) > lowest and float(ball.lower[0]) <= lowest
    problem = Problem(_shifted_identity(lowest), nn.Identity(), ball, Spec.top1(0, 2))
    with torch.no_grad():  # at the ball's true lower end the margin is exactly 0: the spec fails there
        assert float(problem.spec.margin(_shifted_identity(lowest)(torch.tensor([[lowest]], dtype=torch.float64)))) == 0
    for splits in SPLITS:
        outcome = certify(mode, problem, splits)
        assert outcome.verdict != "certified", (splits, outcome)
        assert outcome.margin_lower <= 1e-12


@pytest.mark.parametrize("mode", sorted(MODES))
def test_spec_constants_are_used_in_float64(mode):
    # Y_0 > 0.7 over X_0 in [0.7, 1] (identity network): fails at X_0 = 0.7. With d rounded to float32
    # (-0.699999988) the bound was 1.2e-8 > 0.
    net = nn.Linear(1, 1).double()
    with torch.no_grad():
        net.weight.fill_(1.0)
        net.bias.zero_()
    spec = Spec(torch.tensor([[1.0]], dtype=torch.float64), torch.tensor([-0.7], dtype=torch.float64))
    box = Box(torch.tensor([0.7], dtype=torch.float64), torch.tensor([1.0], dtype=torch.float64))
    problem = Problem(net, nn.Identity(), box, spec)
    for splits in SPLITS:
        outcome = certify(mode, problem, splits)
        assert outcome.verdict != "certified", (splits, outcome)
        assert outcome.margin_lower <= 1e-15


class _AnyRowSpec(Spec):
    """One clause of every row, for a Spec without ``clauses``: holds when some row is > 0."""

    def margin(self, y: torch.Tensor) -> torch.Tensor:
        return self.margins(y).max(dim=1).values

    def reduce(self, rows: torch.Tensor) -> torch.Tensor:
        return rows.max(dim=1).values


@pytest.mark.parametrize("mode", sorted(MODES))
def test_row_bounds_are_combined_by_the_specs_own_reduction(mode):
    # Over x in [0, 1]: row 0 is x + 0.5 > 0 everywhere, row 1 is -x, never > 0 after 0. Their disjunction (one
    # clause of both rows) holds and is certified; with every row required (min over rows), it fails at x = 0.
    net = nn.Linear(1, 2).double()
    with torch.no_grad():
        net.weight.copy_(torch.tensor([[1.0], [-1.0]]))
        net.bias.copy_(torch.tensor([0.5, 0.0]))
    C, d = torch.eye(2, dtype=torch.float64), torch.zeros(2, dtype=torch.float64)
    either = Spec(C, d, clauses=((0, 1),)) if "clauses" in Spec.__dataclass_fields__ else _AnyRowSpec(C, d)
    box = Box(torch.zeros(1, dtype=torch.float64), torch.ones(1, dtype=torch.float64))
    for splits in SPLITS:
        outcome = certify(mode, Problem(net, nn.Identity(), box, either), splits)
        assert outcome.verdict == "certified" and outcome.margin_lower == pytest.approx(0.5)
        assert certify(mode, Problem(net, nn.Identity(), box, Spec(C, d)), splits).verdict == "falsified"


# --- 5. failures inside the adapter --------------------------------------------------------------------------


def test_an_unexpected_failure_is_an_unknown_outcome_or_one_line(monkeypatch):
    def broken(*_args, **_kwargs):
        raise RuntimeError("something inside broke\nwith a second line")

    problem = kink_problem(0.2, -0.6, 0.1, 1.0, functional=False, segment=True)
    monkeypatch.setattr(plugin, "bounded_module", broken)
    for name in ("crown", "alpha-crown", "ibp-lirpa"):
        certifier = REG.certifier(name)
        for splits in SPLITS:
            outcome = certifier.certify(problem, certifier.parse_options({"splits": splits}))
            assert outcome.verdict == "unknown"
            assert outcome.details["reason"] == f"{name} failed: RuntimeError: something inside broke"
        with pytest.raises(GcertError) as err:
            certifier.prepare(problem)
        assert "\n" not in str(err.value) and "something inside broke" in str(err.value)


def test_the_certifiers_declare_every_region_kind_and_dimension():
    for name in ("crown", "alpha-crown", "ibp-lirpa"):
        certifier = REG.certifier(name)
        assert certifier.regions == ("segment", "box", "lp-ball") and certifier.max_dim is None


# --- found by the differential harness (tests/soundness): IBP over an L2 ball ----------------------------------


@pytest.mark.parametrize("p", [2.0, 1.0])
def test_ibp_over_an_lp_ball_is_not_carried_past_the_first_layer(p):
    # A 2x2 max-pool, then a Linear with large weights, over an L2 (L1) ball without clipping: 0.3's IBP passed
    # the ball's perturbation through the max-pool, and the Linear bounded the pooled interval as if it were the
    # ball itself; ibp-lirpa certified a margin of 6681 where the network's is 5413.
    torch.manual_seed(3)
    net = nn.Sequential(nn.MaxPool2d(2), nn.Flatten(), nn.Linear(2, 2)).double()
    with torch.no_grad():
        net[2].weight.copy_(torch.tensor([[900.0, -700.0], [-800.0, 600.0]], dtype=torch.float64))
        net[2].bias.copy_(torch.tensor([3000.0, 0.0], dtype=torch.float64))
    center = torch.tensor([0.5, -0.3, 0.1, 0.2, -1.0, 0.4, 0.3, 0.0], dtype=torch.float64).reshape(1, 2, 4)
    ball = LpBall(center, 0.3, p, clip=None)
    problem = Problem(net, nn.Identity(), ball, Spec.top1(0, 2))
    pts = ball.sample(20000, torch.Generator().manual_seed(0))
    with torch.no_grad():
        sampled = float(problem.spec.margin(net(pts.reshape(-1, 1, 2, 4))).min())
    for mode in ("crown backward", "alpha-crown", "ibp-lirpa"):
        outcome = certify(mode, problem)
        assert outcome.margin_lower <= sampled + 1e-9, (mode, outcome.margin_lower, sampled)


@pytest.mark.parametrize("dim", [1, 16])
def test_recommendations_name_only_certifiers_that_take_the_region(dim):
    from gcert_lirpa import plugin as lirpa_plugin

    exc = RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 29000000000 bytes.")
    message = str(lirpa_plugin._unsupported(exc, None, [], dim))
    assert "ran out of memory" in message and "deeppoly" in message
    assert ("exactline" in message) == (dim == 1)
    assert ("exactline" in lirpa_plugin.elsewhere(dim)) == (dim == 1)


class FunctionalPool(nn.Module):
    """F.avg_pool2d / F.max_pool2d with padding, called in forward (not as modules)."""

    def __init__(self, kind: str):
        super().__init__()
        torch.manual_seed(0)
        self.kind = kind
        self.lin = nn.Linear(9, 2)
        with torch.no_grad():
            self.lin.weight.mul_(50)

    def forward(self, x):
        pooled = F.avg_pool2d(x, 2, 1, 1) if self.kind == "avg" else F.max_pool2d(x, 2, 1, 1)
        return self.lin(torch.flatten(pooled, 1))


@pytest.mark.parametrize("kind", ["avg", "max"])
@pytest.mark.parametrize("name", ["crown", "alpha-crown", "ibp-lirpa"])
def test_functional_pooling_with_padding_is_bounded_soundly(kind, name):
    # found by the soundness harness: 0.3 bounded F.avg_pool2d(x, 2, 1, 1) with CROWN at +0.14 where the
    # network's margin goes down to -27 (a wrong 'certified'); the module form was already rewritten
    net = FunctionalPool(kind).eval()
    problem = Problem(net, nn.Identity(), LpBall(torch.full((1, 2, 2), 0.5), 0.3, math.inf, clip=None),
                      Spec.top1(0, 2))
    ts = problem.region.sample(20000, torch.Generator().manual_seed(1))
    with torch.no_grad():
        sampled = float(problem.spec.margin(copy.deepcopy(problem.composed()).double()(ts.double())).min())
    certifier = REG.certifier(name)
    try:
        out = certifier.certify(problem, certifier.parse_options({"cheap_first": "false"}))
    except UnsupportedOperatorError:
        assert kind == "max"  # 0.3 cannot bound overlapping max-pooling: refused in one line, as the module
        return
    assert out.margin_lower <= sampled + 1e-6
    if out.verdict == "certified":
        assert sampled > 0

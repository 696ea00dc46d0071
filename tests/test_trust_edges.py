"""Issue 11's wrong verdicts, one test each: regions other than [0, 1], activation parameters past their usual
range, float32 spec constants, rounding, VNN-LIB conjunctions, max_delta, and the default relaxation.

Every test here failed on the code before the fix (the network, region and spec are built so that the old
behaviour gives a wrong verdict), and checks the answer against a plain forward pass or exact arithmetic.
"""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
import torch
from torch import nn

from gcert.contracts import check_region
from gcert.errors import GcertError
from gcert.problem import Problem
from gcert.regions import Box, LpBall, Segment
from gcert.spec import Spec
from gcert.testing import make_registry
from gcert.vnnlib import read_vnnlib
from gcert.witness import check_witness
from gcert_plugins.deeppoly import DeepPoly, DeepPolyOptions
from gcert_plugins.exactline import ExactLine
from gcert_plugins.genprover import GenProver
from gcert_plugins.interval import IntervalCertifier
from gcert_plugins.sampling import SamplingFalsifier

NATIVE = {"exactline": ExactLine(), "genprover": GenProver(), "deeppoly": DeepPoly(),
          "interval": IntervalCertifier(), "sampling": SamplingFalsifier()}
SOUND = ("deeppoly", "interval")


def run(name: str, problem: Problem, **options: object):
    certifier = NATIVE[name]
    return certifier.certify(problem, certifier.parse_options(options))


def box1(lo: float, hi: float) -> Box:
    return Box(torch.tensor([lo], dtype=torch.float64), torch.tensor([hi], dtype=torch.float64))


class Affine1(nn.Module):
    """y = [w * x + b, c] on a one-value input: the spec 'label 1' is c - w x - b > 0."""

    def __init__(self, w: float, b: float, c: float):
        super().__init__()
        self.w, self.b, self.c = w, b, c

    def forward(self, x):
        return torch.cat([self.w * x + self.b, 0 * x + self.c], dim=1)


# --- 1. exactline and genprover analyse the region's own interval ---------------------------------------


@pytest.mark.parametrize("region", [box1(0.0, 3.0), LpBall(torch.tensor([1.5]), 1.5, math.inf, clip=None)])
def test_exactline_falsifies_a_one_dimensional_box_that_fails_past_one(region):
    problem = Problem(Affine1(1.0, 0.0, 2.0), nn.Identity(), region, Spec.top1(1, 2))  # fails for x >= 2
    out = run("exactline", problem)
    assert out.verdict == "falsified"
    witness, reason = check_witness(problem, out.witness_t)
    assert witness is not None, reason
    assert witness.t[0] >= 2.0
    assert out.fraction[0] == pytest.approx(2 / 3, abs=1e-9)


def test_genprover_does_not_certify_a_one_dimensional_box_that_fails_past_one():
    class Tanh1(nn.Module):
        def forward(self, x):
            return torch.cat([4 * torch.tanh(x), 0 * x + 3.5], dim=1)  # fails for x >= 1.354

    problem = Problem(Tanh1(), nn.Identity(), box1(0.0, 3.0), Spec.top1(1, 2))
    out = run("genprover", problem)
    assert out.verdict == "falsified"
    assert out.fraction[1] < 0.5  # the spec holds on [0, 1.354) of [0, 3]: share 0.45
    assert check_witness(problem, out.witness_t)[0] is not None


def test_the_host_refuses_a_region_a_certifier_does_not_declare():
    registry = make_registry()
    others = {n: registry.certifier(n) for n in registry.certifiers}
    region = Box(torch.zeros(2), torch.ones(2))
    with pytest.raises(GcertError, match="'exactline' analyses segment/box/lp-ball of at most 1 dimension.*"
                                         "certifiers that take it: .*deeppoly.*interval"):
        check_region(registry.certifier("exactline"), region, others)
    check_region(registry.certifier("deeppoly"), region, others)  # accepted: no error


# --- 2. leaky ReLU with slope > 1 is concave ---------------------------------------------------------------


class LeakySkip(nn.Module):
    """y0 = leaky(x, slope) - 1.5 x (for slope 2: -|x| / 2, at most 0); y1 = -0.25; spec: y1 > y0."""

    def __init__(self, slope: float, functional: bool):
        super().__init__()
        self.slope, self.functional = slope, functional
        self.act = nn.LeakyReLU(slope)

    def forward(self, x):
        h = nn.functional.leaky_relu(x, self.slope) if self.functional else self.act(x)
        return torch.cat([h - 1.5 * x, 0 * x - 0.25], dim=1)


@pytest.mark.parametrize("functional", [False, True])
@pytest.mark.parametrize("name", SOUND)
def test_leaky_relu_with_slope_above_one_is_not_certified(name, functional):
    problem = Problem(LeakySkip(2.0, functional), nn.Identity(), box1(-1.0, 1.0), Spec.top1(1, 2))
    assert float(problem.margins(torch.tensor([[0.5]])).min()) <= 0  # a plain forward pass fails at 0.5
    for splits in (1, 32):
        assert run(name, problem, splits=splits).verdict != "certified"


@pytest.mark.parametrize("slope", [-0.5, 0.0, 0.5, 1.0, 2.0, 3.0])
def test_leaky_relu_bounds_enclose_every_slope(slope):
    problem = Problem(LeakySkip(slope, False), nn.Identity(), box1(-1.0, 0.7), Spec.top1(1, 2))
    ts = torch.cat([torch.linspace(-1.0, 0.7, 2001, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)])
    ts = ts.reshape(-1, 1)  # the kink at 0 is where the minimum is
    true_min = float(problem.margins(ts).min())
    for name in SOUND:
        out = run(name, problem, splits=1)
        assert out.margin_lower is None or out.margin_lower <= true_min + 1e-9
    assert run("exactline", problem).margin_upper == pytest.approx(true_min, abs=1e-6)


# --- 3. clamp(min > max) is the constant max ----------------------------------------------------------------


def test_clamp_with_min_above_max_is_the_constant_max():
    class Clamp(nn.Module):
        def forward(self, x):  # y0 = 0.5 x (the clamp is 0 everywhere), y1 = 0.5: label 1 fails for x >= 1
            return torch.cat([torch.clamp(x, 1.0, 0.0) + 0.5 * x, 0 * x + 0.5], dim=1)

    problem = Problem(Clamp(), nn.Identity(), box1(-2.0, 2.0), Spec.top1(1, 2))
    assert float(problem.margins(torch.tensor([[2.0]]))[0]) == -0.5
    for name in SOUND:
        for splits in (1, 32):
            out = run(name, problem, splits=splits)
            assert out.verdict != "certified", (name, splits)
            assert out.margin_lower <= -0.5 + 1e-9
    assert run("exactline", problem).verdict == "falsified"


# --- 4. spec constants and region ends in float64 ---------------------------------------------------------


def test_vnnlib_threshold_is_not_rounded_to_float32(tmp_path):
    path = tmp_path / "p.vnnlib"
    path.write_text("(declare-const X_0 Real)\n(declare-const Y_0 Real)\n"
                    "(assert (>= X_0 0.7))\n(assert (<= X_0 1.0))\n(assert (<= Y_0 0.7))\n")
    prop = read_vnnlib(path)
    assert Fraction(float(prop.lower[0])) <= Fraction("0.7")  # the box contains the property's box
    assert Fraction(float(-prop.spec.d[0])) >= Fraction("0.7")  # safe row Y_0 - c > 0 with c >= 0.7
    problem = Problem(nn.Linear(1, 1).requires_grad_(False), nn.Identity(), Box(prop.lower, prop.upper), prop.spec)
    problem.network.weight.fill_(1.0)
    problem.network.bias.fill_(0.0)
    for name in SOUND:
        assert run(name, problem).verdict != "certified"  # Y_0 = X_0 = 0.7 is unsafe


def test_regression_tau_is_float64_and_rounded_down():
    spec = Spec.regression(reference=0.0, tau=0.1)
    assert spec.d.dtype == torch.float64
    assert Fraction(float(spec.d[0])) <= Fraction(0.0) + Fraction(0.1)
    y = torch.tensor([[0.10000000075]], dtype=torch.float64)  # outside tau, inside float32's 0.1000000015
    assert not bool(spec.holds(y)[0])


def test_ball_box_contains_the_ball_in_exact_arithmetic():
    center = torch.tensor([0.3, 0.7], dtype=torch.float32)
    ball = LpBall(center, 0.1, math.inf, clip=None)
    for i in range(2):
        c = Fraction(float(center[i]))
        assert Fraction(float(ball.lower[i])) <= c - Fraction(0.1)
        assert Fraction(float(ball.upper[i])) >= c + Fraction(0.1)


@pytest.mark.parametrize("name", SOUND)
def test_bisection_ends_are_not_rounded_inward(name):
    # the margin is negative only on [0.1, 0.1000000007), which float32's 0.1 (0.10000000149) leaves out
    problem = Problem(Affine1(-1e9, 0.1000000007e9, 0.0), nn.Identity(), box1(0.1, 0.3), Spec.top1(1, 2))
    assert float(problem.spec.margin(torch.tensor([[-1e9 * 0.1 + 0.1000000007e9, 0.0]], dtype=torch.float64))) < 0
    assert run(name, problem).verdict != "certified"


# --- 5. rounding ------------------------------------------------------------------------------------------------


class Cancel(nn.Module):
    """y0 = b (a x) - c x + K in float64: exactly 257 x + K, but b * a rounds to c - 256 + ... so bounds
    computed in float64 see 256 x + K. On [-0.75, -0.25] the exact minimum is -0.5 while 256 x + K >= 0.25."""

    def __init__(self):
        super().__init__()
        a = b = float(2**30 + 1)
        c = float(Fraction(a) * Fraction(b) - 257)
        assert Fraction(c) == Fraction(a) * Fraction(b) - 257  # c is a float64
        self.l1 = nn.Linear(1, 1).double()
        self.l2 = nn.Linear(2, 1).double()
        with torch.no_grad():
            self.l1.weight.fill_(a)
            self.l1.bias.fill_(0.0)
            self.l2.weight.copy_(torch.tensor([[b, -c]], dtype=torch.float64))
            self.l2.bias.fill_(192.25)

    def forward(self, x):
        y0 = self.l2(torch.cat([self.l1(x), x], dim=1))
        return torch.cat([y0, 0 * y0], dim=1)


def exact_cancel_margin(x: Fraction) -> Fraction:
    a = b = Fraction(2**30 + 1)
    c = a * b - 257
    return b * (a * x) - c * x + Fraction(192.25)


@pytest.mark.parametrize("name", [*SOUND, "exactline"])
def test_large_weights_with_cancellation_are_not_certified(name):
    problem = Problem(Cancel().requires_grad_(False), nn.Identity(), box1(-0.75, -0.25), Spec.top1(0, 2))
    assert exact_cancel_margin(Fraction(-0.75)) == Fraction(-1, 2)
    assert run(name, problem).verdict != "certified"


# --- 6. VNN-LIB: top-level assertions are conjoined -----------------------------------------------------------

CONJOINED = """(declare-const X_0 Real)
(declare-const Y_0 Real)
(declare-const Y_1 Real)
(declare-const Y_2 Real)
(assert (>= X_0 0.0))
(assert (<= X_0 1.0))
(assert (<= Y_0 Y_1))
(assert (<= Y_0 Y_2))
"""


class Const3(nn.Module):
    def forward(self, x):
        return torch.cat([0 * x + 1.0, 0 * x + 0.0, 0 * x + 2.0], dim=1)  # Y_0 = 1 > Y_1 = 0: never unsafe


def test_top_level_assertions_are_conjoined(tmp_path):
    path = tmp_path / "p.vnnlib"
    path.write_text(CONJOINED)
    prop = read_vnnlib(path)
    assert prop.spec.clauses is None or len(prop.spec.clauses) == 1
    problem = Problem(Const3(), nn.Identity(), Box(prop.lower, prop.upper), prop.spec, {"property": prop})
    assert not prop.violated(torch.tensor([0.5]), torch.tensor([1.0, 0.0, 2.0]))
    for name in (*SOUND, "exactline"):
        assert run(name, problem).verdict == "certified", name
    assert run("sampling", problem).verdict != "falsified"


def test_or_of_ands_is_a_conjunction_of_clauses(tmp_path):
    path = tmp_path / "p.vnnlib"
    path.write_text(CONJOINED.replace("(assert (<= Y_0 Y_1))\n(assert (<= Y_0 Y_2))",
                                      "(assert (or (and (<= Y_0 Y_1) (<= Y_0 Y_2)) (and (>= Y_2 3.5))))"))
    prop = read_vnnlib(path)
    # unsafe: (Y_0 <= Y_1 and Y_0 <= Y_2) or Y_2 >= 3.5
    ys = torch.tensor([[1.0, 0.0, 2.0], [1.0, 0.0, 3.5], [0.0, 1.0, 2.0], [1.0, 2.0, 0.0]], dtype=torch.float64)
    expect_unsafe = [False, True, True, False]
    assert (~prop.spec.holds(ys)).tolist() == expect_unsafe
    assert [prop.violated(torch.tensor([0.5]), y) for y in ys] == expect_unsafe


def test_a_witness_that_satisfies_the_rows_but_not_the_formula_is_rejected(tmp_path):
    path = tmp_path / "p.vnnlib"
    path.write_text(CONJOINED)
    prop = read_vnnlib(path)
    # a spec that disagrees with the property (as the old parser's did): the formula has the last word
    wrong = Spec(torch.tensor([[1.0, -1.0, 0.0]], dtype=torch.float64), torch.zeros(1, dtype=torch.float64))
    problem = Problem(Const3(), nn.Identity(), Box(prop.lower, prop.upper), wrong, {"property": prop})
    problem.spec = Spec(-wrong.C, wrong.d)  # rows say unsafe (Y_1 - Y_0 = -1 <= 0)
    witness, reason = check_witness(problem, torch.tensor([0.5], dtype=torch.float64))
    assert witness is None and "formula" in reason


# --- 7. max_delta is itself certified ---------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(6))
def test_exactline_max_delta_is_a_certified_strength(seed):
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Flatten(), nn.Linear(6, 12), nn.ReLU(), nn.Linear(12, 3)).eval().requires_grad_(False)
    x0 = torch.rand(1, 6)
    direction = torch.randn(1, 6)
    label = int(net(x0[None]).argmax())
    delta = 3.0

    def problem_at(strength: float) -> Problem:
        end = x0.double() + strength * direction.double()  # as gcert's default region hook builds it
        return Problem(net, nn.Identity(), Segment(x0, end), Spec.top1(label, 3), {"delta": strength})

    out = run("exactline", problem_at(delta))
    if out.verdict == "certified":
        assert out.max_delta == delta
        return
    assert out.max_delta is not None and out.max_delta <= out.details["max_delta_supremum"]
    if out.max_delta > 0:
        assert run("exactline", problem_at(out.max_delta)).verdict == "certified"
    supremum = out.details["max_delta_supremum"]
    assert run("exactline", problem_at(supremum * (1 + 1e-6) + 1e-9)).verdict != "certified"


# --- 9. deeppoly's default relaxation is never worse than either ------------------------------------------------


def test_deeppoly_default_relaxation_is_both_and_never_worse():
    assert DeepPolyOptions().relaxation == "both"
    torch.manual_seed(3)
    net = nn.Sequential(nn.Linear(4, 16), nn.Sigmoid(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 3)).eval()
    net.requires_grad_(False)
    x0 = torch.rand(4)
    label = int(net(x0[None]).argmax())
    problem = Problem(net, nn.Identity(), LpBall(x0, 0.05, math.inf, clip=None), Spec.top1(label, 3))
    bounds = {m: run("deeppoly", problem, relaxation=m).margin_lower for m in ("deepcert", "tangent", "both")}
    assert bounds["both"] >= max(bounds["deepcert"], bounds["tangent"]) - 1e-12

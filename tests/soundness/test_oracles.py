"""The oracles themselves: each catches a planted wrong answer, and each agrees with torch where it should.

No test here can pass with a broken oracle: every judge test plants a certifier whose answer is wrong (or right)
on a triple whose truth is known by hand, and asserts the exact violation kind (or none).
"""

from __future__ import annotations

import math
import random
from fractions import Fraction

import pytest
import torch
from hypothesis import HealthCheck, given, settings

from gcert.contracts import Certifier, Outcome
from tests.soundness import harness, oracle_exact, oracle_grid, oracle_vnnlib
from tests.soundness import strategies as S
from tests.soundness.test_known_edges import EDGES, IDENTITY, NEG_ABS, _rows


class Fake(Certifier):
    """A certifier that answers whatever it is told to."""

    name = "fake"
    description = "planted answers"

    def __init__(self, guarantee: str, outcome: Outcome):
        self.guarantee = guarantee
        self.outcome = outcome

    def certify(self, problem, options):  # noqa: ANN001, ANN201
        return self.outcome


def kinds(case: S.Case, cert: Certifier) -> set[str]:
    vs = harness.check_case(case, ["fake"], certifiers={"fake": cert}, raise_on=False, record=False)
    return {v.kind for v in vs if v.severity == "fail"}


T = torch.tensor
HOLDS = S.Case("t", IDENTITY, S.BoxDesc((0.7,), (1.0,)), _rows(((1.0,),), (-0.5,)))  # y = x > 0.5 on [0.7, 1]
TIE = EDGES["fl32-threshold"]  # y = x > 0.7 on [0.7, 1]: margin exactly 0 at 0.7
CONCAVE = S.Case("t", NEG_ABS["module"], S.BoxDesc((-1.0,), (1.0,)), _rows(((-1.0,),), (-0.1,)))  # fails near 0


# --- exact oracle ---------------------------------------------------------------------------------------------


def test_exact_oracle_catches_a_wrong_certified_at_a_tie():
    assert kinds(TIE, Fake("sound", Outcome("certified"))) == {"wrong-certified"}
    assert kinds(HOLDS, Fake("sound", Outcome("certified"))) == set()


def test_exact_line_catches_a_wrong_certified_inside_the_region():
    # y = -|x| fails only around 0; the exact line finds the kink even if no sampled point hit it
    assert "wrong-certified" in kinds(CONCAVE, Fake("sound", Outcome("certified")))
    ev, _ = harness.evidence(CONCAVE, *CONCAVE.modules())
    assert ev.exact_min == Fraction(-0.1)  # the spec constant as the float64 it is


def test_falsifier_may_not_certify():
    assert kinds(HOLDS, Fake("falsifier", Outcome("certified"))) == {"falsifier-certified"}


def test_witness_checks():
    good = Fake("sound", Outcome("falsified", witness_t=T([0.7], dtype=torch.float64)))
    assert kinds(TIE, good) == set()
    # 0.69999998 < 0.7 by 4e-8 of the region's size: the README lets the host clamp that to 0.7
    fl32 = Fake("sound", Outcome("falsified", witness_t=T([0.7], dtype=torch.float32)))
    assert kinds(TIE, fl32) == set()
    outside = Fake("sound", Outcome("falsified", witness_t=T([0.6999], dtype=torch.float64)))
    assert kinds(TIE, outside) == {"witness-outside-region"}
    holds_there = Fake("sound", Outcome("falsified", witness_t=T([0.9], dtype=torch.float64)))
    assert kinds(TIE, holds_there) == {"wrong-falsified"}
    assert kinds(TIE, Fake("falsifier", Outcome("falsified"))) == {"wrong-falsified"}


def test_margin_lower_must_be_a_lower_bound():
    assert kinds(HOLDS, Fake("sound", Outcome("unknown", margin_lower=0.2))) == set()  # true minimum 0.2
    assert kinds(HOLDS, Fake("sound", Outcome("unknown", margin_lower=0.2 + 1e-9))) == {"margin-lower-unsound"}


def test_fraction_must_bracket_the_exact_share():
    case = S.Case("t", IDENTITY, S.BoxDesc((0.0,), (3.0,)), _rows(((-1.0,),), (2.0,)))  # holds on [0, 2): 2/3
    ev, _ = harness.evidence(case, *case.modules())
    assert ev.notes["share_exact"] == Fraction(2, 3)
    assert kinds(case, Fake("quantitative", Outcome("unknown", fraction=(0.6, 0.7)))) == set()
    assert kinds(case, Fake("quantitative", Outcome("certified", fraction=(1.0, 1.0)))) == {
        "fraction-wrong", "wrong-certified"}


def test_complete_certifier_must_decide_exactly():
    assert kinds(HOLDS, Fake("complete", Outcome("unknown", margin_lower=0.2))) == {"incomplete"}
    assert kinds(HOLDS, Fake("complete", Outcome("certified", margin_lower=0.1))) == set()  # sound: a note only
    assert kinds(HOLDS, Fake("complete", Outcome("certified", margin_lower=0.3))) == {"margin-lower-unsound"}
    assert kinds(HOLDS, Fake("complete", Outcome("certified", margin_lower=0.2, fraction=(1.0, 1.0)))) == set()


def test_harness_finds_a_planted_always_certified_certifier():
    """The random fc slice, with a sound certifier that certifies everything, fails within a few examples."""
    fake = Fake("sound", Outcome("certified"))

    @settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck),
              database=None)
    @given(case=S.fc_cases(one_dim=True))
    def run(case):
        harness.check_case(case, ["fake"], certifiers={"fake": fake}, record=False)

    with pytest.raises(AssertionError, match="wrong-certified"):
        run()


@settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck), database=None)
@given(case=S.fc_cases())
def test_exact_evaluation_agrees_with_torch_float64(case):
    """Own exact semantics of every FC op (clamp min > max, leaky slopes, ...) against torch in float64."""
    net, gen = case.modules()
    layers = oracle_exact.case_layers(case, net, gen)
    lo, hi = oracle_exact.t_bounds(case.region)
    t = [(a + b) / 2 for a, b in zip(lo, hi, strict=True)]
    exact = oracle_exact.evaluate(layers, oracle_exact.control(case.region, t))
    x = oracle_grid.controls64(case.region, torch.tensor([[float(v) for v in t]], dtype=torch.float64))
    with torch.no_grad():
        y = S.float64_copy(net)(S.float64_copy(gen)(x)).reshape(-1).tolist()
    m, _ = oracle_exact.magnitude(layers, [float(v) for v in oracle_exact.control(case.region, t)])
    for e, f, mag in zip(exact, y, m, strict=True):
        assert abs(float(e) - f) <= 1e-12 * (1 + mag), (float(e), f)


@settings(max_examples=30, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck), database=None)
@given(case=S.fc_cases(one_dim=True))
def test_exact_line_minimum_is_below_a_dense_grid(case):
    """The exact line's minimum is <= every grid margin and is (nearly) attained by the grid."""
    ev, _ = harness.evidence(case, *case.modules())
    grid = oracle_grid.grid_evidence(case, *case.modules())
    assert float(ev.exact_min) <= float(grid.min_margin) + grid.tol
    assert grid.share is None or ev.share is None or abs(ev.share[0] - grid.share[0]) <= grid.share[1] + 1e-9


# --- grid oracle ----------------------------------------------------------------------------------------------


def test_grid_oracle_catches_a_wrong_certified_on_a_cnn():
    net = S.ConvNet((1, 3, 3), (S.Op("conv", (2, 2, 1, 1, 1)), S.Op("act", (S.Act("relu"),)),
                                S.Op("flatten", ("view",)), S.Op("linear", (2,))), seed=3)
    region = S.BoxDesc(tuple([0.0] * 9), tuple([1.0] * 9), (1, 3, 3))
    case = S.Case("t", net, region, S.SpecDesc("top1", label=0, k=2))
    ev, exact = harness.evidence(case, *case.modules())
    assert not exact and ev.oracle == "grid64"
    # top-1 for class 0 and for class 1 cannot both hold everywhere: one of them fails somewhere
    other = S.Case("t", net, region, S.SpecDesc("top1", label=1, k=2))
    found = kinds(case, Fake("sound", Outcome("certified"))) | kinds(other, Fake("sound", Outcome("certified")))
    assert found == {"wrong-certified"}


def test_grid_oracle_samples_stay_in_lp_balls():
    for p in (math.inf, 2.0, 1.0):
        region = S.BallDesc((0.5, 0.2, 0.9), 0.3, p, (0.0, 1.0))
        pts = oracle_grid.sample64(region, 500, torch.Generator().manual_seed(0))
        assert all(oracle_exact.contains(region, row) for row in pts.tolist())
        exact = oracle_exact.region_points(region, random.Random(0))
        assert all(oracle_exact.contains(region, [float(v) for v in row]) for row in exact)


# --- VNN-LIB evaluator ----------------------------------------------------------------------------------------


def test_vnnlib_top_level_asserts_are_conjoined():
    prop = oracle_vnnlib.VnnlibProperty(EDGES["vnnlib-conjoined"].vnnlib)
    x = [Fraction(0)]
    assert prop.margin(x, [Fraction(0)]) > 0  # Y_0 = 0 satisfies only the first assert: safe
    assert prop.margin(x, [Fraction(1, 2)]) > 0
    # witness at X = 0 (Y_0 = 0) claimed by a reader that took the asserts as alternatives: rejected
    case = EDGES["vnnlib-conjoined"]
    fake = Fake("sound", Outcome("falsified", witness_t=T([0.0], dtype=torch.float64)))
    assert kinds(case, fake) == {"wrong-falsified"}


def test_vnnlib_or_and_and_constants_are_exact_decimals():
    text = ("(declare-const X_0 Real)\n(declare-const Y_0 Real)\n(declare-const Y_1 Real)\n"
            "(assert (>= X_0 0.7))\n(assert (<= X_0 1.0))\n"
            "(assert (or (and (<= Y_0 0.70000000000000000001) (>= Y_1 Y_0)) (>= Y_0 5.0)))\n")
    prop = oracle_vnnlib.VnnlibProperty(text)
    assert prop.box() == ([Fraction(7, 10)], [Fraction(1)])
    x = [Fraction(7, 10)]
    assert prop.margin(x, [Fraction(7, 10), Fraction(1)]) < 0  # first disjunct: unsafe
    assert prop.margin(x, [Fraction(7, 10), Fraction(0)]) > 0  # Y_1 < Y_0: safe
    assert prop.margin(x, [Fraction(6), Fraction(0)]) < 0  # second disjunct
    assert prop.margin(x, [Fraction(7, 10) + Fraction(1, 10**20), Fraction(1)]) == 0  # boundary, exactly


def test_vnnlib_oracle_catches_a_wrong_certified():
    case = EDGES["vnnlib-threshold"]  # X_0 = 0.7 gives Y_0 = 0.7 <= 0.7: unsafe
    assert kinds(case, Fake("sound", Outcome("certified"))) == {"wrong-certified"}
    ok = Fake("sound", Outcome("falsified", witness_t=T([0.7], dtype=torch.float64)))
    assert kinds(case, ok) == set()

"""bab and its batched CROWN engine: bounds against dense sampling, verdicts against an exact MILP oracle (scipy's
HiGHS, sharing no code with gcert), against exactline on segments, and its record, options and edges."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from gcert.bounds import Box as IntervalBox
from gcert.crown import BatchedCrown
from gcert.errors import GcertError
from gcert.problem import Problem
from gcert.regions import Box, LpBall
from gcert.spec import Spec
from gcert.witness import check_witness
from gcert_plugins.bab import BranchAndBound, split_scores
from gcert_plugins.deeppoly import DeepPolyAnalysis, spec_lower_bound
from gcert_plugins.exactline import ExactLine

from .test_exact import make_problem, pwl_network

BAB, EXACT = BranchAndBound(), ExactLine()
milp = pytest.importorskip("scipy.optimize").milp


def _grid(lo: torch.Tensor, hi: torch.Tensor, n: int) -> torch.Tensor:
    """n^d points of the box [lo, hi] (d <= 3), float64."""
    axes = [torch.linspace(float(a), float(b), n, dtype=torch.float64) for a, b in zip(lo, hi, strict=True)]
    return torch.cartesian_prod(*axes).reshape(-1, lo.numel())


def tiny_net(seed: int, d: int, width: int = 8, depth: int = 2, classes: int = 3) -> nn.Sequential:
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    n = d
    for _ in range(depth):
        layers += [nn.Linear(n, width), nn.ReLU()]
        n = width
    layers.append(nn.Linear(n, classes))
    return nn.Sequential(*layers).double().eval()


def exact_min_rows(net: nn.Sequential, lo: np.ndarray, hi: np.ndarray, C: np.ndarray, d: np.ndarray) -> np.ndarray:
    """The exact minimum of every row C y + d over the box (big-M MILP of the ReLU network, solved by HiGHS)."""
    from scipy.optimize import Bounds, LinearConstraint

    mods = list(net)
    Ws = [m.weight.detach().numpy().astype(np.float64) for m in mods if isinstance(m, nn.Linear)]
    bs = [m.bias.detach().numpy().astype(np.float64) for m in mods if isinstance(m, nn.Linear)]
    n0 = lo.size
    # variables: x, then per hidden layer (y, a); bounds by interval arithmetic, padded outward
    l_prev, u_prev = lo.astype(np.float64), hi.astype(np.float64)
    var_lo, var_hi, integ = list(l_prev), list(u_prev), [0] * n0
    offsets = [0]
    rows_A, rows_lo, rows_hi = [], [], []
    for W, b in zip(Ws[:-1], bs[:-1], strict=True):
        wp, wn = np.clip(W, 0, None), np.clip(W, None, 0)
        zl = wp @ l_prev + wn @ u_prev + b
        zu = wp @ u_prev + wn @ l_prev + b
        zl, zu = zl - 1e-9 * (1 + abs(zl)), zu + 1e-9 * (1 + abs(zu))
        k = W.shape[0]
        base = len(var_lo)
        prev = offsets[-1]
        var_lo += list(np.maximum(zl, 0)) + [0] * k
        var_hi += list(np.maximum(zu, 0)) + [1] * k
        integ += [0] * k + [1] * k
        for i in range(k):
            # y >= z  <=>  y - W x >= b ;  y <= z - l (1 - a)  <=>  y - W x - l a <= b - l ;  y <= u a
            for coef_a, coef_z, lo_r, hi_r in ((0.0, 1.0, b[i], np.inf), (-zl[i], 1.0, -np.inf, b[i] - zl[i]),
                                               (-zu[i], 0.0, -np.inf, 0.0)):
                r = np.zeros(base + 2 * k)
                r[prev:prev + W.shape[1]] = -coef_z * W[i]
                r[base + i], r[base + k + i] = 1.0, coef_a
                rows_A.append(r)
                rows_lo.append(lo_r)
                rows_hi.append(hi_r)
        offsets.append(base)
        l_prev, u_prev = np.maximum(zl, 0), np.maximum(zu, 0)
    nv = len(var_lo)
    A = np.zeros((len(rows_A), nv))
    for r, a in enumerate(rows_A):
        A[r, : a.size] = a
    W, b = Ws[-1], bs[-1]
    out = []
    for c, dc in zip(C, d, strict=True):
        obj = np.zeros(nv)
        obj[offsets[-1]:offsets[-1] + W.shape[1]] = c @ W
        res = milp(obj, constraints=LinearConstraint(A, rows_lo, rows_hi), integrality=np.array(integ),
                   bounds=Bounds(np.array(var_lo), np.array(var_hi)),
                   options={"mip_rel_gap": 0.0})
        assert res.status == 0, res.message
        out.append(res.fun + float(c @ b + dc))
    return np.array(out)


def box_problem(net: nn.Module, lo: torch.Tensor, hi: torch.Tensor, spec: Spec | None = None) -> Problem:
    if spec is None:
        with torch.no_grad():
            label = int(net(((lo + hi) / 2).reshape(1, -1).to(next(net.parameters()).dtype)).argmax())
        spec = Spec.top1(label, 3)
    return Problem(net, nn.Identity(), Box(lo, hi), spec, {})


# --- the engine ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 3, 4, 7])  # fully connected + leaky, residual
def test_root_bound_is_deeppolys_on_relu_networks(seed):
    """One domain, default slopes: the same back-substitution as deeppoly (a consistency check, not an oracle)."""
    p = make_problem(pwl_network(seed), seed, 0.3)
    lo, hi = torch.zeros(1, 1, dtype=torch.float64), torch.ones(1, 1, dtype=torch.float64)
    ours = BatchedCrown(p.lowered(), lo, hi).output_bounds(p.spec.C, p.spec.d)[0][0]
    theirs = spec_lower_bound(DeepPolyAnalysis(p.lowered(), IntervalBox(lo, hi), None, "deepcert"), p.spec)
    assert torch.allclose(ours, theirs, rtol=0, atol=1e-9)


@pytest.mark.parametrize("seed", range(4))  # relu, leaky relu, conv + batchnorm + max-pool, hardtanh + avg-pool
def test_batched_bounds_hold_on_every_sub_box_and_any_slopes(seed):
    p = make_problem(pwl_network(seed), seed, 0.6)
    low = p.lowered()
    edges = torch.tensor([0.0, 0.1, 0.1, 0.37, 1.0], dtype=torch.float64)  # includes a degenerate box [0.1, 0.1]
    lo, hi = edges[:-1].reshape(-1, 1), edges[1:].reshape(-1, 1)
    crown = BatchedCrown(low, lo, hi)
    gen = torch.Generator().manual_seed(seed)
    alphas = {k: torch.rand(a.shape, generator=gen, dtype=torch.float64) * 1.6 - 0.3  # out of range: clamped
              for k, a in crown.default_alphas(p.spec.num_rows).items()}
    plain = crown.output_bounds(p.spec.C, p.spec.d)[0]
    tuned = crown.output_bounds(p.spec.C, p.spec.d, alphas)[0]
    for i in range(lo.shape[0]):
        ts = lo[i] + (hi[i] - lo[i]) * torch.linspace(0, 1, 3001, dtype=torch.float64).reshape(-1, 1)
        true = p.spec.margins(low.forward(ts)).min(dim=0).values
        assert bool((plain[i] <= true).all()), (i, plain[i], true)
        assert bool((tuned[i] <= true).all()), (i, tuned[i], true)


def test_split_scores_follow_coefficient_times_width():
    rows = torch.tensor([[-1.0, 2.0]])
    lam = torch.tensor([[[1.0, -3.0, 0.5], [100.0, 100.0, 100.0]]])  # the second row is proven: ignored
    width = torch.tensor([[1.0, 0.5, 0.0]])
    assert split_scores(rows, lam, width, conjunctive=True).tolist() == [[1.0, 1.5, 0.0]]


# --- verdicts against exact oracles --------------------------------------------------------------------------


@pytest.mark.parametrize(("seed", "branching"), [(s, "input") for s in range(6)] + [(s, "relu") for s in (0, 3)])
def test_bab_decides_boxes_as_the_exact_milp_oracle(seed, branching):
    """Boxes of shrinking size around one point, from falsifiable to certifiable, so some need splitting; by input
    splitting, and by ReLU splitting with beta-CROWN's multipliers (forced with input_split_dims=0)."""
    relu = branching == "relu"
    opts = {"timeout": 5 if relu else 30, "cheap_first": False, "input_split_dims": 0 if relu else 32}
    d = 2 + seed % 2
    net = tiny_net(seed, d, width=12, depth=3)
    gen = torch.Generator().manual_seed(100 + seed)
    centre = torch.rand(d, generator=gen, dtype=torch.float64) * 2 - 1  # boxes not containing 0, some do
    shape = torch.rand(d, generator=gen, dtype=torch.float64) + 0.5
    if seed % 3 == 0:
        shape[0] = 0.0  # a degenerate dimension (lo == hi)
    with torch.no_grad():
        label = int(net(centre.reshape(1, -1)).argmax())
    spec = Spec.top1(label, 3)
    seen = {"certified": 0, "falsified": 0, "split": 0}
    for r in (1.0, 0.6, 0.15):
        lo, hi = centre - r * shape, centre + r * shape
        p = box_problem(net, lo, hi, spec)
        exact = exact_min_rows(net, lo.numpy(), hi.numpy(), spec.C.numpy(), spec.d.numpy()).min()
        out = BAB.certify(p, BAB.parse_options(opts))
        assert out.details.get("branching", branching) == branching
        if abs(exact) > 1e-6 and (branching == "input" or exact < 0 or out.verdict != "unknown"):
            # ReLU splitting without an LP at its leaves may stay 'unknown' on a certifiable box (sound, not
            # complete); it must never answer wrongly
            assert out.verdict == ("certified" if exact > 0 else "falsified"), (r, exact, out)
        if out.verdict == "certified":
            assert exact > 0 and out.margin_lower <= exact + 1e-9
            seen["split"] += out.details["domains"] > 1
        if out.verdict == "falsified":
            witness, why = check_witness(p, out.witness_t)
            assert witness is not None, why
        seen[out.verdict] = seen.get(out.verdict, 0) + 1
    assert seen["certified"] + seen.get("unknown", 0) >= 1


def test_the_milp_oracle_cases_include_splits_and_counterexamples():
    """The oracle test above is not all easy: seed 3's widest box is falsified, its next one needs splitting."""
    net = tiny_net(3, 3, width=12, depth=3)
    gen = torch.Generator().manual_seed(103)
    centre = torch.rand(3, generator=gen, dtype=torch.float64) * 2 - 1
    shape = torch.rand(3, generator=gen, dtype=torch.float64) + 0.5
    with torch.no_grad():
        label = int(net(centre.reshape(1, -1)).argmax())
    outs = [BAB.certify(box_problem(net, centre - r * shape, centre + r * shape, Spec.top1(label, 3)),
                        BAB.parse_options({"cheap_first": False})) for r in (1.0, 0.6)]
    assert [o.verdict for o in outs] == ["falsified", "certified"]
    assert outs[1].details["domains"] > 1 and outs[1].details["stopped"] == "all domains certified"
    assert outs[1].details["max_frontier"] >= 2


@pytest.mark.parametrize("seed", range(8))
def test_bab_agrees_with_exactline_on_segments(seed):
    for scale in (0.2, 0.6, 1.5):
        p = make_problem(pwl_network(seed), seed, scale)
        want = EXACT.certify(p, EXACT.parse_options({}))
        got = BAB.certify(p, BAB.parse_options({"timeout": 20}))
        if want.margin_lower is not None and abs(want.margin_lower) < 1e-7:
            continue
        assert got.verdict == want.verdict, (scale, want, got)
        if got.verdict == "certified":
            assert got.margin_lower <= want.margin_lower + 1e-9
        if got.verdict == "falsified":
            assert check_witness(p, got.witness_t)[0] is not None


def test_disjunctive_spec_with_several_rows_and_float32_unrepresentable_ends():
    """A clause 'y0 > y1 or y0 > y2' (max of rows) and a conjunction with it; box ends 0.1 and 0.3 (not float32)."""
    net = tiny_net(5, 2)
    lo, hi = torch.tensor([0.1, -0.3], dtype=torch.float64), torch.tensor([0.3, -0.1], dtype=torch.float64)
    C = torch.tensor([[1.0, -1.0, 0.0], [1.0, 0.0, -1.0], [0.0, 1.0, -1.0]], dtype=torch.float64)
    dvec = torch.tensor([0.0, 0.0, 0.05], dtype=torch.float64)
    spec = Spec(C, dvec, clauses=((0, 1), (2,)))
    p = box_problem(net, lo, hi, spec)
    rows = exact_min_rows(net, lo.numpy(), hi.numpy(), C.numpy(), dvec.numpy())
    grid = _grid(lo, hi, 201)
    sampled = float(spec.margin(net(grid)).min())
    out = BAB.certify(p, BAB.parse_options({"timeout": 30}))
    assert out.verdict in ("certified", "falsified")
    if out.verdict == "certified":
        assert sampled > 0 and rows[2] > 0
        assert out.margin_lower <= sampled + 1e-12
    else:
        assert check_witness(p, out.witness_t)[0] is not None


def test_lp_ball_regions_stay_inside_the_ball():
    net = tiny_net(2, 3)
    centre = torch.tensor([0.2, -0.4, 0.7], dtype=torch.float64)
    for eps in (0.02, 0.3, 1.0):
        ball = LpBall(centre, eps, 2, clip=None)
        with torch.no_grad():
            label = int(net(centre.reshape(1, -1)).argmax())
        p = Problem(net, nn.Identity(), ball, Spec.top1(label, 3), {})
        out = BAB.certify(p, BAB.parse_options({"timeout": 20}))
        if out.verdict == "falsified":
            assert check_witness(p, out.witness_t)[0] is not None
        if out.verdict == "certified":
            pts = ball.sample(20000, torch.Generator().manual_seed(0))
            assert float(p.margins(pts).min()) > 0


# --- the record, the budget, options ------------------------------------------------------------------------


def test_timeout_gives_an_anytime_unknown_with_the_search_state():
    net = tiny_net(3, 3, width=32, depth=3)
    centre = torch.zeros(3, dtype=torch.float64)
    with torch.no_grad():
        label = int(net(centre.reshape(1, -1)).argmax())
    # the widest box around the centre that the attack cannot falsify, if any: bisect its size
    p = None
    for r in (0.5, 0.3, 0.2, 0.12, 0.08):
        cand = Problem(net, nn.Identity(), Box(centre - r, centre + r), Spec.top1(label, 3), {})
        out = BAB.certify(cand, BAB.parse_options({"timeout": 0.3, "batch": 2, "alpha_iters": 0}))
        if out.verdict == "unknown":
            p = cand
            break
    if p is None:
        pytest.skip("every box was decided within 0.3 s")
    assert out.details["stopped"] in ("timeout", "max_domains")
    assert out.details["domains"] >= 1 and out.details["max_frontier"] >= 1
    assert out.margin_lower is not None and out.margin_lower == out.details["best_lower_bound"] <= 0
    assert out.margin_upper is None or out.margin_upper > 0


@pytest.mark.parametrize("bad", [{"timeout": "-1"}, {"timeout": "inf"}, {"batch": "0"}, {"alpha_iters": "-2"},
                                 {"alpha_lr": "0"}])
def test_bad_options_are_one_line_errors(bad):
    with pytest.raises(GcertError, match=r"bab\.\w+ must be"):
        BAB.parse_options(bad)


def test_smooth_networks_are_analysed_soundly_not_completely():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 8), nn.Sigmoid(), nn.Linear(8, 3)).double().eval()
    lo, hi = torch.tensor([-0.2, 0.1], dtype=torch.float64), torch.tensor([0.0, 0.3], dtype=torch.float64)
    p = box_problem(net, lo, hi)
    out = BAB.certify(p, BAB.parse_options({"timeout": 20, "cheap_first": False}))
    sampled = float(p.spec.margin(net(_grid(lo, hi, 201))).min())
    if out.verdict == "certified":
        assert sampled > 0 and out.margin_lower <= sampled
    if out.verdict == "falsified":
        assert check_witness(p, out.witness_t)[0] is not None
    assert out.guarantee == "sound"
    assert math.isfinite(sampled)



def test_the_time_budget_holds_on_a_wide_smooth_network():
    """Steps shrink while one would take over a tenth of the time left, so the limit is kept on large inputs."""
    import time

    torch.manual_seed(4)
    net = nn.Sequential(nn.Linear(200, 128), nn.Sigmoid(), nn.Linear(128, 128), nn.Sigmoid(),
                        nn.Linear(128, 3)).double().eval()
    centre = torch.rand(200, dtype=torch.float64)
    with torch.no_grad():
        label = int(net(centre.reshape(1, -1)).argmax())
    p = Problem(net, nn.Identity(), Box(centre - 0.3, centre + 0.3), Spec.top1(label, 3), {})
    start = time.perf_counter()
    out = BAB.certify(p, BAB.parse_options({"timeout": 2, "cheap_first": False, "attack_restarts": 0}))
    assert time.perf_counter() - start < 2 + 3.0, out.details
    if out.verdict == "unknown":
        assert out.details["stopped"] in ("timeout", "max_domains")


def test_a_record_of_bab_on_a_smooth_network_says_sound(tmp_path):
    """The record's guarantee is the one the verdict has on this problem: bab is only sound through sigmoid."""
    from gcert.certificate import Certificate
    from gcert.witness import apply_outcome

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(2, 4), nn.Sigmoid(), nn.Linear(4, 3)).double().eval()
    lo, hi = torch.tensor([0.0, 0.0], dtype=torch.float64), torch.tensor([1e-3, 1e-3], dtype=torch.float64)
    p = box_problem(net, lo, hi)
    out = BAB.certify(p, BAB.parse_options({"timeout": 5}))  # the cheap answer path too
    assert out.guarantee == "sound"
    cert = Certificate(input="x", mutation="box", delta=1.0, certifier="bab", guarantee=BAB.guarantee,
                       verdict="unknown")
    apply_outcome(cert, out, p, BAB.guarantee)
    assert cert.guarantee == "sound"

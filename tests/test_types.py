"""Core types: specs, regions, the composed network, and the certificate record's JSONL round trip."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from gcert.certificate import Certificate, ResultStore, Witness, read_certificates
from gcert.problem import ComposedNetwork, Problem
from gcert.regions import Box, LpBall, Segment
from gcert.spec import Spec


def test_top1_spec_margin_and_ties():
    spec = Spec.top1(1, 3)
    y = torch.tensor([[0.0, 2.0, 1.5], [1.0, 1.0, 0.0], [3.0, 1.0, 0.0]])
    assert spec.margin(y).tolist() == [0.5, 0.0, -2.0]
    assert spec.holds(y).tolist() == [True, False, False]  # a tie is a violation


def test_regression_spec():
    spec = Spec.regression(reference=2.0, tau=0.5)
    y = torch.tensor([[2.0], [2.4], [1.4], [2.5]])
    assert torch.allclose(spec.margin(y), torch.tensor([0.5, 0.1, -0.1, 0.0], dtype=torch.float64))
    assert spec.to_record() == {"kind": "regression", "reference": 2.0, "tau": 0.5, "index": 0}


def test_general_spec_rows():
    spec = Spec(torch.tensor([[1.0, 0.0], [0.0, -1.0]]), torch.tensor([0.0, 3.0]))
    assert spec.margins(torch.tensor([[1.0, 1.0]])).tolist() == [[1.0, 2.0]]
    with pytest.raises(ValueError):
        Spec(torch.ones(2, 2), torch.ones(3))


def test_segment_embedding_is_the_affine_path():
    start, end = torch.rand(1, 3, 3), torch.rand(1, 3, 3)
    seg = Segment(start, end)
    embed = seg.embedding()
    t = torch.tensor([[0.0], [0.25], [1.0]])
    out = embed(t)
    assert out.shape == (3, 1, 3, 3)
    assert torch.allclose(out[0], start) and torch.allclose(out[2], end)
    assert torch.allclose(out[1], start + 0.25 * (end - start), atol=1e-6)
    assert seg.lower.tolist() == [0.0] and seg.upper.tolist() == [1.0]


@pytest.mark.parametrize("p", [1, 2, math.inf])
def test_lp_ball_samples_and_projections_stay_inside(p):
    center = torch.rand(30, dtype=torch.float64)
    ball = LpBall(center, 0.3, p, clip=(0.0, 1.0))
    gen = torch.Generator().manual_seed(0)
    pts = ball.sample(500, gen)
    far = ball.project(center + torch.randn(500, 30, generator=gen, dtype=torch.float64) * 3)
    for x in torch.cat([pts, far]):
        assert ball.contains(x)
        assert (x - center).norm(p=p) <= 0.3 + 1e-9
    # projecting a point that is inside changes nothing
    assert torch.allclose(ball.project(pts), pts)


def test_l1_samples_are_finite_in_float32():
    ball = LpBall(torch.rand(36), 2.0, 1)  # float32: a uniform draw of exactly 0 must not give log(0)
    pts = ball.sample(200_000, torch.Generator().manual_seed(783))
    assert bool(torch.isfinite(pts).all())


def test_l1_projection_is_the_closest_point():
    ball = LpBall(torch.zeros(5, dtype=torch.float64), 1.0, 1, clip=None)
    x = torch.tensor([[3.0, -1.0, 0.5, 0.0, 0.0]], dtype=torch.float64)
    y = ball.project(x)
    assert torch.allclose(y, torch.tensor([[1.0, 0.0, 0.0, 0.0, 0.0]], dtype=torch.float64))
    # no other point of a random sample of the ball is closer
    others = ball.sample(2000, torch.Generator().manual_seed(1))
    assert ((others - x).norm(dim=1) >= (y - x).norm() - 1e-12).all()


def test_box_region_embedding_reshapes():
    box = Box(torch.zeros(2, 2), torch.ones(2, 2))
    assert box.dim == 4
    assert box.embedding()(torch.rand(3, 4)).shape == (3, 2, 2)
    assert box.contains(torch.full((4,), 0.5)) and not box.contains(torch.full((4,), 1.5))


def test_composed_network_is_f_of_g_of_embed_and_built_once():
    f, g = nn.Linear(4, 2), nn.Tanh()
    seg = Segment(torch.zeros(4), torch.ones(4))
    problem = Problem(f, g, seg, Spec.top1(0, 2))
    n = problem.composed()
    assert isinstance(n, ComposedNetwork) and problem.composed() is n
    t = torch.tensor([[0.5]])
    assert torch.allclose(n(t), f(g(torch.full((1, 4), 0.5))))


def _cert(**kw) -> Certificate:
    base = dict(input="x:0", mutation="linf", delta=0.01, certifier="interval", guarantee="sound", verdict="unknown")
    base.update(kw)
    return Certificate(**base)


def test_certificate_json_round_trip_with_witness_and_infinities():
    w = Witness(t=[0.5], control=[0.1, 0.2], outputs=[1.0, 2.0], margin=-1.0)
    c = _cert(verdict="falsified", witness=w, margin_lower=-math.inf, fraction=[0.5, 0.75], options={"a": 1})
    line = c.to_json()
    data = json.loads(line)  # standard JSON: no bare Infinity
    assert data["margin_lower"] == "-inf"
    back = Certificate.from_json(line)
    assert back.witness == w and back.fraction == [0.5, 0.75] and back.key == c.key


def test_result_store_resumes_and_drops_a_torn_last_line(tmp_path):
    path = tmp_path / "r.jsonl"
    with ResultStore(path) as store:
        store.append(_cert(input="a"))
        store.append(_cert(input="b"))
    with path.open("a") as fh:
        fh.write('{"input": "c", "mutat')  # a writer killed mid-line
    store = ResultStore(path)
    assert {c.input for c in store.existing} == {"a", "b"}
    assert _cert(input="a").key in store.done and _cert(input="c").key not in store.done
    store.append(_cert(input="c"))
    store.close()
    assert [c.input for c in read_certificates(path)] == ["a", "b", "c"]
    for line in path.read_text().splitlines():
        json.loads(line)


def test_result_store_rejects_a_file_that_is_not_gcert_records(tmp_path):
    from gcert.errors import InputError

    path = tmp_path / "other.jsonl"
    path.write_text("hello\n" + _cert().to_json() + "\n")
    with pytest.raises(InputError, match="not a gcert record"):
        ResultStore(path)


def test_result_store_retries_records_that_failed(tmp_path):
    path = tmp_path / "r.jsonl"
    with ResultStore(path) as store:
        store.append(_cert(input="a"))
        store.append(_cert(input="b", error="RuntimeError: out of memory"))
    store = ResultStore(path)
    assert store.retried == 1 and _cert(input="b").key not in store.done
    assert [c.input for c in read_certificates(path)] == ["a"]

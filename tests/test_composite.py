"""Boxes of several mutations (``rotate+translate-x+scale``): how they are built, refused, and decided by bab on the
zoo, checked against exactline on one-dimensional slices and against dense sampling."""

from __future__ import annotations

import pytest
import torch

from gcert.cli import main
from gcert.composite import CompositeMutation, MutationBox
from gcert.errors import GcertError
from gcert.problem import Problem
from gcert.regions import Segment
from gcert.runner import Context, RunConfig
from gcert.testing import BUILTINS_ONLY, make_registry
from gcert.witness import check_witness
from gcert_plugins.bab import BranchAndBound
from gcert_plugins.exactline import ExactLine


def test_a_box_embeds_each_corner_as_the_sum_of_its_steps():
    control = torch.tensor([[1.0, 2.0, 3.0]])
    steps = torch.tensor([[[0.5, 0.0, 0.0]], [[0.0, -1.0, 0.25]]], dtype=torch.float64)
    box = MutationBox(control, steps, ["a", "b"], [1.0, 2.0])
    assert box.kind == "box" and box.dim == 2 and box.origin().tolist() == [0.0, 0.0]
    embed = box.embedding()
    t = torch.tensor([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.5, 0.5]], dtype=torch.float64)
    want = control.double() + t @ steps.reshape(2, -1)
    assert torch.equal(embed(t).reshape(4, -1), want.reshape(4, -1))
    assert box.to_record() == {"kind": "box", "dim": 2, "mutations": ["a", "b"], "strengths": [1.0, 2.0]}


@pytest.mark.parametrize(("name", "message"), [
    ("rotate+linf", "linf is a pixel ball"),
    ("rotate+shapes-scale", "different generators"),
    ("rotate+rotate", "two or more different mutations"),
    ("rotate+no-such", "no-such"),
])
def test_mutations_that_cannot_combine_are_one_line_errors(name, message):
    reg = make_registry()
    with pytest.raises(GcertError, match=message) as info:
        reg.mutation(name)
    assert "\n" not in str(info.value)


def test_the_cli_refuses_a_box_for_a_one_dimensional_certifier_before_any_work(capsys, tmp_path):
    out = tmp_path / "r.jsonl"
    with pytest.raises(SystemExit) as exc:
        main(["run", "-c", "exactline", "-m", "rotate+translate-x", "--limit", "1", "-q", "--out", str(out)])
    err = capsys.readouterr().err
    assert exc.value.code == 2, err
    assert "2-dimensional box" in err and "bab" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def _problems(mutation: str, delta: float, limit: int = 1) -> list[Problem]:
    config = RunConfig(mutations=(mutation,), certifiers=("bab",), deltas=(delta,), plugins=BUILTINS_ONLY)
    context = Context(config)
    return [context.problem(t)[0] for t in context.tasks()[:limit]]


def test_bab_decides_a_digits_box_and_agrees_with_exactline_on_its_edges_and_with_sampling():
    bab, exact = BranchAndBound(), ExactLine()
    (p,) = _problems("rotate+translate-x+scale", 0.5)
    assert isinstance(p.region, MutationBox) and p.region.dim == 3
    mutation = make_registry().mutation("rotate+translate-x+scale")
    assert isinstance(mutation, CompositeMutation)
    out = bab.certify(p, bab.parse_options({"timeout": 120}))
    assert out.verdict in ("certified", "falsified"), out
    grid = torch.cartesian_prod(*[torch.linspace(0, 1, 9, dtype=torch.float64)] * 3)
    sampled = float(p.margins(grid).min())
    if out.verdict == "certified":
        assert sampled > 0 and out.margin_lower <= sampled + 1e-9
    else:
        assert check_witness(p, out.witness_t)[0] is not None
    # each edge of the box from the unmutated input is one mutation's segment: exactline decides it exactly
    embed = p.region.embedding()
    for i in range(3):
        end = torch.zeros(1, 3, dtype=torch.float64)
        end[0, i] = 1.0
        start = embed(torch.zeros(1, 3, dtype=torch.float64))[0]
        seg = Problem(p.network, p.generator, Segment(start, embed(end)[0]), p.spec, {})
        line = exact.certify(seg, exact.parse_options({}))
        if out.verdict == "certified":
            assert line.verdict == "certified"
        mine = bab.certify(seg, bab.parse_options({"timeout": 60}))
        assert mine.verdict == line.verdict

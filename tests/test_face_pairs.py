"""faces-pair: the shipped pair network, its partnered form for certification, and the share bounds on it."""

from __future__ import annotations

import copy
import hashlib

import numpy as np
import pytest
import torch
from gcert_zoo.pairs import Partnered, Siamese, heldout_pairs

import gcert
from gcert import zoo
from gcert.data import Dataset
from gcert.lowering import lower
from gcert.plugins import load_registry
from gcert.runner import Context, RunConfig


@pytest.fixture(scope="module")
def net():
    return zoo.load_network("faces-pair")[0]


@pytest.fixture(scope="module")
def pairs():
    return heldout_pairs(16, faces=64)


@pytest.fixture(scope="module")
def registry():
    return load_registry()


def test_entry_files_match_their_sha256():
    e = zoo.entry("faces-pair")
    assert e["kind"] == "network" and e["input_shape"] == [6, 32, 32]
    for key, sha in (("weights", "sha256"), ("samples", "samples_sha256")):
        assert hashlib.sha256((zoo.zoo_dir() / e[key]).read_bytes()).hexdigest() == e[sha]
    assert e["metrics"]["test_pair_accuracy"] >= 0.9


def test_shipped_network_decides_its_samples(net):
    data = np.load(zoo.samples_path("faces-pair"))
    with torch.no_grad():
        pred = net(torch.from_numpy(data["images"])).argmax(1).numpy()
    assert data["images"].shape[1:] == (6, 32, 32)
    assert (pred == data["labels"]).mean() >= 0.9


def test_export_is_the_siamese_network():
    torch.manual_seed(3)
    s = Siamese().eval()
    x = torch.rand(5, 6, 32, 32)
    with torch.no_grad():
        assert torch.allclose(s(x), s.export()(x), atol=1e-5)


def test_partnered_equals_the_pair_network_and_lowers(net, pairs):
    x, _ = pairs
    for pair in x[:4]:
        p = Partnered(net, pair[3:])
        with torch.no_grad():
            assert torch.allclose(p(pair[None, :3]), net(pair[None]), atol=1e-5)
            others = x[:, :3]  # any first face against this partner
            stacked = torch.cat([others, pair[3:].expand_as(others)], 1)
            assert torch.allclose(p(others), net(stacked), atol=1e-5)
        lowered = lower(p, (3, 32, 32))
        assert lowered.piecewise_linear
        with torch.no_grad():
            assert torch.allclose(lowered.forward(pair[None, :3].double()).float(), p(pair[None, :3]), atol=1e-4)


def test_partnered_refuses_a_net_that_mixes_the_faces(net, pairs):
    mixed = copy.deepcopy(net)
    with torch.no_grad():
        mixed[5].weight[0, -1] = 0.1
    with pytest.raises(ValueError, match="block-diagonal"):
        Partnered(mixed, pairs[0][0, 3:])


def _decision(net, pair):
    with torch.no_grad():
        return int(net(pair[None]).argmax(1))


def test_exactline_share_on_one_pair(net, pairs, registry):
    pair = pairs[0][0]
    certs = gcert.certify(Partnered(net, pair[3:]), mutation="mouth", inputs=pair[None, :3],
                          labels=[_decision(net, pair)], certifier="exactline", registry=registry)
    (c,) = certs
    assert c.error is None and c.fraction is not None
    lo, hi = c.fraction
    assert 0.0 <= lo <= hi <= 1.0


def test_genprover_encloses_exactline_on_a_boundary_crossing_task(net, pairs, registry):
    """Shift the pair's decision threshold so the segment crosses it: the share is strictly inside (0, 1),
    genprover's bounds must enclose exactline's exact share, and both must match dense sampling."""
    pair = pairs[0][0]
    base = Partnered(net, pair[3:])
    data = Dataset(pair[None, :3].clone(), [0], ["pair:0"], "tensor")
    config = RunConfig(mutations=("face-orientation",), certifiers=("exactline",), model=base, data=data)
    ctx = Context(config, registry)
    problem, _ = ctx.problem(ctx.tasks()[0])
    t = torch.linspace(0, 1, 401).reshape(-1, 1)
    out = problem.outputs(t)
    gap = out[:, 1] - out[:, 0]
    shifted = copy.deepcopy(base)
    with torch.no_grad():  # move the threshold to the median of same - different along the segment
        shift = float(gap.median())
        shifted[-1].bias += torch.tensor([shift / 2, -shift / 2])
        gap = gap - shift
    label = int(shifted(pair[None, :3]).argmax(1))
    certs = gcert.certify(shifted, mutation="face-orientation", inputs=data, labels=[label],
                          certifier=["exactline", "genprover"], registry=registry)
    by = {c.certifier: c for c in certs}
    assert all(c.error is None for c in certs)
    ex, gp = by["exactline"].fraction, by["genprover"].fraction
    assert 0.0 < ex[0] < 1.0, "the shifted task must cross the decision boundary"
    assert gp[0] <= ex[0] + 1e-9 and ex[1] <= gp[1] + 1e-9
    sampled = float(((gap > 0) if label == 1 else (gap < 0)).double().mean())
    assert abs(sampled - ex[0]) <= 0.02

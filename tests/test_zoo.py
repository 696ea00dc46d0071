"""The zoo: files match the manifest, the default network loads, and its recipe reproduces its figures."""

from __future__ import annotations

import json

import torch

from gcert import zoo
from gcert.cli import main
from gcert.data import load_inputs


def test_manifest_files_match_their_sha256():
    assert zoo.entries()
    for entry in zoo.entries():
        assert zoo.verify(entry["name"]) == []


def test_verify_reports_a_tampered_file(tmp_path, monkeypatch):
    for entry in zoo.entries():
        for key in ("weights", "samples"):
            (tmp_path / entry[key]).write_bytes((zoo.zoo_dir() / entry[key]).read_bytes())
    (tmp_path / zoo.entries()[0]["weights"]).write_bytes(b"tampered")
    monkeypatch.setattr(zoo, "zoo_dir", lambda: tmp_path)
    assert any("does not match its sha256" in p for p in zoo.verify(zoo.entries()[0]["name"]))


def test_default_network_classifies_its_samples():
    name = zoo.default_network()
    net, shape = zoo.load_network(name)
    data = load_inputs(zoo.samples_path(name))
    assert tuple(data.images.shape[1:]) == shape
    with torch.no_grad():
        accuracy = (net(data.images).argmax(1) == torch.tensor(data.labels)).float().mean()
    assert accuracy >= 0.9


def test_recipe_reproduces_the_measured_accuracy(tmp_path, capsys):
    name = zoo.default_network()
    try:
        main(["zoo", "train", name, "--out", str(tmp_path)])
    except SystemExit as exc:
        assert exc.code in (0, None)
    fresh = json.loads(capsys.readouterr().out)
    shipped = zoo.entry(name)["metrics"]["test_accuracy"]
    assert abs(fresh["metrics"]["test_accuracy"] - shipped) <= 0.02
    assert (tmp_path / fresh["weights"]).is_file() and (tmp_path / fresh["samples"]).is_file()

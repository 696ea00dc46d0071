"""Without maraboupy the plugin still imports and registers; using ``marabou`` is a one-line install hint."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from torch import nn

from gcert.cli import main
from gcert.errors import GcertError
from gcert.problem import Problem
from gcert.regions import Box
from gcert.spec import Spec
from gcert.testing import make_registry
from gcert_marabou import plugin

HINT = "maraboupy is not installed: pip install maraboupy==2.0 onnx onnxruntime (see adapters/marabou/README.md)"


@pytest.fixture
def no_marabou(monkeypatch):
    monkeypatch.setitem(sys.modules, "maraboupy", None)


def test_the_hint_is_exactly_one_line():
    assert plugin.INSTALL_HINT == HINT and "\n" not in HINT


def test_marabou_says_how_to_install_it(no_marabou):
    assert not plugin.available()
    certifier = make_registry(plugin).certifier("marabou")
    problem = Problem(nn.Linear(2, 2), nn.Identity(), Box(torch.zeros(2), torch.ones(2)), Spec.top1(0, 2))
    for call in (lambda: certifier.prepare(problem), lambda: certifier.certify(problem, certifier.parse_options())):
        with pytest.raises(GcertError) as err:
            call()
        assert str(err.value) == HINT


def test_the_cli_prints_the_hint_and_no_traceback(no_marabou, capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_:
        main(["run", "-c", "marabou", "-m", "linf", "--delta", "0.01", "--limit", "1", "-q",
              "--out", str(tmp_path / "r.jsonl")])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.strip().splitlines()[-1] == f"gcert: error: {HINT}"
    assert "Traceback" not in err and not (tmp_path / "r.jsonl").exists()


def test_the_plugin_registers_in_a_fresh_process_without_maraboupy():
    code = ("import sys; sys.modules['maraboupy'] = None\n"
            "import gcert_marabou.plugin as p\n"
            "from gcert.testing import make_registry\n"
            "print(make_registry(p).origin('certifier', 'marabou'))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "gcert_marabou.plugin"


@pytest.mark.parametrize("option, message", [
    ("timeout=-1", "marabou.timeout must be a finite number of seconds >= 0"),
    ("workers=0", "marabou.workers must be an integer >= 1"),
    ("splitting=random", "marabou.splitting must be one of auto, largest-interval"),
])
def test_bad_options_are_one_line_errors(option, message, capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_:
        main(["run", "-c", "marabou", "-m", "linf", "--delta", "0.01", "--limit", "1", "-q", "-o", option,
              "--out", str(tmp_path / "r.jsonl")])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2 and len(err) == 1 and message in err[0]

"""Without auto_LiRPA the plugin still imports and registers; using a certifier is a one-line install hint."""

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
from gcert_lirpa import compat, plugin

HINT = "auto_LiRPA is not installed: pip install --no-deps auto-LiRPA==0.3 (see adapters/lirpa/README.md)"


@pytest.fixture
def no_lirpa(monkeypatch):
    """Make ``import auto_LiRPA`` fail as it does where it is not installed."""
    monkeypatch.setitem(sys.modules, "auto_LiRPA", None)


def test_the_hint_is_exactly_one_line():
    assert compat.INSTALL_HINT == HINT and "\n" not in HINT


def test_every_certifier_says_how_to_install_it(no_lirpa):
    assert not compat.available()
    reg = make_registry(plugin)
    problem = Problem(nn.Linear(2, 2), nn.Identity(), Box(torch.zeros(2), torch.ones(2)), Spec.top1(0, 2))
    for name in ("crown", "alpha-crown", "ibp-lirpa"):
        certifier = reg.certifier(name)
        with pytest.raises(GcertError) as err:
            certifier.prepare(problem)
        assert str(err.value) == HINT
        with pytest.raises(GcertError) as err:
            certifier.certify(problem, certifier.parse_options())
        assert str(err.value) == HINT


def test_the_cli_prints_the_hint_and_no_traceback(no_lirpa, capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_:
        main(["run", "-c", "crown", "-m", "linf", "--delta", "0.01", "--limit", "2", "-q",
              "--out", str(tmp_path / "r.jsonl")])
    err = capsys.readouterr().err
    assert exit_.value.code == 2
    assert err.strip().splitlines()[-1] == f"gcert: error: {HINT}"
    assert "Traceback" not in err


def test_the_plugin_imports_and_registers_in_a_fresh_process_without_auto_lirpa():
    code = (
        "import sys; sys.modules['auto_LiRPA'] = None\n"
        "import gcert_lirpa.plugin as p\n"
        "from gcert.testing import make_registry\n"
        "reg = make_registry(p)\n"
        "print(sorted(n for n in ('crown', 'alpha-crown', 'ibp-lirpa') if reg.origin('certifier', n)))\n"
        "print('auto_LiRPA.bound_general' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.split("\n")[:2] == ["['alpha-crown', 'crown', 'ibp-lirpa']", "False"]

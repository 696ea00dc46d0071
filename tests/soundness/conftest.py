"""Fuzz gating and the run summary of the soundness harness.

Tests marked ``fuzz`` run only when asked for (``pytest -m fuzz tests/soundness`` or ``tox -e fuzz``); the
bounded CI slice is the unmarked tests. At the end of a session that ran any case, the summary (triples,
time, certifiers and their verdicts, ops, regions and specs covered, violations) is printed, and a fuzz
session writes it to ``tests/soundness/last_fuzz.json`` (git-ignored).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.soundness import harness

torch.set_num_threads(1)

SUMMARY = Path(__file__).with_name("last_fuzz.json")


def _fuzz_selected(config: pytest.Config) -> bool:
    return "fuzz" in (config.getoption("markexpr", "") or "")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if _fuzz_selected(config):
        return
    skip = pytest.mark.skip(reason="fuzz run: select it with `pytest -m fuzz tests/soundness` or `tox -e fuzz`")
    for item in items:
        if "fuzz" in item.keywords and str(item.fspath).startswith(str(Path(__file__).parent)):
            item.add_marker(skip)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    if harness.STATS.triples == 0:
        return
    if _fuzz_selected(config):
        data = harness.write_summary(SUMMARY)
        where = f" (written to {SUMMARY})"
    else:
        data = harness.STATS.summary()
        where = ""
    brief = {k: data[k] for k in ("triples", "certifier_runs", "seconds", "violations", "notes",
                                   "violations_by_kind")}
    terminalreporter.write_sep("-", f"gcert soundness harness{where}")
    terminalreporter.write_line(json.dumps(brief))
    terminalreporter.write_line(f"ops covered ({len(data['ops'])}): {', '.join(data['ops'])}")

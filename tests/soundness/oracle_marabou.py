"""Marabou (``adapters/marabou``, maraboupy 2.0) as a certifier under the harness's exact oracles.

Marabou shares no code with gcert's engines (it reads the ONNX that :mod:`gcert.export` writes, with its own
parser and its own SMT search), so on piecewise-linear cases its verdicts are judged against the exact rational
oracle, exact line and the VNN-LIB evaluator like a complete certifier: ``test_differential.py::test_marabou``
(a derandomized slice) and ``::test_marabou_fuzz`` (the long run). Skipped where maraboupy is not installed.
"""

from __future__ import annotations

import importlib.util
from typing import Any

REASON = "Marabou is not installed (pip install maraboupy==2.0 onnx onnxruntime; pip install -e adapters/marabou)"
FAMILIES = ("fc", "fc-1d", "vnnlib")
"""The piecewise-linear families, where the harness's oracles are exact and Marabou is complete."""


def available() -> bool:
    if importlib.util.find_spec("maraboupy") is None or importlib.util.find_spec("gcert_marabou") is None:
        return False
    from gcert_marabou import plugin

    return plugin.available()


def certifiers() -> dict[str, Any]:
    from gcert_marabou.plugin import MarabouCertifier

    return {"marabou": MarabouCertifier()}

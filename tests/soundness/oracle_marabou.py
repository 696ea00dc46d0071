"""Hook for the independent complete verifier of issue 16 (Marabou through ``adapters/marabou``).

It does not exist yet. When it lands, :func:`marabou_evidence` should answer, for a piecewise-linear case,
"is there a point of the region where the spec fails?" from Marabou's own solver (not gcert's lowering), and
the differential tests compare every certifier's verdict with it. Until then :func:`available` is False and
the test that uses it (``test_differential.py::test_marabou_oracle``) is skipped with the reason below.
"""

from __future__ import annotations

import importlib.util

REASON = "issue 16's independent complete verifier (maraboupy + adapters/marabou) is not installed"


def available() -> bool:
    return importlib.util.find_spec("maraboupy") is not None and importlib.util.find_spec("gcert_marabou") is not None


def marabou_evidence(case: object) -> object:  # pragma: no cover - filled in with issue 16
    """Decide ``case`` with Marabou: a counterexample point (the spec fails there) or None (the spec holds)."""
    raise NotImplementedError("wire Marabou in here once issue 16's adapter exists")

"""Output specifications: conjunctions of clauses, each a disjunction of strict linear rows ``(C @ y + d)_r > 0``.

Top-1 robustness and |y' - y| < tau are conjunctions of single rows (every clause is one row); a VNN-LIB
property's safe set, the complement of a disjunction of conjunctions, is a conjunction of disjunctions
(``clauses``). The *margin* of an output is ``min over clauses of max over the clause's rows``; the spec holds
exactly when the margin is > 0, so a tie between two classes, or a steering change of exactly tau, counts as a
violation. ``C`` and ``d`` are float64: a constant such as 0.7 or tau = 0.1 is kept as the float64 nearest to
it, never rounded again to float32, and margins are computed in float64 whatever precision the outputs have.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import torch

Tensor = torch.Tensor


@dataclass(frozen=True)
class Spec:
    """Linear output constraints; ``kind`` and ``params`` only describe it for the record.

    ``clauses``: tuples of row indices (every row in at least one clause); None means each row is its own clause.
    """

    C: Tensor
    d: Tensor
    kind: str = "linear"
    params: dict[str, Any] = field(default_factory=dict)
    clauses: tuple[tuple[int, ...], ...] | None = None

    def __post_init__(self) -> None:
        if self.C.dim() != 2 or self.d.shape != (self.C.shape[0],):
            raise ValueError(f"spec needs C (m, k) and d (m,), got {tuple(self.C.shape)} and {tuple(self.d.shape)}")
        object.__setattr__(self, "C", self.C.detach().to(torch.float64))
        object.__setattr__(self, "d", self.d.detach().to(torch.float64))
        if not (bool(torch.isfinite(self.C).all()) and bool(torch.isfinite(self.d).all())):
            raise ValueError("spec coefficients must be finite")
        if self.clauses is not None:
            m = self.C.shape[0]
            clauses = tuple(tuple(int(r) for r in c) for c in self.clauses)
            if any(not c for c in clauses) or any(not 0 <= r < m for c in clauses for r in c):
                raise ValueError(f"spec clauses must be non-empty tuples of row indices in 0..{m - 1}")
            if {r for c in clauses for r in c} != set(range(m)):
                raise ValueError("every spec row must belong to a clause")
            # One row per clause is the plain conjunction: keep the canonical form.
            object.__setattr__(self, "clauses", None if all(len(c) == 1 for c in clauses) and
                               sorted(c[0] for c in clauses) == list(range(m)) else clauses)

    @property
    def num_outputs(self) -> int:
        return int(self.C.shape[1])

    @property
    def num_rows(self) -> int:
        return int(self.C.shape[0])

    @property
    def conjunctive(self) -> bool:
        """True when every clause is a single row (the margin is the minimum of the rows)."""
        return self.clauses is None

    def margins(self, y: Tensor) -> Tensor:
        """Row values ``C @ y + d`` in float64 for outputs ``y`` of shape (batch, k) -> (batch, m)."""
        y = y.reshape(y.shape[0], -1).to(torch.float64)
        return y @ self.C.T + self.d

    def reduce(self, rows: Tensor) -> Tensor:
        """Per-row values (batch, m) -> (batch,): min over clauses of max over each clause's rows.

        Monotone in every row, so lower (upper) bounds of the rows give a lower (upper) bound of the margin.
        """
        if self.clauses is None:
            return rows.min(dim=1).values
        per_clause = [rows[:, list(c)].max(dim=1).values for c in self.clauses]
        return torch.stack(per_clause, dim=1).min(dim=1).values

    def margin(self, y: Tensor) -> Tensor:
        """The spec margin per output, (batch,); > 0 exactly when the spec holds."""
        return self.reduce(self.margins(y))

    def holds(self, y: Tensor) -> Tensor:
        return self.margin(y) > 0

    @classmethod
    def top1(cls, label: int, num_classes: int) -> Spec:
        """Class ``label`` stays strictly ahead of every other class."""
        if not 0 <= label < num_classes:
            raise ValueError(f"label {label} outside 0..{num_classes - 1}")
        others = [j for j in range(num_classes) if j != label]
        C = torch.zeros(len(others), num_classes, dtype=torch.float64)
        for row, j in enumerate(others):
            C[row, label], C[row, j] = 1.0, -1.0
        return cls(C, torch.zeros(len(others), dtype=torch.float64), "top1", {"label": label})

    @classmethod
    def regression(cls, reference: float, tau: float, index: int = 0, num_outputs: int = 1) -> Spec:
        """Output ``index`` stays strictly within ``tau`` of ``reference`` (both taken as float64).

        The rows are ``(reference + tau) - y > 0`` and ``y + (tau - reference) > 0``; each constant is the float64
        sum rounded down (never up), so the spec checked is never weaker than the one asked for.
        """
        C = torch.zeros(2, num_outputs, dtype=torch.float64)
        C[0, index], C[1, index] = -1.0, 1.0
        ref, tol = float(reference), float(tau)
        d = torch.tensor([_sum_down(ref, tol), _sum_down(tol, -ref)], dtype=torch.float64)
        return cls(C, d, "regression", {"reference": float(reference), "tau": float(tau), "index": index})

    def to_record(self) -> dict[str, Any]:
        out = {"kind": self.kind, **self.params}
        if self.clauses is not None:
            out["clauses"] = [list(c) for c in self.clauses]
        return out


def _sum_down(a: float, b: float) -> float:
    """The largest float64 not above the exact sum ``a + b``."""
    s = a + b
    if math.isfinite(s) and Fraction(s) > Fraction(a) + Fraction(b):
        s = math.nextafter(s, -math.inf)
    return s

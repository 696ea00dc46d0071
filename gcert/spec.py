"""Output specifications ``C @ y + d > 0`` (every row): top-1 for classifiers, |y' - y| < tau for regressors.

The *margin* of an output is ``min_i (C @ y + d)_i``; the spec holds exactly when the margin is > 0,
so a tie between two classes, or a steering change of exactly tau, counts as a violation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass(frozen=True)
class Spec:
    """Linear output constraints; ``kind`` and ``params`` only describe it for the record."""

    C: torch.Tensor
    d: torch.Tensor
    kind: str = "linear"
    params: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.C.dim() != 2 or self.d.shape != (self.C.shape[0],):
            raise ValueError(f"spec needs C (m, k) and d (m,), got {tuple(self.C.shape)} and {tuple(self.d.shape)}")

    @property
    def num_outputs(self) -> int:
        return int(self.C.shape[1])

    def margins(self, y: torch.Tensor) -> torch.Tensor:
        """Row values ``C @ y + d`` for outputs ``y`` of shape (batch, k) -> (batch, m)."""
        y = y.reshape(y.shape[0], -1)
        return y @ self.C.to(y.dtype).T + self.d.to(y.dtype)

    def margin(self, y: torch.Tensor) -> torch.Tensor:
        """The smallest row value per output, (batch,)."""
        return self.margins(y).min(dim=1).values

    def holds(self, y: torch.Tensor) -> torch.Tensor:
        return self.margin(y) > 0

    @classmethod
    def top1(cls, label: int, num_classes: int) -> Spec:
        """Class ``label`` stays strictly ahead of every other class."""
        if not 0 <= label < num_classes:
            raise ValueError(f"label {label} outside 0..{num_classes - 1}")
        others = [j for j in range(num_classes) if j != label]
        C = torch.zeros(len(others), num_classes)
        for row, j in enumerate(others):
            C[row, label], C[row, j] = 1.0, -1.0
        return cls(C, torch.zeros(len(others)), "top1", {"label": label})

    @classmethod
    def regression(cls, reference: float, tau: float, index: int = 0, num_outputs: int = 1) -> Spec:
        """Output ``index`` stays strictly within ``tau`` of ``reference``."""
        C = torch.zeros(2, num_outputs)
        C[0, index], C[1, index] = -1.0, 1.0
        d = torch.tensor([reference + tau, tau - reference])
        return cls(C, d, "regression", {"reference": reference, "tau": tau, "index": index})

    def to_record(self) -> dict[str, Any]:
        return {"kind": self.kind, **self.params}

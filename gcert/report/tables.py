"""The numbers of a report: verdict counts and times per (mutation, delta, certifier), agreement between
certifiers that ran on the same task, and the largest certified strengths of tolerance runs."""

from __future__ import annotations

import statistics
from collections import defaultdict
from dataclasses import dataclass, field

from gcert.certificate import Certificate

DECIDED = ("certified", "falsified")


@dataclass
class GroupRow:
    """One line of the summary table."""

    mutation: str
    delta: float
    unit: str
    certifier: str
    guarantee: str
    tasks: int = 0
    verdicts: dict[str, int] = field(default_factory=lambda: {"certified": 0, "falsified": 0, "unknown": 0})
    errors: int = 0
    seconds: list[float] = field(default_factory=list)
    compared: int = 0  # tasks another certifier also decided (certified or falsified), while this one decided too
    agreed: int = 0
    conflicts: list[str] = field(default_factory=list)  # input ids where one certified and another falsified

    @property
    def median_seconds(self) -> float:
        return statistics.median(self.seconds) if self.seconds else 0.0

    @property
    def total_seconds(self) -> float:
        return sum(self.seconds)


def task_groups(certs: list[Certificate]) -> dict[tuple[str, str, float], list[Certificate]]:
    """Records by task without the certifier, (input, mutation, delta), in the file's order."""
    groups: dict[tuple[str, str, float], list[Certificate]] = {}
    for c in certs:
        groups.setdefault((c.input, c.mutation, float(c.delta)), []).append(c)
    return groups


def summary_rows(certs: list[Certificate]) -> list[GroupRow]:
    """The summary table, one row per (mutation, delta, certifier), sorted.

    Agreement is counted over tasks where this certifier and at least one other decided: they agree when every
    decided verdict is the same. A certified next to a falsified on one task is a conflict: one of them is wrong
    (a falsified carries a witness a forward pass confirmed, so suspect the certified one).
    """
    rows: dict[tuple[str, float, str], GroupRow] = {}
    for c in certs:
        key = (c.mutation, float(c.delta), c.certifier)
        row = rows.get(key)
        if row is None:
            row = rows[key] = GroupRow(c.mutation, float(c.delta), c.unit, c.certifier, c.guarantee)
        row.tasks += 1
        row.verdicts[c.verdict] = row.verdicts.get(c.verdict, 0) + 1
        row.errors += c.error is not None
        row.seconds.append(float(c.seconds or 0.0))
    for group in task_groups(certs).values():
        decided = {c.certifier: c.verdict for c in group if c.verdict in DECIDED}
        if len(decided) < 2:
            continue
        same = len(set(decided.values())) == 1
        for c in group:
            if c.certifier not in decided:
                continue
            row = rows[(c.mutation, float(c.delta), c.certifier)]
            row.compared += 1
            row.agreed += same
            if not same:
                row.conflicts.append(c.input)
    return [rows[k] for k in sorted(rows, key=lambda k: (k[0], k[1], k[2]))]


def tolerance_values(certs: list[Certificate]) -> dict[tuple[str, str], list[float]]:
    """Largest certified strength per input, by (mutation, certifier), for the records of ``gcert tolerance``."""
    out: dict[tuple[str, str], list[float]] = defaultdict(list)
    for c in certs:
        command = (c.identity or {}).get("command")
        if (command == "tolerance" or "tolerance" in c.details) and isinstance(c.max_delta, int | float):
            out[(c.mutation, c.certifier)].append(float(c.max_delta))
    return dict(out)

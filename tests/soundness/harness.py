"""Running every registered certifier on a case, judging each answer against an oracle, and the run summary.

A certifier may refuse a problem with :class:`gcert.errors.GcertError` (counted as "refused"); any other
exception is a violation ("crash"). What is judged, by guarantee:

* sound / complete / quantitative: "certified" while the oracle saw a point with margin <= 0 (beyond the
  oracle's own rounding; exact oracles allow none) is ``wrong-certified``; a ``margin_lower`` above the smallest
  margin the oracle saw is ``margin-lower-unsound``.
* falsifier: "certified" at all is ``falsifier-certified``.
* every "falsified": the witness must exist, lie in the region (own containment check, float64 ulps only), and
  have margin <= the float32 rounding slack (README "Floating point") at it; VNN-LIB witnesses must also satisfy
  the unsafe set evaluated on the property text. Otherwise ``wrong-falsified`` / ``witness-outside-region``.
* quantitative and complete: ``fraction`` must bracket the oracle's share (``fraction-wrong``).
* complete (exactline) on 1-D piecewise-linear cases with an exact line: the verdict must match the exact
  minimum margin unless it is within float64 rounding of 0 (``incomplete``), and its margin must be that minimum
  up to float64 rounding (``margin-inexact``).
"""

from __future__ import annotations

import functools
import json
import os
import time
import traceback
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import torch

from gcert.errors import GcertError
from tests.soundness.evidence import Evidence
from tests.soundness.strategies import HAS_CLAUSES, Case, FCNet, region_label

# Options each certifier is run with: the defaults (as a user gets them), plus small budgets.
OPTION_SETS: dict[str, list[dict[str, Any]]] = {
    "interval": [{}, {"splits": 4}],
    "deeppoly": [{}, {"splits": 4, "relaxation": "tangent"}],
    "exactline": [{}],
    "genprover": [{}, {"refinements": 2, "max_cells": 16}],
    "sampling": [{}, {"samples": 32, "steps": 3}],
    "crown": [{}, {"splits": 4}],
    "ibp-lirpa": [{}, {"splits": 4}],
    "alpha-crown": [{"iterations": 3, "splits": 4}],
    "bab": [{"timeout": 20}, {"timeout": 2, "batch": 4, "alpha_iters": 0, "attack_restarts": 0},
            {"timeout": 2, "input_split_dims": 0, "attack_restarts": 0}],  # ReLU splitting with beta
}


@functools.lru_cache(maxsize=1)
def registry() -> Any:
    """gcert's built-in certifiers, plus the auto_LiRPA adapter's when auto_LiRPA is importable."""
    from gcert.testing import make_registry

    plugins = []
    try:
        from gcert_lirpa import compat, plugin

        if compat.available():
            plugins.append(plugin)
    except ImportError:
        pass
    return make_registry(*plugins)


def certifier_names() -> list[str]:
    return sorted(registry().certifiers)


# --- the summary --------------------------------------------------------------------------------------------


@dataclass
class Stats:
    started: float = field(default_factory=time.time)
    triples: int = 0
    runs: Counter = field(default_factory=Counter)  # (certifier, verdict) -> count
    ops: set = field(default_factory=set)
    regions: Counter = field(default_factory=Counter)
    specs: Counter = field(default_factory=Counter)
    families: Counter = field(default_factory=Counter)
    violations: list = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        per: dict[str, dict[str, int]] = defaultdict(dict)
        for (name, verdict), n in sorted(self.runs.items()):
            per[name][verdict] = n
        kinds = Counter((v["certifier"], v["kind"]) for v in self.violations)
        fails = [v for v in self.violations if v["severity"] == "fail"]
        return {
            "triples": self.triples,
            "certifier_runs": sum(self.runs.values()),
            "seconds": round(time.time() - self.started, 1),
            "certifiers": dict(per),
            "families": dict(self.families),
            "regions": dict(self.regions),
            "specs": dict(self.specs),
            "ops": sorted(self.ops),
            "spec_clauses_available": HAS_CLAUSES,
            "violations": len(fails),
            "notes": len(self.violations) - len(fails),
            "violations_by_kind": {f"{c}:{k}": n for (c, k), n in sorted(kinds.items())},
            "violation_examples": _first_per_kind(self.violations),
        }


def _first_per_kind(violations: list[dict[str, Any]]) -> list[dict[str, Any]]:
    seen, out = set(), []
    for v in violations:
        key = (v["certifier"], v["kind"])
        if key not in seen:
            seen.add(key)
            out.append(v)
    return out


STATS = Stats()


def write_summary(path: Path) -> dict[str, Any]:
    data = STATS.summary()
    path.write_text(json.dumps(data, indent=1) + "\n")
    return data


def collect_mode() -> bool:
    """GCERT_FUZZ_COLLECT=1: record violations in the summary and go on (no shrinking), to count them all."""
    return os.environ.get("GCERT_FUZZ_COLLECT", "") not in ("", "0")


# --- judging -------------------------------------------------------------------------------------------------


@dataclass
class Violation:
    kind: str
    certifier: str
    options: dict[str, Any]
    message: str
    case: Case
    severity: str = "fail"  # "note": recorded in the summary, does not fail the test

    def describe(self) -> str:
        return f"[{self.certifier} {self.options}] {self.kind}: {self.message}\n--- reproducer ---\n" \
               f"{self.case.reproducer(self.certifier, self.options)}"


def _f(x: Any) -> str:
    return f"{float(x):.17g}" if isinstance(x, Fraction | float | int) else repr(x)


def _pt(p: Any) -> list[float]:
    return [float(v) for v in p]


def judge(name: str, guarantee: str, options: dict[str, Any], outcome: Any, ev: Evidence, case: Case,
          exact_pl: bool) -> list[Violation]:
    out: list[Violation] = []

    def bad(kind: str, msg: str, severity: str = "fail") -> None:
        out.append(Violation(kind, name, options, msg, case, severity))

    verdict = outcome.verdict
    if verdict == "certified":
        if guarantee == "falsifier":
            bad("falsifier-certified", "a falsifier said 'certified'")
        else:
            vp = ev.violating_point()
            if vp is not None:
                # README: auto_LiRPA has no directed rounding, "a margin within about 1e-12 relative of 0 is not
                # meaningful from them": such a case is recorded, not failed.
                scale = ev.slack_at(_pt(vp[0])) / 2.0**-24 if vp[0] else 1.0
                documented = name in F64_UNPADDED and abs(float(vp[1])) <= 1e-12 * (1 + scale)
                bad("wrong-certified" + ("-f64" if documented else ""), f"certified, but the {ev.oracle} oracle "
                    f"finds margin {_f(vp[1])} at t = {_pt(vp[0])}", "note" if documented else "fail")
    if verdict == "falsified":
        w = outcome.witness_t
        if w is None:
            bad("wrong-falsified", "falsified without a witness")
        else:
            t = torch.as_tensor(w).reshape(-1).double().tolist()
            t_in = _clamped(t, ev)
            if t_in is None:
                bad("witness-outside-region", f"witness t = {t} is not in the region (nor within a millionth of "
                    "its size, which the README lets the host clamp)")
            else:
                t = t_in
                m, slack = ev.margin_at(t), ev.slack_at(t)
                if m > slack + ev.tol:
                    bad("wrong-falsified", f"witness t = {t} has margin {_f(m)} > float32 slack {slack:.3g}")
                elif ev.witness_ok is not None and (why := ev.witness_ok(t)) is not None:
                    bad("wrong-falsified", why)
    lower = outcome.margin_lower
    if lower is not None and guarantee in ("sound", "complete", "quantitative") and math_finite(lower):
        true_min = ev.min_margin
        allowed = ev.tol
        if guarantee == "complete":  # exactline: exact up to float64 rounding (README), not a padded bound
            allowed += 1e-12 * (1 + abs(float(true_min))) + _f64_scale(ev)
        if lower > float(true_min) + allowed and Fraction(lower) > Fraction(true_min) + Fraction(allowed):
            # Above the true minimum by no more than float64 rounding (1e-12 relative): unsound in real
            # arithmetic, but harmless unless the margin is that close to 0, which wrong-certified checks exactly.
            ulp_level = float(lower) - float(true_min) <= 1e-12 * (1 + abs(float(true_min)))
            bad("margin-lower-unsound" + ("-f64" if ulp_level else ""),
                f"margin_lower {_f(lower)} > the smallest margin the {ev.oracle} oracle saw, {_f(true_min)}",
                "note" if ulp_level else "fail")
    frac = outcome.fraction
    if frac is not None and ev.share is not None and guarantee in ("quantitative", "complete"):
        share, tol = ev.share
        tol += 1e-9
        if not (frac[0] <= share + tol and frac[1] >= share - tol):
            bad("fraction-wrong", f"fraction {list(frac)} does not contain the {ev.oracle} share {share:.17g}"
                f" (tolerance {tol:.3g})")
    if guarantee == "complete" and exact_pl and ev.exact_min is not None:
        thr = _f64_scale(ev)
        if verdict != "certified" and ev.exact_min > thr:
            # an 'unknown' inside the rounding bound the certifier declares (README) is by design: noted
            pad = outcome.details.get("rounding_bound")
            declared = verdict == "unknown" and pad is not None and ev.exact_min <= Fraction(float(pad))
            bad("incomplete", f"verdict {verdict} but the exact minimum margin is {_f(ev.exact_min)} > 0"
                + (f" (within its rounding bound {float(pad):.3g})" if declared else ""),
                "note" if declared else "fail")
        if lower is not None and abs(Fraction(lower) - ev.exact_min) > Fraction(thr) + Fraction(
                1e-12 * (1 + abs(float(ev.exact_min)))):
            # exactline may report a rounding-padded margin (README); below the minimum is sound, so only noted
            bad("margin-inexact", f"margin {_f(lower)} differs from the exact minimum {_f(ev.exact_min)}", "note")
    return out


F64_UNPADDED = ("crown", "alpha-crown", "ibp-lirpa")


def _clamped(t: list[float], ev: Evidence) -> list[float] | None:
    """t if it is in the region; else t clamped into the region's box when it is outside by at most a millionth
    of the box's size (README: the host clamps such witnesses before confirming them); else None."""
    if ev.contains(t):
        return t
    if ev.box is None or len(ev.box[0]) != len(t):
        return None
    lo, hi = ev.box
    size = max(b - a for a, b in zip(lo, hi, strict=True))
    c = [min(max(v, a), b) for v, a, b in zip(t, lo, hi, strict=True)]
    if max(abs(x - y) for x, y in zip(t, c, strict=True)) <= 1e-6 * size and ev.contains(c):
        return c
    return None


def math_finite(x: float) -> bool:
    return x == x and abs(x) != float("inf")


def _f64_scale(ev: Evidence) -> float:
    """Float64 rounding allowance for exactline: the float32 slack scaled down to float64's unit roundoff."""
    t = ev.notes.get("argmin")
    base = ev.slack_at(_pt(t)) if t else ev.slack_at(_pt(ev.points[0][0]))
    return base * 2.0**-29


# --- running -------------------------------------------------------------------------------------------------


def evidence(case: Case, net: Any, gen: Any) -> tuple[Evidence, bool]:
    """The strongest oracle for the case, and whether it is exact on a piecewise-linear network."""
    from tests.soundness.oracle_exact import exact_evidence
    from tests.soundness.oracle_grid import grid_evidence
    from tests.soundness.oracle_vnnlib import vnnlib_evidence

    if case.vnnlib is not None:
        return vnnlib_evidence(case.vnnlib, net), True
    if isinstance(case.network, FCNet) and case.network.piecewise_linear and (
            case.generator is None or case.generator.net.piecewise_linear):
        return exact_evidence(case, net, gen), True
    return grid_evidence(case, net, gen), False


def record_case(case: Case) -> None:
    STATS.triples += 1
    STATS.families[case.family] += 1
    STATS.ops |= case.ops()
    if case.vnnlib is not None:
        STATS.regions["vnnlib-box"] += 1
        STATS.specs["vnnlib"] += 1
    else:
        assert case.region is not None and case.spec is not None
        STATS.regions[region_label(case.region)] += 1
        STATS.specs[case.spec.label_for_summary] += 1


def check_case(case: Case, names: list[str], certifiers: dict[str, Any] | None = None,
               option_sets: dict[str, list[dict[str, Any]]] | None = None, raise_on: bool = True,
               record: bool = True) -> list[Violation]:
    """Run ``names`` (registered certifiers, or the given ``certifiers`` objects) on the case and judge them.

    ``record``: count the case and its violations in the run summary (off for the oracles' own tests).
    """
    stats = STATS if record else Stats()
    if record:
        record_case(case)
    reg = registry()
    certs = certifiers if certifiers is not None else {n: reg.certifier(n) for n in names}
    option_sets = option_sets or OPTION_SETS
    modules = case.modules()
    try:
        case.problem(modules)
    except GcertError:  # e.g. read_vnnlib refuses a shape it does not support
        for n in certs:
            stats.runs[(n, "refused")] += 1
        return []
    ev, exact_pl = evidence(case, *modules)
    violations: list[Violation] = []
    for n, cert in certs.items():
        for opts in option_sets.get(n, [{}]):
            problem = case.problem(modules)
            try:
                outcome = cert.certify(problem, cert.parse_options(opts))
            except GcertError:
                stats.runs[(n, "refused")] += 1
                continue
            except Exception as exc:  # noqa: BLE001 - any other exception is a bug to report
                stats.runs[(n, "crash")] += 1
                tb = traceback.format_exception_only(type(exc), exc)[-1].strip()
                violations.append(Violation("crash", n, opts, tb, case))
                continue
            stats.runs[(n, outcome.verdict)] += 1
            violations += judge(n, cert.guarantee, opts, outcome, ev, case, exact_pl)
    for v in violations:
        stats.violations.append({"certifier": v.certifier, "kind": v.kind, "severity": v.severity,
                                 "options": v.options, "message": v.message,
                                 "reproducer": v.case.reproducer(v.certifier, v.options)})
    failing = [v for v in violations if v.severity == "fail"]
    if failing and raise_on and not collect_mode():
        raise AssertionError("\n\n".join(v.describe() for v in failing))
    return violations

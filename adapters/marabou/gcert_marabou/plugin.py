"""The certifier ``marabou``: Marabou (maraboupy 2.0) decides N(t) = f(G(embed(t))) over the region exactly.

The problem is exported by the host (:mod:`gcert.export`: float32 ONNX of N, standard ops) and read by Marabou's
own ONNX parser; the input ``t`` gets the region's box as bounds, and each clause of the spec's unsafe set (the
conjunction of its rows' violations ``C_r y + d_r <= 0``) is one query. Every query unsat: certified. A sat query's
point is re-checked by the host with a plain forward pass (as for every certifier): confirmed, falsified; not
confirmed (Marabou works in floating point with tolerances), unknown with the reason. A query out of time: unknown.
Marabou shares no code with gcert, so it is also the soundness harness's independent complete oracle.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

import gcert
from gcert import timeouts
from gcert.contracts import Certifier, Outcome
from gcert.errors import GcertError, UnsupportedOperatorError
from gcert.problem import Problem
from gcert.timeouts import TaskTimeout
from gcert.witness import check_witness

INSTALL_HINT = ("maraboupy is not installed: pip install maraboupy==2.0 onnx onnxruntime "
                "(see adapters/marabou/README.md)")
#: Ops of the exported network that make N not piecewise linear: Marabou's answer there is not complete.
SMOOTH_OPS = ("Sigmoid", "Tanh", "Softmax", "Atan", "Exp", "Log")
#: What Marabou 2.0's ONNX parser reads (maraboupy/parsers/ONNXParser.py), after gcert's export rewrites.
MARABOU_OPS = ("Constant", "Identity", "Dropout", "Cast", "Reshape", "Flatten", "Transpose", "Unsqueeze", "Squeeze",
               "BatchNormalization", "Concat", "MaxPool", "Conv", "Gemm", "MatMul", "Mul", "Add", "Relu", "Split",
               "LeakyRelu", "Sub")


def load() -> Any:
    """maraboupy's ``Marabou`` module; one line of :class:`GcertError` with the install command when absent."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "Tensorflow parser is unavailable": not needed here
            import onnxruntime  # noqa: F401 - without it maraboupy's ONNX parser is silently unavailable
            from maraboupy import Marabou
    except ImportError:
        raise GcertError(INSTALL_HINT) from None
    return Marabou


def available() -> bool:
    try:
        load()
    except GcertError:
        return False
    return True


@dataclass(frozen=True)
class MarabouOptions:
    """Settings of ``marabou`` (Marabou's own names in brackets)."""

    timeout: float = 300.0  # seconds per query [timeoutInSeconds, whole seconds, rounded up]; 0: none
    workers: int = 1  # parallel workers of split-and-conquer mode [numWorkers]; > 1 turns SnC on [snc]
    splitting: str = "auto"  # case-splitting strategy [splittingStrategy]: auto, largest-interval, relu-violation,
    #                          polarity, earliest-relu
    tightening: str = "deeppoly"  # bound tightening during search [tighteningStrategy]: deeppoly, sbt, none
    milp_tightening: str = "none"  # preprocessing [milpTightening]: lp, lp-inc, milp, milp-inc, none (Gurobi-free)
    # Larger queries are answered unknown before solving: Marabou's memory grows with its variables (18 GB seen
    # on the shapes generator composed with its CNN, 39,501 variables; the digits one has 2,651).
    max_variables: int = 20_000

    def __post_init__(self) -> None:
        if not (math.isfinite(self.timeout) and self.timeout >= 0):
            raise GcertError(f"marabou.timeout must be a finite number of seconds >= 0, got {self.timeout}")
        if self.max_variables < 1:
            raise GcertError(f"marabou.max_variables must be an integer >= 1, got {self.max_variables}")
        if self.workers < 1:
            raise GcertError(f"marabou.workers must be an integer >= 1, got {self.workers}")
        choices = {"splitting": ("auto", "largest-interval", "relu-violation", "polarity", "earliest-relu"),
                   "tightening": ("deeppoly", "sbt", "none"),
                   "milp_tightening": ("lp", "lp-inc", "milp", "milp-inc", "none")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise GcertError(f"marabou.{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")


class MarabouCertifier(Certifier):
    name = "marabou"
    guarantee = "complete"
    description = "Marabou (maraboupy 2.0) on the exported ONNX of N: exact verdict on piecewise-linear N"
    Options = MarabouOptions
    regions = ("segment", "box", "lp-ball")

    def prepare(self, problem: Problem) -> None:
        self._model(problem)

    def _model(self, problem: Problem) -> Any:
        """The exported ONNX of N, refused (one line) unless Marabou reads it and is complete on it."""
        load()
        from gcert.export import check_exportable, onnx_model

        check_exportable(problem.region)
        model = onnx_model(problem)
        ops = {node.op_type for node in model.graph.node}
        smooth = sorted(ops & set(SMOOTH_OPS))
        if smooth:
            raise UnsupportedOperatorError(smooth[0], "the composed network; marabou is complete only on "
                                           "piecewise-linear networks", supported_by=("deeppoly", "genprover"))
        unread = sorted(ops - set(MARABOU_OPS))
        if unread:
            raise UnsupportedOperatorError(unread[0], "the exported network; Marabou 2.0's ONNX parser does not "
                                           "read it", supported_by=("deeppoly", "exactline", "interval"))
        return model

    def certify(self, problem: Problem, options: MarabouOptions) -> Outcome:
        model = self._model(problem)
        with tempfile.TemporaryDirectory(prefix="gcert-marabou-") as tmp:
            path = os.path.join(tmp, "network.onnx")
            with open(path, "wb") as fh:
                fh.write(model.SerializeToString())
            return _solve(problem, path, options)


def _solve(problem: Problem, path: str, options: MarabouOptions) -> Outcome:
    Marabou = load()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        network = Marabou.read_onnx(path)
    if network.numVars > options.max_variables:
        return Outcome("unknown", details={"reason": f"Marabou's query has {network.numVars} variables, over "
                                           f"marabou.max_variables={options.max_variables} (its memory grows with "
                                           "them); raise the option to try"})
    xs = network.inputVars[0].reshape(-1)
    ys = network.outputVars[0].reshape(-1)
    spec = problem.spec
    lower, upper = problem.region.lower.tolist(), problem.region.upper.tolist()
    clauses = spec.clauses if spec.clauses is not None else tuple((r,) for r in range(spec.num_rows))
    queries: list[dict[str, Any]] = []
    rejected: list[str] = []
    timed_out = False
    for clause in clauses:
        network.clearProperty()
        for var, lo, hi in zip(xs.tolist(), lower, upper, strict=True):
            network.setLowerBound(var, lo)
            network.setUpperBound(var, hi)
        for r in clause:
            row = spec.C[r].tolist()
            used = [(int(v), c) for v, c in zip(ys.tolist(), row, strict=True) if c != 0]
            if not used:  # a row without outputs: its violation 0 * y + d <= 0 holds everywhere or nowhere
                used = [(int(ys[0]), 0.0)]
            network.addInequality([v for v, _ in used], [c for _, c in used], -float(spec.d[r]), isProperty=True)
        budget, by_task = _budget(options.timeout)
        opts = Marabou.createOptions(timeoutInSeconds=budget, verbosity=0, numWorkers=options.workers,
                                     snc=options.workers > 1, splittingStrategy=options.splitting,
                                     tighteningStrategy=options.tightening, milpTightening=options.milp_tightening)
        start = time.perf_counter()
        with _silenced_stdout():
            exit_code, values, _ = network.solve(verbose=False, options=opts)
        seconds = time.perf_counter() - start
        answer = {"sat": "sat", "unsat": "unsat", "TIMEOUT": "timeout"}.get(exit_code, "unknown")
        queries.append({"rows": list(clause), "answer": answer, "seconds": round(seconds, 6)})
        if answer == "timeout" and by_task:
            raise TaskTimeout(by_task)
        if answer == "sat":
            point = torch.tensor([values[int(v)] for v in xs.tolist()], dtype=torch.float64)
            witness, why = check_witness(problem, point)
            if witness is not None:
                return Outcome("falsified", witness_t=point, details={"marabou": queries})
            rejected.append(why)
        elif answer != "unsat":
            timed_out = timed_out or answer == "timeout"
            queries[-1]["exit_code"] = exit_code
    if not rejected and all(q["answer"] == "unsat" for q in queries):
        return Outcome("certified", details={"marabou": queries})
    if rejected:
        reason = f"Marabou's point does not re-check with a plain forward pass: {rejected[0]}"
    elif timed_out:
        reason = f"a Marabou query ran out of its {options.timeout:g} s (marabou.timeout)"
    else:
        reason = f"Marabou answered {queries[-1].get('exit_code')}"
    return Outcome("unknown", details={"marabou": queries, "reason": reason})


@contextlib.contextmanager
def _silenced_stdout() -> Iterator[None]:
    """Marabou's C++ side writes to file descriptor 1 (and its ``filename`` option redirects fd 1 for good):
    point fd 1 at /dev/null for the call and restore it after."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def _budget(per_query: float) -> tuple[int, float | None]:
    """Marabou's whole-second timeout for one query, and the task's limit when that limit is what binds."""
    left = timeouts.remaining()
    cap = per_query if per_query > 0 else math.inf
    if left is not None and left < cap:
        timeouts.check()  # already past it: stop before starting Marabou
        return max(1, math.ceil(left)), timeouts.limit()
    return (0 if cap == math.inf else max(1, math.ceil(cap))), None


@gcert.hookimpl
def gcert_register_certifiers(register: Callable[[Certifier], None]) -> None:
    register(MarabouCertifier())

"""The ``vnncomp`` certifier: any external VNN-COMP tool, run on the exported ONNX + VNN-LIB of a task.

The task is exported (:mod:`gcert.export`) to a temporary folder, the command template is filled in
(``{onnx}``, ``{vnnlib}``, ``{timeout}``, ``{result}``, each shell-quoted) and run in its own process group with a
hard time limit; the result file is read as VNN-COMP defines it: ``sat`` (then the counterexample
``((X_0 v) ... (Y_0 v) ...)``), ``unsat``, ``timeout``, ``unknown`` or ``error``. A sat answer's point is re-checked
by the host, as for every certifier; the tool's guarantee is the tool's, so this certifier claims ``sound``.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import shlex
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

import gcert
from gcert import timeouts
from gcert.contracts import Certifier, Outcome
from gcert.errors import GcertError
from gcert.problem import Problem

PLACEHOLDERS = ("onnx", "vnnlib", "timeout", "result")
_ASSIGNMENT = re.compile(r"\(\s*([XY])_(\d+)\s+([^\s()]+)\s*\)")


@dataclass(frozen=True)
class VnncompOptions:
    """``command``: a shell command template with {onnx} {vnnlib} {timeout} {result}; ``timeout``: seconds
    the tool gets (passed as {timeout}; the process group is killed a few seconds after it)."""

    command: str = ""
    timeout: float = 300.0

    def __post_init__(self) -> None:
        if not self.command.strip():
            raise GcertError("vnncomp needs a command: -o vnncomp.command='TOOL {onnx} {vnnlib} {timeout} {result}'")
        try:
            fields = {f for _, f, _, _ in __import__("string").Formatter().parse(self.command) if f is not None}
        except ValueError as exc:
            raise GcertError(f"vnncomp.command is not a valid template ({exc}); use {{onnx}} {{vnnlib}} "
                             "{timeout} {result}, and {{ }} for literal braces") from None
        unknown = sorted(fields - set(PLACEHOLDERS))
        if unknown:
            raise GcertError(f"vnncomp.command has the unknown placeholder {{{unknown[0]}}}; it takes "
                             + " ".join(f"{{{p}}}" for p in PLACEHOLDERS))
        if "result" not in fields:
            raise GcertError("vnncomp.command must pass {result}: the file the tool writes its answer to")
        if not (math.isfinite(self.timeout) and self.timeout > 0):
            raise GcertError(f"vnncomp.timeout must be a finite number of seconds > 0, got {self.timeout}")


GRACE = 5.0
"""Seconds past its timeout a tool may take to write its result before its process group is killed."""


class Vnncomp(Certifier):
    name = "vnncomp"
    guarantee = "sound"
    description = "an external VNN-COMP tool (-o command='TOOL {onnx} {vnnlib} {timeout} {result}')"
    Options = VnncompOptions
    regions = ("segment", "box", "lp-ball")

    def prepare(self, problem: Problem) -> None:
        from gcert.export import check_exportable

        check_exportable(problem.region)

    def certify(self, problem: Problem, options: VnncompOptions) -> Outcome:
        from gcert.export import write_problem

        self.prepare(problem)
        budget = options.timeout
        left = timeouts.remaining()
        by_task = left is not None and left < budget
        if by_task:
            timeouts.check()
            budget = max(left or 0.0, 1e-3)
        with tempfile.TemporaryDirectory(prefix="gcert-vnncomp-") as tmp:
            onnx_path, vnnlib_path, result = (os.path.join(tmp, n) for n in ("net.onnx", "prop.vnnlib", "result.txt"))
            write_problem(problem, onnx_path, vnnlib_path)
            command = options.command.format(onnx=shlex.quote(onnx_path), vnnlib=shlex.quote(vnnlib_path),
                                             timeout=f"{budget:g}", result=shlex.quote(result))
            start = time.perf_counter()
            code, output, killed = _run(command, budget + GRACE)
            seconds = round(time.perf_counter() - start, 6)
            details = {"vnncomp": {"command": command, "exit_code": code, "seconds": seconds}}
            if killed:
                if by_task:
                    raise timeouts.TaskTimeout(timeouts.limit() or budget)
                details["reason"] = f"the tool ran past {budget:g} s (+{GRACE:g} s) and was killed"
                return Outcome("unknown", details=details)
            try:
                text = Path(result).read_text()
            except (OSError, UnicodeDecodeError):
                tail = " ".join(output.split()[-20:])
                details["reason"] = f"the tool wrote no result file (exit code {code}){': ' + tail if tail else ''}"
                return Outcome("unknown", details=details)
        return _outcome(text, problem, details)


def _run(command: str, limit: float) -> tuple[int | None, str, bool]:
    """Run ``command`` in a shell in its own process group; kill the group past ``limit`` seconds."""
    proc = subprocess.Popen(command, shell=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=limit)
        return proc.returncode, output or "", False
    except subprocess.TimeoutExpired:
        _kill(proc)
        return None, "", True
    except BaseException:  # the task's own limit (or Ctrl-C) must not leave the tool running
        _kill(proc)
        raise


def _kill(proc: subprocess.Popen[str]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()


def _outcome(text: str, problem: Problem, details: dict[str, object]) -> Outcome:
    """The VNN-COMP result file as an outcome; anything malformed is unknown with the reason."""
    lines = [ln.strip() for ln in text.strip().splitlines()]
    first = lines[0].lower() if lines else ""
    details["answer"] = first
    if first in ("unsat", "holds"):
        return Outcome("certified", details=details)
    if first in ("sat", "violated"):
        values = {(kind, int(i)): value for kind, i, value in _ASSIGNMENT.findall("\n".join(lines[1:]))}
        n = problem.region.dim
        try:
            point = torch.tensor([float(values[("X", i)]) for i in range(n)], dtype=torch.float64)
        except KeyError as exc:
            details["reason"] = f"the tool answered sat without a value for X_{exc.args[0][1]} in its counterexample"
            return Outcome("unknown", details=details)
        except ValueError:
            details["reason"] = "the tool's counterexample holds a value that is not a number"
            return Outcome("unknown", details=details)
        return Outcome("falsified", witness_t=point, details=details)
    if first in ("timeout", "unknown", "error"):
        details["reason"] = f"the tool answered {first}"
        return Outcome("unknown", details=details)
    shown = first[:40] or "(empty)"
    details["reason"] = f"the tool's result file starts with {shown!r}, not sat/unsat/timeout/unknown/error"
    return Outcome("unknown", details=details)


@gcert.hookimpl
def gcert_register_certifiers(register: Callable[[Certifier], None]) -> None:
    register(Vnncomp())

"""A small VNN-COMP tool for the tests of the ``vnncomp`` certifier: ``python vnncomp_tool.py ONNX VNNLIB TIMEOUT
RESULT [MODE]``.

It decides one-input instances exactly: it reads the ONNX network with onnxruntime (not gcert's importer) and
the property with gcert's VNN-LIB reader, then runs gcert's exactline on the imported network; it writes the
VNN-COMP result file (``unsat``, or ``sat`` and the counterexample ``((X_0 v) (Y_0 v) ...)`` evaluated by
onnxruntime). MODE makes it misbehave on purpose: ``sleep`` (past any timeout), ``garbage`` (a malformed result),
``nowitness`` (sat without values), ``error`` (the answer ``error``), ``crash`` (no result file, exit code 3).
"""

from __future__ import annotations

import sys
import time


def main(argv: list[str]) -> int:
    onnx_path, vnnlib_path, _timeout, result = argv[:4]
    mode = argv[4] if len(argv) > 4 else "decide"
    if mode == "sleep":
        time.sleep(600)
    if mode == "crash":
        print("tool: something went wrong", file=sys.stderr)
        return 3
    answers = {"garbage": "maybe?\n", "nowitness": "sat\n", "error": "error\n"}
    if mode in answers:
        with open(result, "w") as fh:
            fh.write(answers[mode])
        return 0
    import numpy as np
    import onnxruntime as ort
    import torch
    from torch import nn

    from gcert.models import load_model
    from gcert.problem import Problem
    from gcert.regions import Box
    from gcert.testing import make_registry
    from gcert.vnnlib import read_vnnlib

    prop = read_vnnlib(vnnlib_path)
    model = load_model(onnx_path)
    shape = tuple(model.input_shape or ())
    problem = Problem(model.module, nn.Identity(), Box(prop.lower.reshape(shape), prop.upper.reshape(shape)),
                      prop.spec)
    exactline = make_registry().certifier("exactline")
    outcome = exactline.certify(problem, exactline.parse_options())
    if outcome.verdict == "certified":
        answer = "unsat\n"
    elif outcome.verdict == "falsified" and outcome.witness_t is not None:
        x = outcome.witness_t.reshape(1, *shape).to(torch.float32).numpy()
        session = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
        y = session.run(None, {session.get_inputs()[0].name: x})[0].reshape(-1)
        values = [f"(X_{i} {float(v)!r})" for i, v in enumerate(np.asarray(x).reshape(-1))]
        values += [f"(Y_{j} {float(v)!r})" for j, v in enumerate(y)]
        answer = "sat\n(" + "\n ".join(values) + ")\n"
    else:
        answer = "unknown\n"
    with open(result, "w") as fh:
        fh.write(answer)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

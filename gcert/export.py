"""A gcert problem in the VNN-COMP language: N(t) = f(G(embed(t))) as ONNX, its region and spec as VNN-LIB.

The ONNX network is float32 with standard ops only (opset :data:`OPSET`), one input ``t`` of the region's shape
(``[1, dim]`` for a segment, ``[1, *control shape]`` for a box); layers that some VNN-COMP tools cannot read
are written in equivalent standard forms (a ConvTranspose whose kernel equals its stride as a 1x1 Conv and a
depth-to-space reshape; ``c - x`` as ``x * -1 + c``). The VNN-LIB property states the input box and the unsafe
set, the disjunction over the spec's clauses of the conjunction of its rows' violations ``C_r y + d_r <= 0``,
with every constant written as the exact decimal of its float64, so that it reads back as the same number.
"""

from __future__ import annotations

import copy
import csv
import hashlib
import io
import json
import math
import re
import warnings
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper
from torch import nn

from gcert import __version__
from gcert.errors import GcertError, InputError
from gcert.problem import Problem
from gcert.regions import Box, Embed, LpBall, Region, Reshape
from gcert.spec import Spec

OPSET = 13
"""The ONNX opset of exported networks: one that every VNN-COMP 2021-2024 tool reads."""

DEFAULT_TIMEOUT = 300.0
"""The instances.csv timeout (seconds) when none is given."""

MANIFEST = "gcert-export.json"


# --- the network ------------------------------------------------------------------------------------------


class ExportedEmbed(nn.Module):
    """The segment's (or any affine region's) embedding in float32: ``t -> bias + weight @ t``, reshaped."""

    def __init__(self, embed: Embed):
        super().__init__()
        lin = embed.linear
        self.linear = nn.Linear(lin.in_features, lin.out_features, dtype=torch.float32)
        with torch.no_grad():
            self.linear.weight.copy_(lin.weight.to(torch.float32))
            self.linear.bias.copy_(lin.bias.to(torch.float32))
        self.control_shape = embed.control_shape

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.linear(t).reshape(1, *self.control_shape)


class DepthToSpaceConvTranspose(nn.Module):
    """``ConvTranspose2d(k, stride=k, padding=0)`` as a 1x1 Conv to ``out * k * k`` channels and a depth-to-space
    reshape: each input pixel writes its own k x k patch, so the two are the same linear map."""

    def __init__(self, m: nn.ConvTranspose2d):
        super().__init__()
        (kh, kw), cin, cout = m.kernel_size, m.in_channels, m.out_channels
        self.k, self.cout = (kh, kw), cout
        self.conv = nn.Conv2d(cin, cout * kh * kw, 1, dtype=torch.float32)
        with torch.no_grad():
            w = m.weight.detach().to(torch.float32)  # (cin, cout, kh, kw)
            self.conv.weight.copy_(w.permute(1, 2, 3, 0).reshape(cout * kh * kw, cin, 1, 1))
            bias = m.bias.detach().to(torch.float32) if m.bias is not None else torch.zeros(cout)
            self.conv.bias.copy_(bias.repeat_interleave(kh * kw))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        (kh, kw), h, w = self.k, x.shape[2], x.shape[3]
        y = self.conv(x).reshape(1, self.cout, kh, kw, h, w)
        return y.permute(0, 1, 4, 2, 5, 3).reshape(1, self.cout, h * kh, w * kw)


def _rewrite_conv_transpose(module: nn.Module) -> None:
    for name, child in list(module.named_children()):
        if (isinstance(child, nn.ConvTranspose2d) and child.kernel_size == child.stride
                and child.padding == (0, 0) and child.output_padding == (0, 0) and child.dilation == (1, 1)
                and child.groups == 1 and child.padding_mode == "zeros"):
            setattr(module, name, DepthToSpaceConvTranspose(child))
        else:
            _rewrite_conv_transpose(child)


class ExportedNetwork(nn.Module):
    def __init__(self, embed: nn.Module, generator: nn.Module, network: nn.Module):
        super().__init__()
        self.embed, self.generator, self.network = embed, generator, network

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.network(self.generator(self.embed(t))).reshape(1, -1)


def input_shape(region: Region) -> tuple[int, ...]:
    """The exported input's shape: ``[1, *control shape]`` for boxes, ``[1, dim]`` otherwise."""
    if isinstance(region, Box):
        return (1, *region.control_shape)
    return (1, region.dim)


def check_exportable(region: Region) -> None:
    """VNN-LIB states input boxes: an L1/L2 ball is not one."""
    if isinstance(region, LpBall) and region.p != math.inf:
        raise InputError(f"an L{int(region.p)} ball cannot be written as a VNN-LIB input box; export L-inf balls, "
                         "boxes or segments")


def exported_module(problem: Problem) -> nn.Module:
    """N(t) in float32, with the rewrites of the module docstring, as a plain torch module."""
    check_exportable(problem.region)
    embed = problem.region.embedding()
    if isinstance(embed, Embed):
        head: nn.Module = ExportedEmbed(embed)
    elif isinstance(embed, Reshape):
        head = Reshape(embed.shape)
    else:
        raise GcertError(f"cannot export the embedding {type(embed).__name__} of a {problem.region.kind} region")
    body = nn.Sequential(copy.deepcopy(problem.generator), copy.deepcopy(problem.network))
    body = body.to(torch.float32).eval()
    _rewrite_conv_transpose(body)
    return ExportedNetwork(head, body[0], body[1]).eval().requires_grad_(False)


def onnx_model(problem: Problem) -> onnx.ModelProto:
    """The checked ONNX model of N(t): input ``t`` of :func:`input_shape`, output ``y`` of shape [1, k]."""
    module = exported_module(problem)
    example = torch.zeros(input_shape(problem.region), dtype=torch.float32)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(module, (example,), buffer, dynamo=False, opset_version=OPSET, input_names=["t"],
                              output_names=["y"], do_constant_folding=True)
        except Exception as exc:  # noqa: BLE001 - the exporter's own messages are multi-line
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise GcertError(f"the composed network cannot be exported to ONNX: {first}") from None
    model = onnx.load_from_string(buffer.getvalue())
    _plain_arithmetic(model)
    model.producer_name, model.producer_version = "gcert", __version__
    onnx.checker.check_model(model, full_check=True)
    return model


def _plain_arithmetic(model: onnx.ModelProto) -> None:
    """Rewrite ``Sub`` with a constant operand, and ``Neg``, into ``Mul`` by -1 and ``Add`` of a constant.

    Several VNN-COMP tools (Marabou among them) read ``x - c`` only with ``c`` of x's full shape and not
    ``c - x`` at all; ``Add`` with a broadcast constant and ``Mul`` by a scalar they all read.
    """
    graph = model.graph
    constants = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            constants[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    minus_one = "gcert_minus_one"
    nodes: list[onnx.NodeProto] = []
    for i, node in enumerate(graph.node):
        if node.op_type == "Sub" and node.input[1] in constants and node.input[0] not in constants:
            name = f"gcert_neg_{i}"
            graph.initializer.append(numpy_helper.from_array(-constants[node.input[1]], name))
            nodes.append(helper.make_node("Add", [node.input[0], name], list(node.output)))
        elif (node.op_type == "Sub" and node.input[0] in constants and node.input[1] not in constants) or \
                node.op_type == "Neg":
            x = node.input[1] if node.op_type == "Sub" else node.input[0]
            scaled = f"gcert_scaled_{i}" if node.op_type == "Sub" else node.output[0]
            nodes.append(helper.make_node("Mul", [x, minus_one], [scaled]))
            if node.op_type == "Sub":
                nodes.append(helper.make_node("Add", [scaled, node.input[0]], list(node.output)))
        elif node.op_type == "Div" and node.input[1] in constants and constants[node.input[1]].size == 1 \
                and node.input[0] not in constants:
            # x / c as x * (1/c), 1/c rounded to float32 (relative change at most 2^-24): tools read Mul
            name = f"gcert_reciprocal_{i}"
            value = np.asarray(1.0 / constants[node.input[1]].astype(np.float64), dtype=np.float32).reshape(())
            graph.initializer.append(numpy_helper.from_array(value, name))
            nodes.append(helper.make_node("Mul", [node.input[0], name], list(node.output)))
        elif node.op_type == "LeakyRelu" and not 0 < _alpha(node) < 1:
            # leaky_relu(x, a) = (1 - a) relu(x) + a x: some tools (Marabou) read LeakyRelu only for 0 < a < 1
            alpha, p = _alpha(node), f"gcert_leaky_{i}"
            graph.initializer.append(numpy_helper.from_array(np.array(1.0 - alpha, dtype=np.float32), p + "_k"))
            graph.initializer.append(numpy_helper.from_array(np.array(alpha, dtype=np.float32), p + "_a"))
            nodes += [helper.make_node("Relu", [node.input[0]], [p + "_r"]),
                      helper.make_node("Mul", [p + "_r", p + "_k"], [p + "_rk"]),
                      helper.make_node("Mul", [node.input[0], p + "_a"], [p + "_xa"]),
                      helper.make_node("Add", [p + "_rk", p + "_xa"], list(node.output))]
        elif node.op_type == "Clip" and all(n in constants for n in node.input[1:] if n):
            nodes += _clip_as_relus(node, constants, graph, f"gcert_clip_{i}", minus_one)
        else:
            nodes.append(node)
    graph.initializer.append(numpy_helper.from_array(np.array(-1.0, dtype=np.float32), minus_one))
    graph.initializer.append(numpy_helper.from_array(np.array(1.0, dtype=np.float32), "gcert_one"))
    nodes = _private_constant_adds(nodes, constants | {i.name: None for i in graph.initializer})
    used = {name for n in nodes for name in n.input} | {o.name for o in graph.output}
    del graph.node[:]
    graph.node.extend(n for n in nodes if n.op_type != "Constant" or n.output[0] in used)
    kept = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)


def _private_constant_adds(nodes: list[onnx.NodeProto], constants: dict[str, Any]) -> list[onnx.NodeProto]:
    """Give every ``x + c`` (c constant) whose ``x`` has other consumers its own copy ``x * 1`` first.

    Marabou's parser folds ``x + c`` into the equation that defines ``x`` when there is one, which changes ``x``
    for its other consumers too; with a private copy the fold touches only the copy.
    """
    consumers: dict[str, int] = {}
    for n in nodes:
        for name in n.input:
            consumers[name] = consumers.get(name, 0) + 1
    out: list[onnx.NodeProto] = []
    for i, n in enumerate(nodes):
        if n.op_type == "Add" and len(n.input) == 2:
            var = [x for x in n.input if x not in constants]
            if len(var) == 1 and consumers.get(var[0], 0) > 1:
                copy_name = f"gcert_copy_{i}"
                out.append(helper.make_node("Mul", [var[0], "gcert_one"], [copy_name]))
                n = helper.make_node("Add", [copy_name if x == var[0] else x for x in n.input], list(n.output))
        out.append(n)
    return out


def _alpha(node: onnx.NodeProto) -> float:
    return next((helper.get_attribute_value(a) for a in node.attribute if a.name == "alpha"), 0.01)


def _clip_as_relus(node: onnx.NodeProto, constants: dict[str, np.ndarray], graph: onnx.GraphProto, prefix: str,
                   minus_one: str) -> list[onnx.NodeProto]:
    """``clip(x, a, b) = a + relu(x - a) - relu(x - b)`` (one-sided: ``a + relu(x - a)``, ``b - relu(b - x)``)."""
    x, y = node.input[0], node.output[0]
    a = constants[node.input[1]] if len(node.input) > 1 and node.input[1] else None
    b = constants[node.input[2]] if len(node.input) > 2 and node.input[2] else None
    out: list[onnx.NodeProto] = []

    def const(name: str, value: np.ndarray) -> str:
        graph.initializer.append(numpy_helper.from_array(np.asarray(value, dtype=np.float32), f"{prefix}_{name}"))
        return f"{prefix}_{name}"

    def op(kind: str, inputs: list[str], name: str) -> str:
        out.append(helper.make_node(kind, inputs, [name]))
        return name

    if a is None and b is None:
        return [helper.make_node("Identity", [x], [y])]
    if a is not None and b is not None and bool(np.any(a > b)):  # min > max: every value is max (torch, ONNX)
        op("Add", [op("Mul", [x, const("zero", np.zeros((), np.float32))], f"{prefix}_z"), const("hi", b)], y)
        return out
    if b is None:
        r = op("Relu", [op("Add", [x, const("neg_lo", -a)], f"{prefix}_s")], f"{prefix}_r")
        op("Add", [r, const("lo", a)], y)
    elif a is None:
        m = op("Mul", [x, minus_one], f"{prefix}_m")
        r = op("Relu", [op("Add", [m, const("hi", b)], f"{prefix}_s")], f"{prefix}_r")
        op("Add", [op("Mul", [r, minus_one], f"{prefix}_n"), const("hi2", b)], y)
    else:
        r1 = op("Relu", [op("Add", [x, const("neg_lo", -a)], f"{prefix}_s1")], f"{prefix}_r1")
        r2 = op("Relu", [op("Add", [x, const("neg_hi", -b)], f"{prefix}_s2")], f"{prefix}_r2")
        diff = op("Add", [r1, op("Mul", [r2, minus_one], f"{prefix}_n")], f"{prefix}_d")
        op("Add", [diff, const("lo", a)], y)
    return out


# --- the property -----------------------------------------------------------------------------------------


def exact(value: float) -> str:
    """The exact decimal of a float64 (it reads back, as a fraction or with float(), as the same number)."""
    if not math.isfinite(value):
        raise GcertError(f"cannot write the non-finite constant {value} to VNN-LIB")
    text = str(Decimal(value))
    return "0" if text in ("0", "-0") else text


def vnnlib_text(lower: torch.Tensor, upper: torch.Tensor, spec: Spec, comments: tuple[str, ...] = ()) -> str:
    """A VNN-LIB 1.0 property: ``lower <= X <= upper`` (flat, row-major) and the spec's unsafe set over ``Y``."""
    lo, hi = lower.reshape(-1).tolist(), upper.reshape(-1).tolist()
    k = spec.num_outputs
    lines = [f"; {c}" for c in comments]
    lines += [f"(declare-const X_{i} Real)" for i in range(len(lo))]
    lines += [f"(declare-const Y_{j} Real)" for j in range(k)]
    lines.append("")
    for i, (a, b) in enumerate(zip(lo, hi, strict=True)):
        lines.append(f"(assert (>= X_{i} {exact(a)}))")
        lines.append(f"(assert (<= X_{i} {exact(b)}))")
    lines.append("")
    clauses = spec.clauses if spec.clauses is not None else tuple((r,) for r in range(spec.num_rows))
    disjuncts = [[_violation(spec.C[r].tolist(), float(spec.d[r])) for r in clause] for clause in clauses]
    if len(disjuncts) == 1 and len(disjuncts[0]) == 1:
        lines.append(f"(assert {disjuncts[0][0]})")
    else:
        lines.append("(assert (or")
        lines += [f"    (and {' '.join(atoms)})" for atoms in disjuncts]
        lines.append("))")
    return "\n".join(lines) + "\n"


def _violation(coeffs: list[float], d: float) -> str:
    """The violation ``sum c_j Y_j + d <= 0`` of one spec row, in the simplest form tools read."""
    nz = [(j, c) for j, c in enumerate(coeffs) if c != 0]
    if len(nz) == 2 and d == 0 and sorted(c for _, c in nz) == [-1.0, 1.0]:
        pos, neg = (nz[0][0], nz[1][0]) if nz[0][1] > 0 else (nz[1][0], nz[0][0])
        return f"(<= Y_{pos} Y_{neg})"
    if len(nz) == 1 and nz[0][1] == 1.0:
        return f"(<= Y_{nz[0][0]} {exact(-d)})"
    if len(nz) == 1 and nz[0][1] == -1.0:
        return f"(>= Y_{nz[0][0]} {exact(d)})"
    # a row without outputs (0 > -d) keeps Y_0 with coefficient 0, so that it reads back as the same row
    terms = [f"(* {exact(c)} Y_{j})" for j, c in (nz or [(0, 0.0)])] + ([exact(d)] if d != 0 else [])
    return f"(<= {terms[0] if len(terms) == 1 else '(+ ' + ' '.join(terms) + ')'} 0)"


# --- instances --------------------------------------------------------------------------------------------


@dataclass
class Instance:
    """One exported task: its files (relative to the export folder) and what it was made from."""

    onnx: str
    vnnlib: str
    timeout: float
    task: dict[str, Any] = field(default_factory=dict)


def write_problem(problem: Problem, onnx_path: str | Path, vnnlib_path: str | Path,
                  comments: tuple[str, ...] = ()) -> None:
    """Write N(t) and its property; refuses (one line) to overwrite an existing file."""
    for p in (onnx_path, vnnlib_path):
        if Path(p).exists():
            raise InputError(f"{p} exists; gcert never overwrites a file, give a new path")
    data = onnx_model(problem).SerializeToString()
    text = vnnlib_text(problem.region.lower, problem.region.upper, problem.spec, comments)
    Path(onnx_path).write_bytes(data)
    Path(vnnlib_path).write_text(text)


def check_export_folder(out: str | Path) -> Path:
    """An export goes into a new or empty folder (never over a user's files)."""
    folder = Path(out)
    if folder.exists() and not folder.is_dir():
        raise InputError(f"--out {out} is a file; give a new or empty folder for the exported instances")
    if folder.is_dir() and any(folder.iterdir()):
        raise InputError(f"--out {out} is not empty; give a new or empty folder (gcert never overwrites files)")
    return folder


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "x"


def export_tasks(ctx: Any, out: str | Path, timeout: float | None = None,
                 on_instance: Any = None) -> list[Instance]:
    """Export every (input, mutation, delta) of a :class:`gcert.runner.Context` into ``out``.

    Writes ``onnx/*.onnx`` (identical networks once), ``vnnlib/*.vnnlib``, ``instances.csv`` (VNN-COMP's
    format: onnx, vnnlib, timeout; paths relative to ``out``) and :data:`MANIFEST` (the task of each instance).
    """
    from gcert.runner import Task

    folder = check_export_folder(out)
    limit = DEFAULT_TIMEOUT if timeout is None else float(timeout)
    if not (math.isfinite(limit) and limit > 0):
        raise InputError(f"--timeout {limit:g} must be a finite number of seconds > 0")
    tasks = [(i, input_id, m, float(delta)) for i, input_id in enumerate(ctx.data.ids)
             for m, mutation in ctx.mutations.items()
             for delta in ((0.0,) if ctx.properties else ctx.config.deltas or mutation.default_deltas)]
    if not tasks:
        raise InputError("nothing to export: the run has no tasks")
    problems = []
    for index, input_id, mutation, delta in tasks:  # every problem first: a refusal leaves no files behind
        problem, _ = ctx.problem(Task(index, input_id, mutation, delta, ""))
        check_exportable(problem.region)
        problems.append(problem)
    (folder / "onnx").mkdir(parents=True, exist_ok=True)
    (folder / "vnnlib").mkdir(exist_ok=True)
    seen: dict[str, str] = {}
    instances: list[Instance] = []
    for (_index, input_id, mutation, delta), problem in zip(tasks, problems, strict=True):
        short = Path(input_id).stem if "/" in input_id else input_id  # a VNN-LIB property's file name
        name = _safe(f"{short}_{mutation}") if ctx.properties else _safe(f"{short}_{mutation}_{delta:g}")
        while f"vnnlib/{name}.vnnlib" in {i.vnnlib for i in instances}:
            name += "_"
        data = onnx_model(problem).SerializeToString()
        digest = hashlib.sha256(data).hexdigest()
        if digest not in seen:
            seen[digest] = f"onnx/{name}.onnx"
            (folder / seen[digest]).write_bytes(data)
        task = {"input": input_id, "mutation": mutation, "delta": delta, "label": problem.spec.params.get("label"),
                "spec": problem.spec.to_record(), "region": problem.region.to_record(),
                "input_shape": list(input_shape(problem.region))}
        comments = (f"gcert {__version__} export: input {input_id}, mutation {mutation}, delta {delta:g}",
                    f"network {seen[digest]}, input t of shape {list(input_shape(problem.region))}")
        vnn = f"vnnlib/{name}.vnnlib"
        (folder / vnn).write_text(vnnlib_text(problem.region.lower, problem.region.upper, problem.spec, comments))
        instance = Instance(seen[digest], vnn, limit, task)
        instances.append(instance)
        if on_instance is not None:
            on_instance(instance)
    with open(folder / "instances.csv", "w", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        for i in instances:
            writer.writerow([i.onnx, i.vnnlib, f"{i.timeout:g}"])
    manifest = {"gcert": __version__, "model": ctx.model.to_record(), "opset": OPSET,
                "instances": [vars(i) for i in instances]}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2, default=str) + "\n")
    return instances

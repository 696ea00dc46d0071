"""Tracing the composed network into a torch.fx graph of standard layers, for native certifiers.

Standard ``torch.nn`` layers stay leaves (``call_module``); gcert's own wrappers and ONNX-imported
graphs are traced through, so a certifier sees one flat graph and maps each node through its op table.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch
from torch import fx, nn

from gcert.errors import UnsupportedOperatorError, one_line


class _Tracer(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return type(m).__module__.startswith("torch.nn") and not isinstance(m, nn.Sequential | nn.ModuleList)


def trace(module: nn.Module, dtype: torch.dtype = torch.float64) -> fx.GraphModule:
    """A flat fx graph of a copy of ``module`` in ``dtype`` (float64 by default, for tight sound bounds)."""
    root = copy.deepcopy(module).to(dtype).eval()
    if _Tracer().is_leaf_module(root, ""):
        root = nn.Sequential(root)  # fx traces into the root's forward; keep a lone layer a leaf
    try:
        graph = _Tracer().trace(root)
    except Exception as exc:  # noqa: BLE001 - tracing errors name a Python construct, say which
        raise UnsupportedOperatorError(
            type(exc).__name__, "the network (torch.fx cannot trace it)", hint=one_line(exc, with_type=False)
        ) from exc
    return fx.GraphModule(root, graph)


def op_name(gm: fx.GraphModule, node: fx.Node) -> str:
    """How a node is named in error messages: the layer class, function or method name."""
    if node.op == "call_module":
        return type(gm.get_submodule(str(node.target))).__name__
    if node.op == "call_function":
        return getattr(node.target, "__name__", str(node.target))
    return str(node.target)


def rule_for(gm: fx.GraphModule, node: fx.Node, modules: dict[type, Callable[..., Any]],
             functions: dict[Any, Callable[..., Any]], methods: dict[str, Callable[..., Any]],
             certifier: str, supported_elsewhere: tuple[str, ...] = ("sampling",)) -> Callable[..., Any]:
    """Look a node up in a certifier's op tables, or raise one line naming the op and who handles it."""
    rule = None
    if node.op == "call_module":
        rule = modules.get(type(gm.get_submodule(str(node.target))))
    elif node.op == "call_function":
        rule = functions.get(node.target)
    elif node.op == "call_method":
        rule = methods.get(str(node.target))
    if rule is None:
        raise UnsupportedOperatorError(
            op_name(gm, node), f"node {node.name!r} (certifier {certifier!r} has no transfer function for it)",
            supported_by=supported_elsewhere,
        )
    return rule

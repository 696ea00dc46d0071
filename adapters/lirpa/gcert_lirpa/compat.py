"""A small, explicit compatibility layer that lets auto_LiRPA 0.3 (2022, written for torch < 1.13) run on torch 2.x.

Every patch is one named function that says which auto_LiRPA code needs it; :func:`load` applies them once.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import sys
import types
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import torch

from gcert.errors import GcertError, one_line

INSTALL_HINT = "auto_LiRPA is not installed: pip install --no-deps auto-LiRPA==0.3 (see adapters/lirpa/README.md)"

#: Options for every BoundedModule the adapter builds. In 0.3's default "patches" mode, ``BoundSlice``
#: backward accepts patches only for channel slices without unstable-neuron indices, so a generator whose padded
#: ConvTranspose2d became a crop fails (checked: a DCGAN-style generator composed with a CNN); a storage-size
#: error was seen there too. Convolutions are therefore bounded as dense matrices. alpha-CROWN's sparse slope
#: storage (per unstable neuron, per unstable spec row) failed with assertions and shape mismatches on ERAN's
#: ConvSmall and mnist_relu_6_100 and on ReLUs after Conv1d, so slopes are stored densely (slower, but it runs).
BOUND_OPTS: dict[str, Any] = {"conv_mode": "matrix", "sparse_spec_alpha": False, "sparse_features_alpha": False}


# --- patches that must be in place before ``import auto_LiRPA`` --------------------------------------


def patch_opset_setter() -> None:
    """``auto_LiRPA.parse_graph`` imports ``torch.onnx.symbolic_helper._set_opset_version`` (gone in torch 2.x)
    and calls it with 12 before ``_optimize_graph``. In torch < 1.13 the setter also registered that opset's
    symbolic functions; torch 2.x registers an opset only when its ``symbolic_opsetN`` module is imported, and
    otherwise falls back to opset 9 forms (e.g. ``Pad`` with ``pads`` as an attribute, which 0.3's ``BoundPad``
    cannot read). So the stand-in sets the exporter's ``GLOBALS`` and imports opsets 7..N."""
    import torch.onnx.symbolic_helper as helper

    if hasattr(helper, "_set_opset_version"):
        return
    try:  # torch >= 2.9
        from torch.onnx._internal.torchscript_exporter import _globals
        package = "torch.onnx._internal.torchscript_exporter"
    except ImportError:  # torch 2.0 - 2.8
        from torch.onnx import _globals  # type: ignore[no-redef]
        package = "torch.onnx"

    def _set_opset_version(opset_version: int) -> None:
        for version in range(7, opset_version + 1):
            name = f"{package}.symbolic_opset{version}"
            if importlib.util.find_spec(name) is not None:
                importlib.import_module(name)
        _globals.GLOBALS.export_onnx_opset_version = opset_version

    helper._set_opset_version = _set_opset_version  # type: ignore[attr-defined]


def patch_torch_six() -> None:
    """``BoundedModule.register_parameter`` checks names against ``torch._six.string_classes``; torch 2.0
    removed ``torch._six``."""
    if "torch._six" in sys.modules or hasattr(torch, "_six"):
        return
    six = types.ModuleType("torch._six", "stand-in for the module torch 2.0 removed (for auto_LiRPA 0.3)")
    six.string_classes = (str, bytes)  # type: ignore[attr-defined]
    sys.modules["torch._six"] = six
    torch._six = six  # type: ignore[attr-defined]


def patch_node_getitem() -> None:
    """``auto_LiRPA.parse_graph.parse_graph`` reads node attributes as ``node[name]``; torch < 2 added
    ``torch._C.Node.__getitem__`` from ``torch.onnx.utils``, torch 2.x no longer does."""
    if hasattr(torch._C.Node, "__getitem__"):
        return

    def _node_getitem(node: Any, key: str) -> Any:
        return getattr(node, node.kindOf(key))(key)  # kindOf says which typed getter ("i", "f", "t", ...)

    torch._C.Node.__getitem__ = _node_getitem  # type: ignore[attr-defined]


def patch_numpy_arraysetops() -> None:
    """``auto_LiRPA.operators.base`` does ``from numpy.lib.arraysetops import isin``; numpy 2 made that
    module private (the function is ``numpy.isin``)."""
    if "numpy.lib.arraysetops" in sys.modules:
        return
    import numpy as np

    if importlib.util.find_spec("numpy.lib.arraysetops") is not None:
        return
    alias = types.ModuleType("numpy.lib.arraysetops", "alias of numpy's set routines (for auto_LiRPA 0.3)")
    alias.isin = np.isin  # type: ignore[attr-defined]
    sys.modules["numpy.lib.arraysetops"] = alias


# --- patches of auto_LiRPA's own classes, after it is imported ---------------------------------------


def patch_named_members(lirpa: types.ModuleType) -> None:
    """torch 2.x ``Module.named_parameters``/``named_buffers`` pass ``remove_duplicate=`` to ``_named_members``,
    which ``BoundedModule`` overrides without it, so ``.parameters()`` (used by alpha-CROWN and by any caller
    that walks a BoundedModule's parameters) raises a TypeError."""
    cls = lirpa.BoundedModule
    original = cls._named_members
    if getattr(original, "_gcert_patched", False):
        return

    def _named_members(self: Any, get_members_fn: Callable[..., Any], prefix: str = "", recurse: bool = True,
                       remove_duplicate: bool = True) -> Any:
        # 0.3 always removes duplicates (it keeps a memo set), which is what remove_duplicate=True asks.
        return original(self, get_members_fn, prefix, recurse)

    _named_members._gcert_patched = True  # type: ignore[attr-defined]
    cls._named_members = _named_members


def patch_slice_contiguous(lirpa: types.ModuleType) -> None:
    """``BoundSlice.forward`` returns a ``torch.narrow`` view; ``get_unstable_locations`` in
    ``backward_bound`` later calls ``.view`` on bounds derived from it, which fails on non-contiguous
    tensors under torch 2.x. The crop that replaces a padded ConvTranspose2d is such a slice.
    (``BoundSlice.interval_propagate`` goes through ``forward``, so it is covered too.)"""
    cls = lirpa.operators.BoundSlice
    forward = cls.forward
    if getattr(forward, "_gcert_patched", False):
        return

    def _forward(self: Any, *args: Any, **kwargs: Any) -> Any:
        return forward(self, *args, **kwargs).contiguous()

    _forward._gcert_patched = True  # type: ignore[attr-defined]
    cls.forward = _forward


def patch_pad(lirpa: types.ModuleType) -> None:
    """``BoundPad.forward`` passes the pad value, an ONNX input since opset 11 and so a 0-d tensor here, on to
    ``F.pad``, which in torch 2.x only takes a Python float. Its ``bound_backward`` also ignores the mode and
    the value (only zero padding is bounded correctly), so anything else is refused rather than bounded
    unsoundly; ``gcert_lirpa.rewrite`` turns constant padding into zero padding plus a shift."""
    cls = lirpa.operators.BoundPad
    forward = cls.forward
    if getattr(forward, "_gcert_patched", False):
        return

    def _forward(self: Any, x: torch.Tensor, pad: Any, value: Any = 0.0) -> torch.Tensor:
        if isinstance(value, torch.Tensor):
            if value.numel() != 1:
                raise NotImplementedError(f"Pad with a value of shape {tuple(value.shape)}")
            value = float(value)
        mode = self.attr.get("mode", "constant")
        mode = mode.decode() if isinstance(mode, bytes) else str(mode)
        if mode != "constant" or (value or 0.0) != 0.0:
            raise NotImplementedError(f"Pad mode {mode!r} value {value}: auto_LiRPA 0.3 bounds only zero padding")
        return forward(self, x, pad, 0.0)

    _forward._gcert_patched = True  # type: ignore[attr-defined]
    cls.forward = _forward


def patch_alpha_dtype(lirpa: types.ModuleType) -> None:
    """The ``init_opt_parameters`` of 0.3's optimisable activations (ReLU, MaxPool, ...) create alpha-CROWN's
    slopes with ``dtype=torch.float``; in a float64 run MaxPool then overwrites their ``.data`` with float64 and
    the saved best slopes no longer match. The slopes are made the default dtype right after they are created
    (any slope in the valid range gives a sound bound, so the cast cannot affect soundness)."""
    base = lirpa.operators.BoundOptimizableActivation
    classes = [base, *_subclasses(base)]
    for cls in classes:
        init = cls.__dict__.get("init_opt_parameters")
        if init is None or getattr(init, "_gcert_patched", False):
            continue

        def _init_opt_parameters(self: Any, *args: Any, _init: Callable[..., Any] = init, **kwargs: Any) -> Any:
            result = _init(self, *args, **kwargs)
            dtype = torch.get_default_dtype()
            for key, alpha in list(getattr(self, "alpha", {}).items()):
                if isinstance(alpha, torch.Tensor) and alpha.dtype != dtype:
                    self.alpha[key] = alpha.detach().to(dtype).requires_grad_(alpha.requires_grad)
            return result

        _init_opt_parameters._gcert_patched = True  # type: ignore[attr-defined]
        cls.init_opt_parameters = _init_opt_parameters


def patch_relaxation_cache(lirpa: types.ModuleType) -> None:
    """Not a compatibility fix but a cost one: every ``BoundTanh``/``BoundSigmoid``/``BoundAtan`` constructor
    re-runs ``precompute_relaxation``, a 200-step bisection over 50,000 points (about a second per layer in
    float64), although the tables depend only on the function, the dtype and the range. They are computed once
    per (function, dtype, range) and shared."""
    cls = lirpa.operators.BoundTanh
    precompute = cls.precompute_relaxation
    if getattr(precompute, "_gcert_patched", False):
        return
    tables: dict[tuple[Any, ...], tuple[torch.Tensor, torch.Tensor]] = {}

    def _precompute_relaxation(self: Any, name: str, func: Any, dfunc: Any, x_limit: float = 500) -> None:
        key = (name, torch.get_default_dtype(), x_limit, str(self.device))
        if key not in tables:
            precompute(self, name, func, dfunc, x_limit)
            tables[key] = (self.d_lower, self.d_upper)
        self.x_limit, self.step_pre = x_limit, 0.01  # the values precompute_relaxation sets
        self.num_points_pre = int(self.x_limit / self.step_pre)
        self.d_lower, self.d_upper = (t.clone() for t in tables[key])

    _precompute_relaxation._gcert_patched = True  # type: ignore[attr-defined]
    cls.precompute_relaxation = _precompute_relaxation


def patch_mul_constant_forward(lirpa: types.ModuleType) -> None:
    """0.3's ``BoundMul.bound_forward`` raises NotImplementedError when one factor is a constant, the easy case:
    the product of a linear bound with a constant ``c`` is that bound scaled, its lower and upper parts swapped
    where ``c < 0``. Needed for forward-mode intermediate bounds (``crown.intermediate``)."""
    cls = lirpa.operators.BoundMul
    forward = cls.bound_forward
    if getattr(forward, "_gcert_patched", False):
        return
    LinearBound = lirpa.operators.base.LinearBound

    def _bound_forward(self: Any, dim_in: int, x: Any, y: Any) -> Any:
        if not self.is_constant_op:
            return forward(self, dim_in, x, y)
        var, const = (x, y) if y.lw is None and y.uw is None else (y, x)
        if const.lw is not None or const.uw is not None:
            raise NotImplementedError  # neither factor is a constant after all
        c = const.lb
        pos, neg = torch.clamp(c, min=0), torch.clamp(c, max=0)

        def scale(w: Any, other: Any, a: torch.Tensor, b: torch.Tensor) -> Any:
            if w is None and other is None:
                return None
            w = 0 if w is None else w
            other = 0 if other is None else other
            a, b = (t.unsqueeze(1) if isinstance(t, torch.Tensor) and t.dim() > 0 else t for t in (a, b))
            return a * w + b * other

        lw = scale(var.lw, var.uw, pos, neg)
        uw = scale(var.uw, var.lw, pos, neg)
        return LinearBound(lw, pos * var.lb + neg * var.ub, uw, pos * var.ub + neg * var.lb)

    _bound_forward._gcert_patched = True  # type: ignore[attr-defined]
    cls.bound_forward = _bound_forward


def _subclasses(cls: type) -> list[type]:
    found = []
    for sub in cls.__subclasses__():
        found += [sub, *_subclasses(sub)]
    return found


PRE_IMPORT: tuple[Callable[[], None], ...] = (
    patch_opset_setter, patch_torch_six, patch_node_getitem, patch_numpy_arraysetops,
)
POST_IMPORT: tuple[Callable[[types.ModuleType], None], ...] = (
    patch_named_members, patch_slice_contiguous, patch_pad, patch_alpha_dtype, patch_relaxation_cache,
    patch_mul_constant_forward,
)


def available() -> bool:
    """Whether auto_LiRPA is installed (without importing it)."""
    if "auto_LiRPA" in sys.modules:  # None there means an import of it is blocked
        return sys.modules["auto_LiRPA"] is not None
    return importlib.util.find_spec("auto_LiRPA") is not None


def load() -> types.ModuleType:
    """``auto_LiRPA``, imported with every patch applied (idempotent); a one-line GcertError if it is missing."""
    if not available():
        raise GcertError(INSTALL_HINT)
    root = logging.getLogger()
    handlers = list(root.handlers)
    try:
        # auto_LiRPA's @torch.jit.script decorators warn about deprecation at import; not the user's concern.
        # record=True swallows them even after auto_LiRPA.utils resets the filters with simplefilter("once"),
        # and leaving the block restores the host's filters.
        with warnings.catch_warnings(record=True):
            warnings.simplefilter("ignore")
            for patch in PRE_IMPORT:
                patch()
            import auto_LiRPA
    except ModuleNotFoundError as exc:
        missing = exc.name or "?"
        if missing.split(".")[0] == "auto_LiRPA":
            raise GcertError(INSTALL_HINT) from None
        raise GcertError(f"auto_LiRPA 0.3 needs the module {missing!r}: pip install {missing.split('.')[0]}"
                         " (see adapters/lirpa/README.md)") from None
    except Exception as exc:  # noqa: BLE001 - any import failure is one line, never a traceback
        raise GcertError(f"auto_LiRPA 0.3 failed to import on torch {torch.__version__}: "
                         f"{one_line(exc)}") from None
    finally:
        # auto_LiRPA.utils calls logging.basicConfig at import, which would reformat the host's root logger.
        added = [h for h in root.handlers if h not in handlers]
        for h in added:
            root.removeHandler(h)
    for patch in POST_IMPORT:
        patch(auto_LiRPA)
    return auto_LiRPA


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype) -> Iterator[None]:
    """auto_LiRPA 0.3 creates working tensors (``torch.zeros``, ``torch.eye``, activation lookup tables) without
    a dtype, so bounding a float64 network only works while the default dtype is float64 too."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)

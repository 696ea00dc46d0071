"""The ONNX importer against ONNX Runtime: hand-built models per op family and the conformance networks.

Tolerance: 1e-5 absolute plus 1e-5 relative. The relative part is float32 rounding on large activations:
on the conformance networks ONNX Runtime itself is up to ~1e-5 away from a float64 evaluation.
"""

from __future__ import annotations

import copy
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from gcert.data import conformance_dir
from gcert.errors import ModelLoadError, UnsupportedOperatorError
from gcert.onnx_import import FUNCTION_VOCABULARY, MODULE_VOCABULARY, SUPPORTED_ONNX_OPS, load_onnx

ort = pytest.importorskip("onnxruntime")

RNG = np.random.default_rng(0)


def _w(*shape: int, scale: float = 0.5) -> np.ndarray:
    return (RNG.standard_normal(shape) * scale).astype(np.float32)


def _model(nodes, in_shape, *, inits=None, opset=13, batch="N", out="y"):
    """A one-input, one-output model; ``inits`` maps initializer names to arrays."""
    graph = helper.make_graph(
        nodes,
        "test",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, *in_shape])],
        [helper.make_tensor_value_info(out, TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in (inits or {}).items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)


def _assert_vocabulary(gm: torch.fx.GraphModule) -> None:
    for node in gm.graph.nodes:
        assert node.op in ("placeholder", "output", "get_attr", "call_module", "call_function"), node.op
        if node.op == "call_module":
            assert type(gm.get_submodule(node.target)) in MODULE_VOCABULARY, node.target
        if node.op == "call_function":
            assert node.target in FUNCTION_VOCABULARY, node.target


def _run_ort(model, x: np.ndarray, per_sample: bool) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    if per_sample:
        return np.concatenate([session.run(None, {name: x[i : i + 1]})[0] for i in range(len(x))])
    return session.run(None, {name: x})[0]


def _check(model, *, source=None, batches=(1, 3), low=-1.0, high=1.0, seed=0):
    """Compare the module imported from ``source`` (default: ``model``) with ONNX Runtime on ``model``."""
    gm = load_onnx(model if source is None else source)
    _assert_vocabulary(gm)
    fixed_batch = model.graph.input[0].type.tensor_type.shape.dim[0].HasField("dim_value")
    rng = np.random.default_rng(seed)
    for batch in batches:
        x = rng.uniform(low, high, (batch, *gm.input_shape)).astype(np.float32)
        ref = _run_ort(model, x, per_sample=fixed_batch)
        with torch.no_grad():
            out = gm(torch.from_numpy(x)).numpy()
        assert out.shape == ref.shape
        assert out.shape[1:] == gm.output_shape
        np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)
    return gm


def _functions(gm: torch.fx.GraphModule) -> list:
    return [n.target for n in gm.graph.nodes if n.op == "call_function"]


def _modules(gm: torch.fx.GraphModule) -> list[type]:
    return [type(gm.get_submodule(n.target)) for n in gm.graph.nodes if n.op == "call_module"]


mk = helper.make_node


# --- linear layers ---------------------------------------------------------------------------------


def test_gemm_trans_b_alpha_beta():
    nodes = [mk("Flatten", ["x"], ["f"], axis=1), mk("Gemm", ["f", "W", "C"], ["y"], transB=1, alpha=0.5, beta=2.0)]
    gm = _check(_model(nodes, [2, 3], inits={"W": _w(4, 6), "C": _w(1, 4)}))
    assert _modules(gm) == [torch.nn.Flatten, torch.nn.Linear]


def test_gemm_no_bias():
    gm = _check(_model([mk("Gemm", ["x", "W"], ["y"])], [5], inits={"W": _w(5, 3)}, opset=11))
    assert _modules(gm) == [torch.nn.Linear]


def test_matmul_add_folds_into_linear():
    nodes = [mk("MatMul", ["x", "W"], ["m"]), mk("Add", ["m", "b"], ["y"])]
    gm = _check(_model(nodes, [4, 6], inits={"W": _w(6, 5), "b": _w(5)}))
    assert _modules(gm) == [torch.nn.Linear] and not _functions(gm)


def test_matmul_shared_output_keeps_separate_add():
    nodes = [mk("MatMul", ["x", "W"], ["m"]), mk("Add", ["b", "m"], ["a"]), mk("Mul", ["a", "m"], ["y"])]
    gm = _check(_model(nodes, [4, 6], inits={"W": _w(6, 5), "b": _w(5)}))
    assert torch.add in _functions(gm)


def test_matmul_constant_left_and_tensor_tensor():
    nodes = [
        mk("MatMul", ["A", "x"], ["l"]),
        mk("Transpose", ["l"], ["t"], perm=[0, 2, 1]),
        mk("MatMul", ["l", "t"], ["y"]),
    ]
    _check(_model(nodes, [4, 5], inits={"A": _w(3, 4)}))


# --- elementwise -----------------------------------------------------------------------------------


def test_binary_ops_both_orders_and_rank_lifting():
    nodes = [
        mk("Sub", ["c4", "x"], ["s"]),
        mk("Div", ["s", "c131"], ["d"]),
        mk("Mul", ["d", "c_scalar"], ["m"]),
        mk("Gather", ["m", "i0"], ["g"], axis=1),  # (N, 4): lower rank than m
        mk("Add", ["m", "g"], ["a"]),
        mk("Add", ["a", "two"], ["p"]),
        mk("Div", ["one", "p"], ["q"]),
        mk("Mul", ["q", "cbig"], ["y"]),  # a constant of higher rank than the tensor
    ]
    inits = {
        "c4": _w(4), "c131": np.array([[[2.0], [-3.0], [4.0]]], np.float32), "c_scalar": np.float32(1.5),
        "i0": np.array(0, np.int64), "two": np.float32(20.0), "one": np.float32(1.0), "cbig": _w(1, 1, 3, 4),
    }
    # With a symbolic batch ONNX would put N on axis 1 after `cbig`; batch 1 is what the importer models.
    gm = _check(_model(nodes, [3, 4], inits=inits, batch=1))
    assert gm.output_shape == (1, 3, 4)


def test_activations():
    nodes = [
        mk("Relu", ["x"], ["r"]), mk("Sub", ["x", "r"], ["n"]), mk("LeakyRelu", ["n"], ["l"], alpha=0.2),
        mk("Sigmoid", ["l"], ["s"]), mk("Tanh", ["x"], ["t"]), mk("Atan", ["t"], ["at"]),
        mk("Add", ["s", "at"], ["y"]),
    ]
    _check(_model(nodes, [7]), low=-3, high=3)


@pytest.mark.parametrize(
    ("opset", "nodes", "inits"),
    [
        (13, [mk("Clip", ["x", "lo", "hi"], ["y"])], {"lo": np.float32(-0.5), "hi": np.float32(0.25)}),
        (13, [mk("Clip", ["x", "lo"], ["y"])], {"lo": np.float32(-0.5)}),
        (13, [mk("Clip", ["x", "", "hi"], ["y"])], {"hi": np.float32(0.3)}),
        (9, [mk("Clip", ["x"], ["y"], min=-0.2, max=0.6)], {}),
        (9, [mk("Clip", ["x"], ["y"], max=0.6)], {}),
    ],
    ids=["min-max", "min", "max", "opset9", "opset9-max"],
)
def test_clip(opset, nodes, inits):
    _check(_model(nodes, [10], inits=inits, opset=opset))


# --- convolutions ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "attrs",
    [
        {"pads": [1, 1, 1, 1], "strides": [2, 2]},
        {"pads": [1, 0, 2, 1], "group": 2, "dilations": [2, 1]},
        {"auto_pad": "SAME_UPPER", "strides": [2, 2]},
        {"auto_pad": "SAME_LOWER"},
    ],
    ids=["symmetric", "asymmetric-group-dilated", "same-upper", "same-lower"],
)
def test_conv2d(attrs):
    group = attrs.get("group", 1)
    nodes = [mk("Conv", ["x", "W", "B"], ["y"], kernel_shape=[3, 2], **attrs)]
    gm = _check(_model(nodes, [4, 7, 6], inits={"W": _w(6, 4 // group, 3, 2), "B": _w(6)}))
    assert torch.nn.Conv2d in _modules(gm)


def test_conv1d_asymmetric_pads():
    nodes = [mk("Conv", ["x", "W"], ["y"], pads=[2, 0], strides=[2])]
    gm = _check(_model(nodes, [3, 9], inits={"W": _w(5, 3, 3)}))
    assert torch.nn.Conv1d in _modules(gm)


@pytest.mark.parametrize(
    "attrs",
    [
        {"strides": [2, 2], "pads": [1, 1, 1, 1], "output_padding": [1, 1]},
        {"strides": [2, 1], "pads": [0, 1, 2, 0], "output_padding": [1, 0]},
        {"strides": [2, 2], "group": 2, "dilations": [1, 2]},
        {"strides": [2, 2], "output_shape": [10, 9]},
    ],
    ids=["stride2-pad1-outpad1", "asymmetric", "group-dilated", "output-shape"],
)
def test_conv_transpose(attrs):
    group = attrs.get("group", 1)
    nodes = [mk("ConvTranspose", ["x", "W", "B"], ["y"], kernel_shape=[3, 3], **attrs)]
    gm = _check(_model(nodes, [4, 5, 4], inits={"W": _w(4, 6 // group, 3, 3), "B": _w(6)}))
    assert torch.nn.ConvTranspose2d in _modules(gm)


def test_batchnorm_2d_and_1d():
    nodes = [
        mk("BatchNormalization", ["x", "s", "b", "m", "v"], ["n"], epsilon=1e-3),
        mk("Flatten", ["n"], ["f"]),
        mk("BatchNormalization", ["f", "s2", "b2", "m2", "v2"], ["y"]),
    ]
    inits = {"s": _w(3), "b": _w(3), "m": _w(3), "v": np.abs(_w(3)) + 0.5,
             "s2": _w(12), "b2": _w(12), "m2": _w(12), "v2": np.abs(_w(12)) + 0.5}
    gm = _check(_model(nodes, [3, 2, 2], inits=inits))
    assert _modules(gm) == [torch.nn.BatchNorm2d, torch.nn.Flatten, torch.nn.BatchNorm1d]


# --- pooling ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("include", [0, 1])
@pytest.mark.parametrize(
    "attrs",
    [
        {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]},
        {"kernel_shape": [2, 3], "pads": [0, 1, 1, 2]},
        {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1], "ceil_mode": 1},
        {"kernel_shape": [2, 2], "auto_pad": "SAME_UPPER", "strides": [2, 2]},
    ],
    ids=["symmetric", "asymmetric", "ceil", "same-upper"],
)
def test_average_pool(attrs, include):
    nodes = [mk("AveragePool", ["x"], ["y"], count_include_pad=include, **attrs)]
    _check(_model(nodes, [2, 7, 6]))


@pytest.mark.parametrize(
    "attrs",
    [
        {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]},
        {"kernel_shape": [2, 3], "pads": [0, 1, 1, 2]},
        {"kernel_shape": [2, 2], "dilations": [2, 2], "strides": [1, 2]},
        {"kernel_shape": [3, 3], "strides": [2, 2], "ceil_mode": 1},
    ],
    ids=["symmetric", "asymmetric", "dilated", "ceil"],
)
def test_max_pool(attrs):
    _check(_model([mk("MaxPool", ["x"], ["y"], **attrs)], [2, 7, 6]))


def test_pool_1d_and_global():
    nodes = [
        mk("AveragePool", ["x"], ["a"], kernel_shape=[3], pads=[1, 1]),
        mk("MaxPool", ["a"], ["m"], kernel_shape=[2], strides=[2]),
        mk("GlobalAveragePool", ["m"], ["g"]),
        mk("Reshape", ["x", "s"], ["x4"]),
        mk("GlobalMaxPool", ["x4"], ["gm"]),
        mk("Flatten", ["g"], ["gf"]),
        mk("Flatten", ["gm"], ["gmf"]),
        mk("Concat", ["gf", "gmf"], ["y"], axis=1),
    ]
    gm = _check(_model(nodes, [3, 8], inits={"s": np.array([0, 3, 2, 4], np.int64)}))
    assert gm.output_shape == (6,)


# --- shapes ----------------------------------------------------------------------------------------


def test_transpose_reshape_flatten():
    nodes = [
        mk("Transpose", ["x"], ["t"], perm=[0, 2, 3, 1]),
        mk("Reshape", ["t", "s1"], ["r1"]),
        mk("Reshape", ["r1", "s2"], ["r2"]),
        mk("Flatten", ["r2"], ["f"], axis=2),
        mk("Reshape", ["f", "s3"], ["y"]),
    ]
    inits = {"s1": np.array([-1, 12], np.int64), "s2": np.array([0, 1, 3, -1], np.int64),
             "s3": np.array([1, -1], np.int64)}
    # Reshape to (1, -1) keeps samples apart only when the ONNX batch is 1, as exporters declare it.
    gm = _check(_model(nodes, [3, 2, 2], inits=inits, batch=1))
    assert gm.output_shape == (12,)


@pytest.mark.parametrize("batch", ["N", 1])
def test_shape_gather_unsqueeze_concat_reshape_chain(batch):
    nodes = [
        mk("Shape", ["x"], ["shape"]),
        mk("Gather", ["shape", "zero"], ["n"], axis=0),
        mk("Unsqueeze", ["n", "axes"], ["n1"]),
        mk("Concat", ["n1", "minus_one"], ["target"], axis=0),
        mk("Cast", ["target"], ["target64"], to=TensorProto.INT64),
        mk("Reshape", ["x", "target64"], ["y"]),
    ]
    inits = {"zero": np.array(0, np.int64), "axes": np.array([0], np.int64),
             "minus_one": np.array([-1], np.int64)}
    gm = _check(_model(nodes, [2, 3, 4], inits=inits, batch=batch))
    assert gm.output_shape == (24,)
    assert _functions(gm) == [torch.reshape]


@pytest.mark.parametrize(
    ("opset", "nodes", "inits"),
    [
        (13, [mk("Pad", ["x", "p", "v"], ["y"])],
         {"p": np.array([0, 0, 1, 2, 0, 1, 0, 3], np.int64), "v": np.float32(0.5)}),
        (9, [mk("Pad", ["x"], ["y"], pads=[0, 1, 0, 2, 0, 0, 1, 1], value=-1.0)], {}),
        (18, [mk("Pad", ["x", "p", "", "axes"], ["y"])],
         {"p": np.array([1, 2, 3, 0], np.int64), "axes": np.array([-1, 1], np.int64)}),
        (13, [mk("Pad", ["x", "p"], ["y"])], {"p": np.array([0, 0, 0, 0, 0, 0, 0, 0], np.int64)}),
    ],
    ids=["opset13-value", "opset9-attrs", "opset18-axes", "zero"],
)
def test_pad(opset, nodes, inits):
    _check(_model(nodes, [2, 3, 4], inits=inits, opset=opset))


def test_pad_rank3_uses_functional_pad():
    nodes = [mk("Pad", ["x", "p"], ["y"])]
    gm = _check(_model(nodes, [3, 4], inits={"p": np.array([0, 1, 2, 0, 0, 1], np.int64)}))
    assert _functions(gm) == [torch.nn.functional.pad]


@pytest.mark.parametrize("opset", [9, 13])
def test_squeeze_unsqueeze(opset):
    if opset >= 13:
        nodes = [mk("Unsqueeze", ["x", "ua"], ["u"]), mk("Squeeze", ["u", "sa"], ["y"])]
        inits = {"ua": np.array([1, -1], np.int64), "sa": np.array([-1], np.int64)}
    else:
        nodes = [mk("Unsqueeze", ["x"], ["u"], axes=[1, 4]), mk("Squeeze", ["u"], ["y"], axes=[4])]
        inits = {}
    gm = _check(_model(nodes, [3, 2], inits=inits, opset=opset))
    assert gm.output_shape == (1, 3, 2)


def test_squeeze_without_axes_keeps_batch():
    gm = load_onnx(_model([mk("Squeeze", ["x"], ["y"])], [1, 5, 1], opset=9))
    assert gm(torch.zeros(4, 1, 5, 1)).shape == (4, 5)


@pytest.mark.parametrize(("opset", "axis"), [(13, -1), (13, 2), (9, 1), (9, 2)])
def test_softmax(opset, axis):
    _check(_model([mk("Softmax", ["x"], ["y"], axis=axis)], [2, 3, 4], opset=opset), low=-3, high=3)


@pytest.mark.parametrize("opset", [9, 13])
def test_slice_and_gather_on_tensor(opset):
    if opset >= 13:
        nodes = [mk("Slice", ["x", "st", "en", "ax", "sp"], ["s"])]
        inits = {"st": np.array([1, 0], np.int64), "en": np.array([100, -1], np.int64),
                 "ax": np.array([-1, 1], np.int64), "sp": np.array([2, 1], np.int64)}
    else:
        nodes = [mk("Slice", ["x"], ["s"], starts=[1, 0], ends=[100, -1], axes=[2, 1])]
        inits = {}
    nodes.append(mk("Gather", ["s", "idx"], ["y"], axis=2))
    inits["idx"] = np.array([[0, -1], [1, 0]], np.int64)
    gm = _check(_model(nodes, [3, 7], inits=inits, opset=opset))
    assert gm.output_shape == (2, 2, 2)


def test_passthrough_ops_and_constant_folding():
    const_w = helper.make_tensor("wc", TensorProto.FLOAT, [4, 3], _w(4, 3).ravel().tolist())  # Wt: (3, 4)
    nodes = [
        mk("Constant", [], ["W"], value=const_w),
        mk("Transpose", ["W"], ["Wt"]),  # folded: both inputs constant
        mk("Identity", ["x"], ["i"]),
        mk("Dropout", ["i", "ratio"], ["d"]),
        mk("Cast", ["d"], ["c"], to=TensorProto.FLOAT),
        mk("Gemm", ["c", "Wt"], ["y"]),
    ]
    gm = _check(_model(nodes, [3], inits={"ratio": np.float32(0.5)}))
    assert _modules(gm) == [torch.nn.Linear]


# --- errors ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("op", ["Einsum", "LSTM"])
def test_unsupported_operator(op):
    node = mk(op, ["x"], ["y"], name="the_node", **({"equation": "bi->bi"} if op == "Einsum" else {}))
    with pytest.raises(UnsupportedOperatorError) as info:
        load_onnx(_model([node], [4]))
    message = str(info.value)
    assert op in message and "the_node" in message and "SUPPORTED_ONNX_OPS" in message
    assert "\n" not in message
    assert op not in SUPPORTED_ONNX_OPS


def test_transpose_of_batch_axis_is_rejected():
    with pytest.raises(UnsupportedOperatorError, match="Transpose"):
        load_onnx(_model([mk("Transpose", ["x"], ["y"], perm=[1, 0])], [4]))


def test_garbage_and_missing_files(tmp_path):
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x00\xffthis is not an onnx model\x13\x37" * 10)
    with pytest.raises(ModelLoadError, match="cannot read ONNX model"):
        load_onnx(garbage)
    with pytest.raises(ModelLoadError, match="cannot read ONNX model"):
        load_onnx(tmp_path / "missing.onnx")


def test_two_inputs_or_outputs_are_rejected():
    model = _model([mk("Relu", ["x"], ["y"])], [3])
    model.graph.input.append(helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 3]))
    with pytest.raises(ModelLoadError, match="2 graph inputs"):
        load_onnx(model)
    model = _model([mk("Relu", ["x"], ["y"]), mk("Sigmoid", ["x"], ["y2"])], [3])
    model.graph.output.append(helper.make_tensor_value_info("y2", TensorProto.FLOAT, None))
    with pytest.raises(ModelLoadError, match="2 outputs"):
        load_onnx(model)


# --- the returned module ---------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit.trace is deprecated but still asked for
def test_module_round_trips_and_traces(tmp_path):
    nodes = [
        mk("Conv", ["x", "W"], ["c"], pads=[0, 1, 1, 0]),
        mk("MaxPool", ["c"], ["m"], kernel_shape=[2, 2], pads=[1, 0, 0, 1]),
        mk("Slice", ["m", "st", "en", "ax"], ["s"]),
        mk("Pad", ["s", "p"], ["pd"]),
        mk("Flatten", ["pd"], ["f"]),
        mk("Add", ["f", "b"], ["y"]),
    ]
    inits = {"W": _w(2, 1, 2, 2), "st": np.array([1], np.int64), "en": np.array([4], np.int64),
             "ax": np.array([2], np.int64), "p": np.array([0, 0, 0, 1, 0, 0, 1, 0], np.int64), "b": _w(1)}
    path = tmp_path / "net.onnx"
    path.write_bytes(_model(nodes, [1, 5, 5], inits=inits).SerializeToString())
    gm = load_onnx(path)
    assert gm.source == str(path) and gm.input_shape == (1, 5, 5) and not gm.training
    x = torch.rand(2, 1, 5, 5)
    expected = gm(x)
    for other in (copy.deepcopy(gm), pickle.loads(pickle.dumps(gm))):
        assert (other.input_shape, other.output_shape, other.source) == (gm.input_shape, gm.output_shape, gm.source)
        torch.testing.assert_close(other(x), expected, rtol=0, atol=0)
        _assert_vocabulary(other)
    torch.testing.assert_close(torch.fx.symbolic_trace(gm)(x), expected, rtol=0, atol=0)
    traced = torch.jit.trace(gm, x)
    torch.testing.assert_close(traced(torch.rand(5, 1, 5, 5)).shape, torch.Size([5, *gm.output_shape]))
    assert all(p.dtype == torch.float32 for p in [*gm.parameters(), *gm.buffers()])


# --- the conformance networks ----------------------------------------------------------------------


def _conformance_models() -> list[Path]:
    root = conformance_dir()
    return sorted(root.rglob("*.onnx")) if root.is_dir() else []


@pytest.mark.conformance
@pytest.mark.parametrize(
    "path", _conformance_models() or [None], ids=lambda p: p.stem if p else "absent"
)
def test_conformance_network_matches_onnxruntime(path):
    if path is None:
        pytest.skip(f"no conformance networks under {conformance_dir()} (set GCERT_CONFORMANCE)")
    import onnx

    model = onnx.load(str(path))
    gm = _check(model, source=path, batches=(4,), low=0.0, high=1.0)
    assert gm.source == str(path)

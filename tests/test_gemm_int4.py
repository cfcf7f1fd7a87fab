"""GPT-2's Conv1D layers (exported as Gemm) go to 4 bits under int4: gemm_as_matmul rewrites a Gemm with a constant
weight as MatMul + Add, which the n-bit quantizer takes (issue 19, item 7)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from packager.recipes.nbits import gemm_as_matmul


def _gemm_model(**attrs: float | int) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    weight, bias = rng.standard_normal((64, 32)).astype(np.float32), rng.standard_normal(32).astype(np.float32)
    node = helper.make_node("Gemm", ["x", "w", "b"], ["y"], name="/h.0/mlp/c_fc/Gemm", **attrs)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 32])],
                              [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(bias, "b")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, {"x": x})[0])


def test_a_gemm_with_a_constant_weight_becomes_matmul_and_add_with_the_same_outputs() -> None:
    model = _gemm_model()
    x = np.random.default_rng(1).standard_normal((5, 64)).astype(np.float32)
    before = _run(model, x)
    assert gemm_as_matmul(model.graph) == 1
    assert [(n.op_type, n.name) for n in model.graph.node] == [("MatMul", "/h.0/mlp/c_fc/MatMul"),
                                                               ("Add", "/h.0/mlp/c_fc/Add")]
    np.testing.assert_allclose(_run(model, x), before, rtol=1e-5, atol=1e-5)


def test_a_gemm_it_cannot_rewrite_without_reading_the_weight_is_left() -> None:
    for attrs in ({"transB": 1}, {"alpha": 0.5}, {"beta": 2.0}):
        model = _gemm_model(**attrs)
        assert gemm_as_matmul(model.graph) == 0 and [n.op_type for n in model.graph.node] == ["Gemm"]


def test_int4_quantizes_the_rewritten_weight() -> None:
    from packager.profiles import builtin_profiles
    from packager.recipes.nbits import quantize_nbits

    model = _gemm_model()
    gemm_as_matmul(model.graph)
    quantized = quantize_nbits(model, builtin_profiles()["rpi5"].int4, 4, tied=False)
    assert [n.op_type for n in quantized.graph.node] == ["MatMulNBits", "Add"]


def test_a_mapped_table_moved_out_leaves_no_stale_data_file(tmp_path: Path) -> None:
    """A recipe keeps its source's external data (model.onnx.data); once place_tables has moved the mapped table
    into its own file and the rest fits inline, that data file holds nothing the model reads: it goes, rather than
    ship in the bundle (an E-class bundle of E2B's widths, 4 layers, carried 610 MB of it)."""
    from packager.recipes.common import place_tables

    rng = np.random.default_rng(0)
    table = numpy_helper.from_array(rng.integers(-127, 127, (256, 64), dtype=np.int8), "ple_rows")
    node = helper.make_node("Gather", ["ple_rows", "ids"], ["y"])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("ids", TensorProto.INT64, [1, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.INT8, None)], [table])
    path = tmp_path / "model.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path,
              save_as_external_data=True, location="model.onnx.data", size_threshold=0)
    assert (tmp_path / "model.onnx.data").is_file()
    place_tables(path, {"ple_rows": "model.ple.data"})
    assert not (tmp_path / "model.onnx.data").exists() and (tmp_path / "model.ple.data").is_file()
    out = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"ids": np.array([[1, 2, 3]])})
    np.testing.assert_array_equal(out[0][0], numpy_helper.to_array(table)[[1, 2, 3]])


def head_model(rows: int, hidden: int, last_only: bool, bias: bool = False) -> onnx.ModelProto:
    """x [1, s, hidden] -> logits [1, 1 or s, rows] through one 4-bit MatMulNBits (block 32, zero points given)."""
    rng = np.random.default_rng(0)
    blocks = hidden // 32
    inits = [numpy_helper.from_array(rng.integers(0, 256, (rows, blocks, 16), dtype=np.uint8), "w_Q4"),
             numpy_helper.from_array(rng.random(rows * blocks, dtype=np.float32) * 0.1, "w_scales"),
             numpy_helper.from_array(rng.integers(0, 256, rows * blocks // 2, dtype=np.uint8), "w_zp")]
    names = ["x", "w_Q4", "w_scales", "w_zp"]
    if bias:
        inits += [numpy_helper.from_array(np.zeros(rows, np.float32), "w_g"),
                  numpy_helper.from_array(rng.random(rows, dtype=np.float32), "w_bias")]
        names += ["w_g", "w_bias"]
    node = helper.make_node("MatMulNBits", names, ["logits"], name="lm_head", domain="com.microsoft",
                            K=hidden, N=rows, bits=4, block_size=32)
    graph = helper.make_graph([node], "head", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, hidden])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT,
                                                             [1, 1 if last_only else "s", rows])], inits)
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    return helper.make_model(graph, opset_imports=opsets)


def run_head(model: onnx.ModelProto, hidden: int) -> np.ndarray:
    x = np.random.default_rng(1).standard_normal((1, 1, hidden), dtype=np.float32)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, {"x": x})[0])


def test_a_wide_last_position_head_is_sliced_with_the_same_logits(monkeypatch: pytest.MonkeyPatch) -> None:
    """recipes/nbits.slice_wide_heads: a MatMulNBits over SLICE_BYTES becomes slices of its rows concatenated (the
    load holds one slice's original beside its copy, not the head's); the same logits, within the rounding of a
    summation order that differs at a slice's edge."""
    from packager.recipes import nbits

    monkeypatch.setattr(nbits, "SLICE_BYTES", 40 * 1024)   # the head below: 125 KiB of 4-bit data, 4 slices
    model = head_model(1000, 256, last_only=True)
    expected = run_head(model, 256)
    assert nbits.slice_wide_heads(model) == {"lm_head": 4}
    ops = [n.op_type for n in model.graph.node]
    assert ops == ["MatMulNBits"] * 4 + ["Concat"]
    assert max(len(i.raw_data) for i in model.graph.initializer) <= 40 * 1024
    assert {i.name for i in model.graph.initializer}.isdisjoint({"w_Q4", "w_scales", "w_zp"})
    np.testing.assert_allclose(run_head(model, 256), expected, rtol=1e-5, atol=1e-5)
    # all positions' logits: slicing would hold them twice while concatenated; a g_idx/bias head is left whole
    for left in (head_model(1000, 256, last_only=False), head_model(1000, 256, last_only=True, bias=True)):
        assert nbits.slice_wide_heads(left) == {} and len(left.graph.node) == 1

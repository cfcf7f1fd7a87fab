"""GPT-2's Conv1D layers (exported as Gemm) go to 4 bits under int4: gemm_as_matmul rewrites a Gemm with a constant
weight as MatMul + Add, which the n-bit quantizer takes (issue 19, item 7)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
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

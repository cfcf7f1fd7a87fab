"""What a recipe quantized (packager/coverage.py) and how the summary, manifest and reports name it; opset imports
no operator uses dropped after quantizing, and the compatibility check judging the operators a model uses
(issue 21, items 3 and 4)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import run_cli, unpack
from packager.compat import check, facts_of
from packager.coverage import coverage_of
from packager.labels import quantized_nothing, recipe_label
from packager.profiles import builtin_profiles
from packager.recipes.common import drop_unused_opsets


def _model(nodes: list[onnx.NodeProto], inits: list[onnx.TensorProto], opsets: dict[str, int]) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    graph = helper.make_graph(nodes, "g", [x], [y], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets.items()],
                             ir_version=8)


def _float_matmul(**opsets: int) -> onnx.ModelProto:
    w = numpy_helper.from_array(np.ones((4, 4), np.float32), "w")
    return _model([helper.make_node("MatMul", ["x", "w"], ["y"])], [w], {"": 17, **opsets})


def _int8_matmul() -> onnx.ModelProto:
    """A weight stored as int8 behind DequantizeLinear (what the quantizers write), a float bias beside it."""
    q = numpy_helper.from_array(np.ones((4, 4), np.int8), "wq")
    scale = numpy_helper.from_array(np.array(0.1, np.float32), "scale")
    bias = numpy_helper.from_array(np.ones(4, np.float32), "bias")
    nodes = [helper.make_node("DequantizeLinear", ["wq", "scale"], ["w"]),
             helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Add", ["h", "bias"], ["y"])]
    return _model(nodes, [q, scale, bias], {"": 17})


def test_coverage_counts_weight_bytes_at_each_precision() -> None:
    cov = coverage_of(_int8_matmul())
    # 16 int8 bytes and their 4-byte scale; the bias stays fp32
    assert cov["bytes"] == {"int8": 20, "fp32": 16}
    assert cov["share"]["int8"] == pytest.approx(20 / 36, abs=1e-4) and cov["float_in"] == {}
    assert recipe_label("int8-dynamic", cov).startswith("int8-dynamic (int8 56%, fp32 44% of weight bytes")


def test_a_recipe_that_quantized_nothing_is_named_for_what_ships() -> None:
    cov = coverage_of(_float_matmul())
    assert cov["bytes"] == {"fp32": 64} and cov["float_in"] == {"MatMul": 64}
    assert quantized_nothing("int8-dynamic", cov) and not quantized_nothing("fp32", cov)
    assert recipe_label("int8-dynamic", cov) == "fp32 (int8-dynamic found nothing to quantize)"
    assert recipe_label("fp32", cov) == "fp32"


def test_float_weights_left_in_gemm_are_named() -> None:
    nbits = numpy_helper.from_array(np.ones((4, 1, 2), np.uint8), "b4")
    scales = numpy_helper.from_array(np.ones(4, np.float32), "s4")
    w = numpy_helper.from_array(np.ones((4, 4), np.float32), "w")
    nodes = [helper.make_node("MatMulNBits", ["x", "b4", "s4"], ["h"], domain="com.microsoft", K=4, N=4, bits=4,
                              block_size=16),
             helper.make_node("Gemm", ["h", "w"], ["y"])]
    cov = coverage_of(_model(nodes, [nbits, scales, w], {"": 17, "com.microsoft": 1}))
    assert cov["bytes"] == {"fp32": 64, "int4": 24} and cov["float_in"] == {"Gemm": 64}
    assert recipe_label("int4", cov).endswith("; Gemm weights left float)")


def test_unused_opset_imports_are_dropped_and_used_ones_kept(tmp_path: Path) -> None:
    path = tmp_path / "m.onnx"
    onnx.save(_float_matmul(**{"ai.onnx.ml": 5, "ai.onnx.training": 1, "com.microsoft": 1}), path)
    assert drop_unused_opsets(path) == ["ai.onnx.ml", "ai.onnx.training", "com.microsoft"]
    assert {i.domain for i in onnx.load(path).opset_import} == {""}
    # a model that truly uses an ai.onnx.ml operator keeps that import
    model = _float_matmul(**{"ai.onnx.ml": 3})
    model.graph.node.append(helper.make_node("Binarizer", ["y"], ["z"], domain="ai.onnx.ml"))
    onnx.save(model, path)
    assert drop_unused_opsets(path) == []
    assert {i.domain: i.version for i in onnx.load(path).opset_import} == {"": 17, "ai.onnx.ml": 3}


def test_compat_judges_the_domains_a_model_uses() -> None:
    jetson = builtin_profiles()["jetson-orin-nano"]
    unused = check(facts_of(_float_matmul(**{"ai.onnx.ml": 99, "com.microsoft": 9}), "m.onnx"), jetson)
    assert unused.ok, unused.message()
    used = _float_matmul(**{"ai.onnx.ml": 99})
    used.graph.node.append(helper.make_node("Binarizer", ["y"], ["z"], domain="ai.onnx.ml"))
    result = check(facts_of(used, "m.onnx"), jetson)
    assert not result.ok and "ai.onnx.ml opset 99" in result.message()


@pytest.mark.integration
def test_silero_int8_dynamic_says_it_ships_fp32(tmp_path: Path) -> None:
    from packager.report import write_reports

    proc = run_cli("package", "sample:silero-vad", "--target", "rpi5", "--recipe", "int8-dynamic", "--out",
                   str(tmp_path / "dist"))
    assert proc.returncode == 0, proc.stderr
    assert "(fp32 (int8-dynamic found nothing to quantize))" in proc.stderr
    bundle = unpack(Path(proc.stdout.split()[-1]), tmp_path / "x")
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert set(manifest["recipe"]["coverage"]["bytes"]) == {"fp32"}
    # the bundle's own README says what ships too, not the recipe asked for
    assert "recipe `fp32 (int8-dynamic found nothing to quantize)`" in (bundle / "README.md").read_text()
    summary = {"target": "rpi5", "bundle": "silero-vad", "recipe": "int8-dynamic",
               "coverage": manifest["recipe"]["coverage"]}
    report = (write_reports([summary], tmp_path / "report")[0].parent / "report.md").read_text(encoding="utf-8")
    assert "fp32 (int8-dynamic found nothing to quantize)" in report


@pytest.mark.integration
def test_minilm_int8_packages_for_jetson_and_shows_its_int8_share(tmp_path: Path) -> None:
    proc = run_cli("package", "sample:minilm", "--target", "jetson-orin-nano", "--recipe", "int8-dynamic", "--out",
                   str(tmp_path / "dist"))
    assert proc.returncode == 0, proc.stderr
    assert "int8-dynamic (int8 " in proc.stderr
    manifest = json.loads((unpack(Path(proc.stdout.split()[-1]), tmp_path / "x") / "manifest.json").read_text())
    assert manifest["recipe"]["coverage"]["share"]["int8"] > 0.9
    assert "ai.onnx.ml" not in manifest["compatibility"]["opsets"]
    assert "ai.onnx.ml" in manifest["recipe"]["extra"]["dropped_opset_imports"]


@pytest.mark.integration
def test_fit_auto_skips_a_recipe_that_quantizes_nothing(tmp_path: Path) -> None:
    from packager.errors import ExitCode

    # fp32 does not fit 66 MiB; int8-dynamic finds nothing to quantize in silero-vad: it is not a smaller candidate
    proc = run_cli("package", "sample:silero-vad", "--target", "rpi5", "--fit", "auto", "--budget", "66MiB",
                   "--out", str(tmp_path / "dist"))
    assert proc.returncode == ExitCode.DOES_NOT_FIT, proc.stderr
    assert "fit auto: int8-dynamic skipped: found nothing to quantize" in proc.stderr
    assert "int8-dynamic: skipped" in proc.stderr

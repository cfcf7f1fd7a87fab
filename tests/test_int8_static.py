"""The int8 static (QDQ) recipe and its calibration inputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import unpack
from packager.config import resolve_package_settings
from packager.errors import ExitCode, PackagerError
from packager.options import PackageOptions
from packager.pipeline import package
from packager.recipes.common import count_ops


def _conv_model(path: Path, opset: int = 17) -> Path:
    """x[1,3,16,16] -> Conv -> Relu -> Flatten -> Gemm -> y[1,10]: weights a static recipe quantizes."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32) * 0.3, "w"),
             numpy_helper.from_array(rng.standard_normal((10, 8 * 14 * 14)).astype(np.float32) * 0.05, "fc")]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"]), helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("Flatten", ["r"], ["f"]), helper.make_node("Gemm", ["f", "fc"], ["y"], transB=1)]
    graph = helper.make_graph(nodes, "convnet", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]), path)
    return path


def _package(model: Path, out: Path, calibration: Path | None = None):
    settings = resolve_package_settings({"target": "rpi5", "out": str(out), "recipe": "int8-static", "budget": None})
    return package(str(model), settings, PackageOptions(calibration=calibration))


@pytest.mark.integration
def test_int8_static_quantizes_with_given_calibration(tmp_path: Path) -> None:
    model = _conv_model(tmp_path / "convnet.onnx")
    rng = np.random.default_rng(7)
    calibration = tmp_path / "calibration.npz"
    np.savez(calibration, **{f"{i}/x": rng.standard_normal((1, 3, 16, 16)).astype(np.float32) for i in range(8)})
    ctx = _package(model, tmp_path / "dist", calibration)
    assert ctx.recipe is not None and ctx.recipe.name == "int8-static"
    assert ctx.recipe.params["calibration"].endswith("(8 input sets)") and ctx.recipe.params["nodes"] == 2
    assert ctx.accuracy.more["min_cosine"] >= 0.98
    bundle = unpack(ctx.archive, tmp_path / "unpacked")
    assert count_ops(onnx.load(bundle / "model" / "model.onnx"), {"QuantizeLinear", "DequantizeLinear"}) >= 4


def test_calibration_file_of_the_wrong_kind_is_refused(tmp_path: Path) -> None:
    model = _conv_model(tmp_path / "convnet.onnx")
    text = tmp_path / "lines.txt"
    text.write_text("a sentence\n", encoding="utf-8")
    with pytest.raises(PackagerError, match=r"must be an \.npz of input tensors for this model \(it takes x") as e:
        _package(model, tmp_path / "dist", text)
    assert e.value.code == ExitCode.BAD_INPUT
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, y=np.zeros((1, 3, 16, 16), np.float32))
    with pytest.raises(PackagerError, match="must hold one array per model input") as e:
        _package(model, tmp_path / "dist", wrong)
    assert not (tmp_path / "dist").exists() or not list((tmp_path / "dist").iterdir())


def test_calibration_with_another_recipe_fails_before_any_work(tmp_path: Path) -> None:
    text = tmp_path / "lines.txt"
    text.write_text("a sentence\n", encoding="utf-8")
    settings = resolve_package_settings({"target": "rpi5", "out": str(tmp_path / "dist"), "recipe": "fp32",
                                         "budget": None})
    with pytest.raises(PackagerError, match="does not use it") as e:
        package("sample:minilm", settings, PackageOptions(calibration=text))
    assert e.value.code == ExitCode.USAGE
    with pytest.raises(PackagerError, match="does not exist") as e:
        package("sample:minilm", settings, PackageOptions(calibration=tmp_path / "missing.txt"))
    assert e.value.code == ExitCode.BAD_INPUT


@pytest.mark.integration
def test_int8_static_raises_an_old_opset_for_per_channel_scales(tmp_path: Path) -> None:
    """paddle2onnx writes opset 11 and 12, where DequantizeLinear has no axis: the per-channel QDQ model did not
    load ("Unrecognized attribute: axis"). The recipe raises the opset to 13 with onnx's version converter first
    and says so in its params; the built-in calibration (pictures, for this image input) keeps the answers."""
    ctx = _package(_conv_model(tmp_path / "opset11.onnx", opset=11), tmp_path / "dist")
    assert ctx.recipe is not None and ctx.recipe.params["opset_raised"]["from"] == 11
    assert ctx.recipe.params["opset_raised"]["to"] == 13
    assert ctx.accuracy.more["min_cosine"] >= 0.98
    model = onnx.load(unpack(ctx.archive, tmp_path / "unpacked") / "model" / "model.onnx")
    assert next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 13
    axes = [a for n in model.graph.node if n.op_type == "DequantizeLinear" for a in n.attribute if a.name == "axis"]
    assert axes   # per channel: the weights' scales are per output channel


@pytest.mark.integration
def test_built_in_calibration_runs_at_the_sizes_the_samples_pick(tmp_path: Path) -> None:
    """An image model that runs at no 224x224 (PP-OCRv4 rec: its Concat refuses it) but at packager's next guess:
    the samples stage moves on to that guess, and the built-in calibration inputs must too (before, they stayed
    at the first guess and int8-static failed with exit 10 while calibrating)."""
    from packager.open_shapes import DETECTOR_SIDE

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(np.zeros((1, 3, DETECTOR_SIDE, 1), np.float32), "bias"),
             numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32) * 0.3, "w")]
    nodes = [helper.make_node("Add", ["x", "bias"], ["b"]), helper.make_node("Conv", ["b", "w"], ["y"])]
    graph = helper.make_graph(nodes, "sized", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, "h", "w"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, "h2", "w2"])], inits)
    path = tmp_path / "sized.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    ctx = _package(path, tmp_path / "dist")
    assert ctx.recipe is not None and ctx.recipe.name == "int8-static" and ctx.recipe.quantized_nodes > 0
    assert ctx.sample_inputs[0]["x"].shape == (1, 3, DETECTOR_SIDE, DETECTOR_SIDE)

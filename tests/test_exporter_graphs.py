"""Graphs from other exporters quantize (issue 21): weights behind a Constant, Identity or Cast node are folded
into stored weights first; a recipe that still cannot apply is a bad input for `package` (exit 5, one sentence)
and, for `check`, gives way to fp32's figures with a note saying which recipe and why."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest

from conftest import run_cli
from exporter_traits import conv_behind
from packager.errors import ExitCode, PackagerError
from packager.recipes import RECIPES
from packager.recipes.common import RecipeOptions
from packager.recipes.prepare import hidden_weights

QUANTIZED_CONV = {"ConvInteger", "QLinearConv", "DequantizeLinear"}


@pytest.mark.parametrize("via", ["Identity", "Cast", "Constant"])
def test_weights_behind_nodes_are_found_and_quantized(tmp_path: Path, via: str) -> None:
    src = conv_behind(tmp_path / "m.onnx", via)
    assert hidden_weights(onnx.load(src)) == ["conv2d_0.w_0", "conv2d_1.w_0", "conv2d_2.w_0"]
    result = RECIPES["int8-dynamic"](src, tmp_path / "q.onnx", RecipeOptions())
    ops = {n.op_type for n in onnx.load(tmp_path / "q.onnx").graph.node}
    assert result.quantized_nodes > 0 and "ConvInteger" in ops
    assert result.params["prepared"]["applied"] and result.params["prepared"]["weights_computed_in_graph"] == 3


def test_int8_static_quantizes_them_too(tmp_path: Path) -> None:
    import numpy as np

    src = conv_behind(tmp_path / "m.onnx", "Constant")
    feeds = [{"x": np.random.default_rng(i).standard_normal((1, 3, 32, 32)).astype(np.float32)} for i in range(2)]
    result = RECIPES["int8-static"](src, tmp_path / "q.onnx", RecipeOptions(calibration=feeds))
    assert result.params["nodes"] == 3 and result.quantized_nodes > 0


def test_a_graph_with_stored_weights_is_not_rewritten(tmp_path: Path) -> None:
    src = conv_behind(tmp_path / "m.onnx", "Identity")
    model = onnx.load(src)
    # The same network with its weights stored: nothing to fold, and no "prepared" in the recipe's params.
    for node in [n for n in model.graph.node if n.op_type == "Identity"]:
        for conv in model.graph.node:
            conv.input[:] = [node.input[0] if i == node.output[0] else i for i in conv.input]
        model.graph.node.remove(node)
    onnx.save(model, tmp_path / "stored.onnx")
    assert hidden_weights(model) == []
    result = RECIPES["int8-dynamic"](tmp_path / "stored.onnx", tmp_path / "q.onnx", RecipeOptions())
    assert "prepared" not in result.params and result.quantized_nodes > 0


@pytest.fixture
def folding_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    """A graph the pre-processing cannot fold (as one over 2 GiB): the quantizer meets the weights as they are."""
    monkeypatch.setattr("packager.recipes.dense.prepare", lambda src, tmp, external: (src, {}))


def test_a_recipe_that_cannot_apply_is_a_bad_input(tmp_path: Path, folding_fails: None) -> None:
    src = conv_behind(tmp_path / "m.onnx", "Identity")
    with pytest.raises(PackagerError) as caught:
        RECIPES["int8-dynamic"](src, tmp_path / "q.onnx", RecipeOptions())
    assert caught.value.code == ExitCode.BAD_INPUT
    assert "conv2d_0.w_0" in caught.value.message and "--recipe fp32" in caught.value.message
    assert "to be an initializer" in caught.value.message


def test_check_reports_fp32_where_the_recipe_cannot_apply(tmp_path: Path, folding_fails: None) -> None:
    from packager import api

    src = conv_behind(tmp_path / "m.onnx", "Identity")
    result = api.check(str(src), "rpi5", measure=False, cache=False)
    assert result.fits and result.recipe == "fp32"
    [note] = [n for n in result.estimate["notes"] if "cannot apply" in n]
    assert note.startswith("recipe int8-dynamic cannot apply, so these are fp32's figures") and "conv2d_0.w_0" in note
    with pytest.raises(PackagerError) as caught:
        api.package(str(src), "rpi5", out=tmp_path / "dist", cache=False)
    assert caught.value.code == ExitCode.BAD_INPUT and not (tmp_path / "dist").exists()


@pytest.mark.integration
def test_a_paddle_style_model_packages_at_int8(tmp_path: Path) -> None:
    src = conv_behind(tmp_path / "det.onnx", "Constant")
    proc = run_cli("package", str(src), "--target", "rpi5", "--out", str(tmp_path / "dist"), "--json")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["recipe"] == "int8-dynamic" and summary["coverage"]["share"]["int8"] > 0.9   # fp32: the biases


def _norm_graph(path: Path, op: str) -> Path:
    """x -> `op` (in the ONNX domain, as onnxruntime's optimizer and genai's builder write RMSNorm) -> y."""
    scale = onnx.numpy_helper.from_array(__import__("numpy").ones(8, dtype="float32"), "scale")
    node = onnx.helper.make_node(op, ["x", "scale"], ["y"], epsilon=1e-6)
    graph = onnx.helper.make_graph([node], "g", [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT,
                                                                                    [1, 8])],
                                   [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 8])],
                                   [scale])
    onnx.save(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)]), path)
    return path


def test_an_onnx_domain_operator_of_the_runtime_passes_the_checker_and_an_unknown_one_does_not(
        tmp_path: Path) -> None:
    from packager.stages.export import _check_onnx

    with pytest.raises(onnx.checker.ValidationError):   # what onnx's own checker says of it
        onnx.checker.check_model(str(_norm_graph(tmp_path / "rms.onnx", "SimplifiedLayerNormalization")))
    _check_onnx(tmp_path / "rms.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rms.onnx"]   # its probe copy is gone
    with pytest.raises(onnx.checker.ValidationError):
        _check_onnx(_norm_graph(tmp_path / "made-up.onnx", "MadeUpNormalization"))
